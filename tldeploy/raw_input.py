"""Graphs that take raw pixels: the contract's centre crop and normalisation moved inside.

Serving stacks preprocess frames themselves, and some cannot say what an image contract says:
DeepStream's nvinfer computes `net-scale-factor * (x - offsets)` with one scale for all channels
(ImageNet's per-channel std does not fit) and scales the whole frame to the network's size (no
crop). Rather than approximate, `raw_input_model` gives the graph a new input: RGB values in
[0, 255] of the whole image scaled to resize_size x resize_size; a Slice crops the centre
input_size x input_size (the contract's crop offsets) and a Mul and an Add normalise, feeding the
original graph unchanged. The serving config then says `net-scale-factor=1`, `offsets=0;0;0`.

For square images the whole-frame scale is the contract's shorter-side resize, so the raw path
equals the contract's up to the scaler's interpolation; other aspect ratios are stretched where
the contract would crop (the bundle's configs and README say so).
"""

from __future__ import annotations

import numpy as np

from tldeploy.errors import ConfigError
from tldeploy.modalities.preprocessing import Preprocessing


def centre_offset(outer: int, inner: int) -> int:
    """torchvision's CenterCrop offset: round((outer - inner) / 2)."""
    return int(round((outer - inner) / 2.0))


class RawInputFromOnnx:
    """A lazy build step: the raw-pixel variant of an export's graph (`raw_input_model`) from an
    `OnnxFile` (its graph read once) or a ModelProto; the caller writes its contract (`prep.as_raw()`)."""

    def __init__(self, source, prep: Preprocessing) -> None:
        self.source, self.prep = source, prep

    def __call__(self):
        return raw_input_model(getattr(self.source, "proto", self.source), self.prep)


def raw_input_model(model, prep: Preprocessing):
    """A copy of `model` (an onnx.ModelProto whose input is the normalised image) taking raw
    pixels instead; see the module docstring. The contract metadata is the caller's to rewrite
    (`prep.as_raw()`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if getattr(prep, "modality", "image") != "image":
        raise ConfigError("--input-format raw is for image models; an audio model's input is the waveform already")
    if prep.raw:
        raise ConfigError("the model takes raw pixels already")
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise ConfigError(f"a raw-input variant needs a graph with one image input, this one has {len(inputs)}")
    old = inputs[0]
    dims = old.type.tensor_type.shape.dim
    if len(dims) != 4 or [d.dim_value for d in dims[1:]] != [3, prep.input_size, prep.input_size]:
        raise ConfigError(f"the graph's input {old.name} is not N x 3 x {prep.input_size} x {prep.input_size}; is this the model the contract describes?")

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    name = "raw_input"  # prefix of the new tensors; the graph input keeps its name (runners and configs use it)
    del g.input[:]
    new = helper.make_tensor_value_info(old.name, TensorProto.FLOAT, [None, 3, prep.resize_size, prep.resize_size])
    new.type.tensor_type.shape.dim[0].CopyFrom(dims[0])  # the same batch dimension (dynamic or fixed)
    g.input.extend([new] + [i for i in model.graph.input if i.name != old.name])

    side, crop = prep.resize_size, prep.input_size
    top = centre_offset(side, crop)
    std = np.asarray(prep.std, dtype=np.float64)
    mean = np.asarray(prep.mean, dtype=np.float64)
    consts = {
        f"{name}_starts": np.array([top, top], dtype=np.int64),
        f"{name}_ends": np.array([top + crop, top + crop], dtype=np.int64),
        f"{name}_axes": np.array([2, 3], dtype=np.int64),
        f"{name}_scale": (1.0 / (255.0 * std)).astype(np.float32).reshape(1, 3, 1, 1),
        f"{name}_shift": (-mean / std).astype(np.float32).reshape(1, 3, 1, 1),
    }
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    src = old.name
    for n in g.node:  # the original graph now reads the normalised crop
        for i, t in enumerate(n.input):
            if t == src:
                n.input[i] = f"{name}_normalised"
    nodes = []
    nodes.append(helper.make_node("Slice", [src, f"{name}_starts", f"{name}_ends", f"{name}_axes"], [f"{name}_crop"],
                                  name=f"{name}/crop"))
    nodes.append(helper.make_node("Mul", [f"{name}_crop", f"{name}_scale"], [f"{name}_scaled"], name=f"{name}/scale"))
    nodes.append(helper.make_node("Add", [f"{name}_scaled", f"{name}_shift"], [f"{name}_normalised"], name=f"{name}/normalise"))
    existing = list(g.node)
    del g.node[:]
    g.node.extend(nodes + existing)
    onnx.checker.check_model(out)
    return out
