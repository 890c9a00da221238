"""Where the Q/DQ graph quantizes, said in PyTorch's terms, found by running both.

The build's writer (ONNX Runtime's quantizer, `engines/quantizer.py`) decides the Q/DQ points; QAT
must fake-quantize exactly there. Rather than re-deriving the writer's rules (which Relu it folds
into a range, which data-movement ops share their input's scale, which Softmax range it fixes),
the placement reads them off the graph the writer wrote for this model:

- every QuantizeLinear on an activation: the tensor it reads, and the calibrated range its scale
  came from (the scale initializer is named after that tensor);
- every per-channel weight: the module whose weight it is (by name scope, confirmed by value),
  and the BatchNorm the export folded into it (found by the per-channel ratio);

and finds each activation's site in PyTorch by evaluating the float ONNX and the PyTorch model on
the same images: the first call whose output equals the tensor (`fakequant.trace`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tldeploy.errors import ConfigError

SCALE_SUFFIX = "_scale"
RELU_LIKE = ("Relu", "Clip")


@dataclass(frozen=True)
class RangeSpec:
    """One calibrated range the writer turns into a scale and zero point."""

    name: str  # the tensor whose range it is (the calibration cache's key)
    lo: float
    hi: float
    qmin: int
    qmax: int
    symmetric: bool
    fixed: bool = False  # the writer sets it itself (a Softmax's output: [0, 1]); not learnt
    ties: tuple[str, ...] = ()  # other cache keys the writer copies this range to (a Relu's input)


@dataclass(frozen=True)
class ActivationSite:
    tensor: str  # the ONNX tensor a QuantizeLinear reads
    range: str  # the RangeSpec its scale comes from
    site: str  # where PyTorch computes it (fakequant's site naming)


@dataclass(frozen=True)
class WeightSite:
    node: str  # the ONNX Conv/MatMul/Gemm
    module: str  # the PyTorch module whose `.weight` it quantizes
    fold: str | None  # the BatchNorm the export folds into that weight
    qmin: int
    qmax: int


@dataclass(frozen=True)
class Placement:
    ranges: tuple[RangeSpec, ...]
    activations: tuple[ActivationSite, ...]
    weights: tuple[WeightSite, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ranges": [asdict(r) for r in self.ranges], "activations": [asdict(a) for a in self.activations],
                "weights": [asdict(w) for w in self.weights]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Placement:
        try:
            return cls(tuple(RangeSpec(**{**r, "ties": tuple(r.get("ties", ()))}) for r in d["ranges"]),
                       tuple(ActivationSite(**a) for a in d["activations"]), tuple(WeightSite(**w) for w in d["weights"]))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"broken QAT placement record ({type(e).__name__}: {e})") from None


def activation_qrange(activation_type: str, symmetric: bool) -> tuple[int, int]:
    # ONNX Runtime's ranges: uint8 0..255; symmetric int8 -127..127 (zero point 0).
    return (0, 255) if activation_type == "uint8" else ((-127, 127) if symmetric else (-128, 127))


def weight_qrange(reduce_range: bool) -> tuple[int, int]:
    # Symmetric int8 weights: -127..127, or -64..64 with reduce_range (7 bits), as ONNX Runtime writes them.
    return (-64, 64) if reduce_range else (-127, 127)


def find_placement(model, float_model, qdq_model, ranges: dict[str, tuple[float, float]], probe: np.ndarray, cfg) -> Placement:
    """The placement of `qdq_model` (written from `float_model` with calibrated `ranges`) on the
    PyTorch `model` (the adapted model, eval mode), found on the `probe` images."""
    from onnx import numpy_helper

    inits = {i.name: i for i in qdq_model.graph.initializer}
    producers = {o: n for n in float_model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in float_model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    qmin, qmax = activation_qrange(cfg.activation_type, cfg.activation_symmetric)

    def root_of(scale_name: str) -> str:
        root = scale_name[: -len(SCALE_SUFFIX)] if scale_name.endswith(SCALE_SUFFIX) else scale_name
        users = consumers.get(root, [])
        if len(users) == 1 and users[0].op_type in RELU_LIKE:  # the writer reads a Relu/Clip's input through its output's range
            root = users[0].output[0]
        if root not in ranges:
            raise ConfigError(f"the Q/DQ graph's scale {scale_name} comes from no calibrated tensor; QAT cannot train it")
        return root

    specs: dict[str, RangeSpec] = {}
    acts: list[tuple[str, str]] = []
    for n in qdq_model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits:
            continue
        root = root_of(n.input[1])
        if root not in specs:
            producer = producers.get(root)
            fixed = producer is not None and producer.op_type == "Softmax"
            lo, hi = (0.0, 1.0) if fixed else ranges[root]
            ties = tuple(p.input[0] for p in [producer] if p is not None and p.op_type in RELU_LIKE and p.input[0] in ranges)
            specs[root] = RangeSpec(root, float(lo), float(hi), qmin, qmax, cfg.activation_symmetric, fixed, ties)
        acts.append((n.input[0], root))

    weights = _weight_sites(model, float_model, qdq_model, inits, numpy_helper, weight_qrange(cfg.reduce_range))
    sites = _activation_sites(model, float_model, [t for t, _ in acts], probe)
    return Placement(tuple(specs.values()), tuple(ActivationSite(t, r, sites[t]) for t, r in acts), tuple(weights))


def _weight_sites(model, float_model, qdq_model, inits, numpy_helper, qrange) -> list[WeightSite]:
    import torch

    from tldeploy.scopes import module_paths

    float_inits = {i.name: i for i in float_model.graph.initializer}
    float_nodes = {n.name: n for n in float_model.graph.node}
    paths = module_paths(float_model)
    dq_out = {n.output[0]: n for n in qdq_model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    bns = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    out = []
    for n in qdq_model.graph.node:
        if n.op_type not in ("Conv", "MatMul", "Gemm") or len(n.input) < 2 or n.input[1] not in dq_out:
            continue
        dq = dq_out[n.input[1]]
        if numpy_helper.to_array(inits[dq.input[2]]).dtype == np.int32 if len(dq.input) > 2 else False:
            continue
        src = float_nodes.get(n.name)
        if src is None or src.input[1] not in float_inits:
            raise ConfigError(f"QAT: the quantized weight of {n.name} has no float counterpart in the export")
        w_onnx = numpy_helper.to_array(float_inits[src.input[1]]).astype(np.float64)
        module, fold = _weight_module(model, paths.get(n.name, ""), w_onnx, n.op_type, bns)
        if module is None:
            raise ConfigError(f"QAT: cannot tell which PyTorch weight {n.name} ({n.op_type}, module {paths.get(n.name) or '?'}) quantizes")
        out.append(WeightSite(n.name, module, fold, *qrange))
    return out


def _weight_module(model, path: str, w_onnx: np.ndarray, op: str, bns: dict) -> tuple[str | None, str | None]:
    """(module path, BatchNorm folded into it or None): the scope's module first, then any weight
    of the same size, confirmed by value."""
    import torch

    from tldeploy.qat.fakequant import batchnorm_scale

    named = dict(model.named_modules())
    candidates = [path] if path in named else []
    candidates += [k for k, m in named.items() if k != path and isinstance(getattr(m, "weight", None), torch.nn.Parameter)
                   and m.weight.numel() == w_onnx.size]
    for name in candidates:
        w = getattr(named[name], "weight", None)
        if w is None or w.numel() != w_onnx.size:
            continue
        w = w.detach().double().numpy()
        if op in ("MatMul",) and w.ndim == 2 and w.T.shape == w_onnx.shape:
            if np.allclose(w.T, w_onnx, rtol=1e-5, atol=1e-7):
                return name, None
            continue
        if w.shape != w_onnx.shape:
            continue
        if np.allclose(w, w_onnx, rtol=1e-5, atol=1e-7):
            return name, None
        flat, ref = w.reshape(len(w), -1), w_onnx.reshape(len(w), -1)
        ratio = (flat * ref).sum(1) / np.maximum((flat * flat).sum(1), 1e-30)
        if not np.allclose(flat * ratio[:, None], ref, rtol=1e-4, atol=1e-6):
            continue
        live = (flat * flat).sum(1) > 0  # an all-zero filter says nothing about its scale
        for bn_name, bn in bns.items():
            g = batchnorm_scale(bn).detach().double().numpy()
            if g.shape == ratio.shape and np.allclose(g[live], ratio[live], rtol=1e-4, atol=1e-7):
                return name, bn_name
    return None, None


def _activation_sites(model, float_model, tensors: list[str], probe: np.ndarray) -> dict[str, str]:
    """{ONNX tensor: the first PyTorch site computing the same values on `probe`}."""
    import onnx
    import onnxruntime as ort
    import torch

    from tldeploy.qat.fakequant import trace

    wanted = sorted(set(tensors))
    m = onnx.ModelProto()
    m.CopyFrom(float_model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted if t not in have)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    values = dict(zip(wanted, sess.run(wanted, {input_name: probe}), strict=True))
    targets = {t: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).flatten() for t, v in values.items()}
    by_size: dict[int, list[str]] = {}
    for t, v in targets.items():
        by_size.setdefault(v.numel(), []).append(t)
    found: dict[str, str] = {}

    def visit(site: str, out: torch.Tensor) -> None:
        for t in by_size.get(out.numel(), []):
            if t in found:
                continue
            ref = targets[t]
            tol = 1e-3 * max(1.0, float(ref.abs().max()))
            if float((out.detach().float().reshape(-1) - ref).abs().max()) <= tol:
                found[t] = site

    model.eval()
    trace(model, torch.from_numpy(probe), visit)
    missing = [t for t in wanted if t not in found]
    if missing:
        raise ConfigError(f"QAT: found no PyTorch computation for the quantized tensor(s) {', '.join(missing[:5])}: "
                          "the export and the model differ here; QAT supports what `tldeploy export` writes")
    return found
