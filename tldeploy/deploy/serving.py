"""Serving configs written from the contract, never retyped: DeepStream's nvinfer and Triton.

nvinfer computes `y = net-scale-factor * (x - offsets)` on the frame (or object) scaled to
`infer-dims`, with one scale for all channels and no crop. A contract with one std for all
channels and no crop (resize size = input size) is written there as it is; any other contract is
served through the raw-input graph (`raw_input.py`), which crops and normalises inside, so the
config says `net-scale-factor=1`, `offsets=0;0;0` and nothing is approximated. What the scaler
itself cannot do (keep the contract's interpolation, or resize the shorter side of a non-square
frame) is said in the config's comments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tldeploy.modalities.preprocessing import Preprocessing

# nvinfer's network-mode values, and its scaling-filter for the contract's interpolation
# (NvBufSurfTransformInter: 0 nearest, 1 bilinear; it has no bicubic, so bicubic scales bilinear).
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
SCALING_FILTERS = {"nearest": 0, "bilinear": 1, "bicubic": 1}


def nvinfer_expresses(prep: Preprocessing) -> bool:
    """Whether nvinfer's fields say this contract exactly: one std for all channels, no crop."""
    return prep.raw or (len(set(prep.std)) == 1 and prep.resize_size == prep.input_size)


@dataclass(frozen=True)
class NvinferNormalisation:
    net_scale_factor: float
    offsets: tuple[float, float, float]
    infer_size: int  # infer-dims is 3;infer_size;infer_size
    model_color_format: int = 0  # 0 RGB, 1 BGR, 2 GRAY

    @classmethod
    def of(cls, prep: Preprocessing) -> NvinferNormalisation:
        """The fields for `prep` (a raw contract, or one nvinfer expresses as it is)."""
        if prep.raw:
            return cls(1.0, (0.0, 0.0, 0.0), prep.resize_size)
        if not nvinfer_expresses(prep):
            raise ValueError("this contract needs the raw-input graph in nvinfer (per-channel std or a crop)")
        # (x / 255 - mean) / std = 1 / (255 std) * (x - 255 mean)
        return cls(1.0 / (255.0 * prep.std[0]), tuple(255.0 * m for m in prep.mean), prep.input_size)  # type: ignore[arg-type]

    def apply(self, frame_rgb: np.ndarray) -> np.ndarray:
        """nvinfer's formula on an H x W x 3 uint8 RGB frame already at infer-dims: the network input
        (3 x H x W float32), channels in the config's colour order."""
        x = frame_rgb.astype(np.float32)
        if self.model_color_format == 1:
            x = x[..., ::-1]
        return (np.float32(self.net_scale_factor) * (x - np.asarray(self.offsets, np.float32))).transpose(2, 0, 1)


def deepstream_config(*, onnx_file: str, engine_file: str, labels_file: str, prep: Preprocessing, precision: str,
                      batch_size: int, threshold: float, secondary: bool, note: str = "") -> str:
    """`config_infer_primary.txt` (or the secondary-GIE variant) for a classifier."""
    norm = NvinferNormalisation.of(prep)
    lines = [
        "# Written by tldeploy bundle from the model's preprocessing contract; do not retype these values.",
        f"# Contract: {prep.describe()}",
    ]
    if prep.raw:
        lines.append("# The graph takes raw RGB 0-255 of the whole frame scaled to infer-dims, and crops and normalises inside.")
    if prep.interpolation == "bicubic":
        lines.append("# The contract resizes bicubic; nvinfer has no bicubic filter, so scaling-filter=1 (bilinear).")
    lines.append("# nvinfer scales the whole frame (or object) to infer-dims: for square inputs that is the contract's resize;")
    lines.append("# other aspect ratios are stretched where the contract resizes the shorter side and crops.")
    if note:
        lines.append(f"# {note}")
    props = {
        "gpu-id": "0",
        "onnx-file": onnx_file,
        "model-engine-file": engine_file,
        "labelfile-path": labels_file,
        "batch-size": str(batch_size),
        "network-mode": str(NETWORK_MODES[precision]),
        "network-type": "1",
        "process-mode": "2" if secondary else "1",
        "gie-unique-id": "2" if secondary else "1",
        "model-color-format": str(norm.model_color_format),
        "infer-dims": f"3;{norm.infer_size};{norm.infer_size}",
        "net-scale-factor": repr(norm.net_scale_factor),
        "offsets": ";".join(repr(o) for o in norm.offsets),
        "maintain-aspect-ratio": "0",
        "scaling-filter": str(SCALING_FILTERS[prep.interpolation]),
        "output-blob-names": "probs",
        "classifier-threshold": repr(threshold),
    }
    if secondary:
        props.update({"operate-on-gie-id": "1", "classifier-async-mode": "1"})
    return "\n".join([*lines, "[property]", *(f"{k}={v}" for k, v in props.items())]) + "\n"


def parse_deepstream(text: str) -> dict[str, str]:
    """The [property] keys of an nvinfer config (comments dropped)."""
    out: dict[str, str] = {}
    section = None
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and section == "property":
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def normalisation_from_config(props: dict[str, str]) -> NvinferNormalisation:
    """What a written config tells nvinfer, read back: for replaying its formula."""
    size = int(props["infer-dims"].split(";")[1])
    offsets = tuple(float(v) for v in props["offsets"].split(";"))
    return NvinferNormalisation(float(props["net-scale-factor"]), offsets, size, int(props["model-color-format"]))  # type: ignore[arg-type]


# ---------------------------------------------------------------- Triton


TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def triton_config(*, name: str, platform: str, input_name: str, input_dims: list[int], outputs: list[tuple[str, list[int]]],
                  max_batch_size: int, labels_file: str | None, model_filename: str) -> str:
    """`config.pbtxt` text. With `max_batch_size > 0` dims leave out the batch dimension (Triton adds it);
    a model with a fixed batch is served with max_batch_size 0 and its full dims."""
    def dims(d: list[int]) -> str:
        return "[ " + ", ".join(str(int(v)) for v in d) + " ]"

    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch_size}",
        f'default_model_filename: "{model_filename}"',
        "input [",
        f'  {{ name: "{input_name}" data_type: TYPE_FP32 dims: {dims(input_dims)} }}',
        "]",
        "output [",
    ]
    outs = []
    for out_name, out_dims in outputs:
        label = f' label_filename: "{labels_file}"' if labels_file and out_name == "probs" else ""
        outs.append(f'  {{ name: "{out_name}" data_type: TYPE_FP32 dims: {dims(out_dims)}{label} }}')
    lines.append(",\n".join(outs))
    lines.append("]")
    if max_batch_size > 0:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"
