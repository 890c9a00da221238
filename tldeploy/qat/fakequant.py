"""Fake quantization at the points the Q/DQ writer quantizes, in the PyTorch model itself.

A *site* is where PyTorch computes a tensor: the innermost module running, the torch function
called and its occurrence in that module during one forward pass (`blocks.0.conv_pw|conv2d|0`),
or `<input>` for the model's input. A function mode watches every torch call of a forward pass:
while placing (`trace`) it reports each call's outputs; while training (`FakeQuantModel`) it
replaces the outputs at the placed sites with their fake-quantized values and the quantized
weights with theirs, so autograd sees the graph ONNX Runtime's writer will write.

`scaled_dot_product_attention` is taken apart as the ONNX exporter takes it apart (the query and
the transposed key each scaled by the square root of the scale, MatMul, Softmax, MatMul), since
its Q/DQ points lie inside it.

The forward value of each quantizer is computed with ONNX Runtime's own `compute_scale_zp` from
the current range, so the simulation uses the scale and zero point the writer will write; the
gradient reaches the range through the learnable fake-quant operator (LSQ), and the weights
through the straight-through estimator.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

if TYPE_CHECKING:  # placement finds its sites with `trace`; these are its records
    from tldeploy.qat.placement import ActivationSite, Placement, RangeSpec, WeightSite

INPUT_SITE = "<input>"
SDPA = "sdpa"


class _Sites(TorchFunctionMode):
    """Names every torch call of a forward pass by site, and hands each tensor output to `on_output`
    (which returns the tensor to use instead); weights pass through `on_weight` first."""

    def __init__(self, model: nn.Module, on_output: Callable[[str, torch.Tensor], torch.Tensor],
                 on_weight: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.on_output, self.on_weight = on_output, on_weight
        self.stack: list[str] = [""]
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        self.handles = []
        for name, m in model.named_modules():
            self.handles.append(m.register_forward_pre_hook(self._enter(name)))
            self.handles.append(m.register_forward_hook(self._leave))

    def _enter(self, name: str):
        def hook(_m, _a) -> None:
            self.stack.append(name)
        return hook

    def _leave(self, _m, _a, _o) -> None:  # a forward hook returning a value would replace the output
        self.stack.pop()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def _site(self, op: str) -> str:
        key = (self.stack[-1], op)
        k = self.counts[key]
        self.counts[key] = k + 1
        return f"{key[0]}|{op}|{k}"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.on_weight is not None and func in (F.conv2d, F.linear, torch.conv2d):
            args = (args[0], self.on_weight(args[1]), *args[2:]) if len(args) > 1 else args
            if "weight" in kwargs:
                kwargs = {**kwargs, "weight": self.on_weight(kwargs["weight"])}
        if func is F.scaled_dot_product_attention:
            return self._attention(*args, **kwargs)
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", None)
        if name is None or name == "__get__":
            return out
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return self.on_output(self._site(name), out)
        if isinstance(out, tuple) and any(isinstance(o, torch.Tensor) for o in out):
            site = self._site(name)
            return type(out)(self.on_output(f"{site}.{i}", o) if isinstance(o, torch.Tensor) and o.is_floating_point() else o
                             for i, o in enumerate(out)) if type(out) is tuple else out
        return out

    def _attention(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        # As torch.onnx decomposes it (onnxscript's aten_scaled_dot_product_attention).
        if attn_mask is not None or is_causal or dropout_p:
            raise NotImplementedError("QAT handles scaled_dot_product_attention without masks or dropout")
        root = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
        site = self._site(SDPA)
        qs = self.on_output(f"{site}.q", q * root)
        ks = self.on_output(f"{site}.k", k.transpose(-2, -1) * root)
        attn = self.on_output(f"{site}.softmax", torch.softmax(qs @ ks, dim=-1))
        return self.on_output(f"{site}.out", attn @ self.on_output(f"{site}.v", v))


@contextmanager
def sites(model: nn.Module, on_output, on_weight=None) -> Iterator[_Sites]:
    mode = _Sites(model, on_output, on_weight)
    try:
        with mode:
            yield mode
    finally:
        mode.remove()


def trace(model: nn.Module, x: torch.Tensor, visit: Callable[[str, torch.Tensor], None]) -> None:
    """Run `model(x)` (no grad), calling `visit(site, tensor)` for the input and every call's output."""
    def on_output(site: str, t: torch.Tensor) -> torch.Tensor:
        visit(site, t)
        return t

    visit(INPUT_SITE, x)
    with torch.no_grad(), sites(model, on_output):
        model(x)


# ---------------------------------------------------------------- the quantizers


def scale_zero_point(lo: float, hi: float, spec: RangeSpec) -> tuple[float, int]:
    """The scale and zero point ONNX Runtime's writer derives from the range [lo, hi]."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    dtype = np.int8 if spec.qmin < 0 else np.uint8
    zp, scale = compute_scale_zp(np.float32(lo), np.float32(hi), dtype(spec.qmin), dtype(spec.qmax), symmetric=spec.symmetric)
    return float(scale), int(zp)


class ActivationQuantizer(nn.Module):
    """Fake quantization of one range: [lo, hi] learnable (LSQ) unless ONNX Runtime fixes it."""

    def __init__(self, spec: RangeSpec) -> None:
        super().__init__()
        self.spec = spec
        self.range = nn.Parameter(torch.tensor([spec.lo, spec.hi], dtype=torch.float32), requires_grad=not spec.fixed)

    def written(self) -> tuple[float, int]:
        lo, hi = self.range.detach().tolist()
        return scale_zero_point(lo, hi, self.spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        scale_v, zp_v = self.written()
        if not self.range.requires_grad:  # a fixed range: the plain straight-through operator, cheaper
            return torch.fake_quantize_per_tensor_affine(x, scale_v, zp_v, s.qmin, s.qmax)
        lo, hi = self.range[0].clamp(max=0.0), self.range[1].clamp(min=0.0)
        if s.symmetric:
            lo, hi = -torch.maximum(-lo, hi), torch.maximum(-lo, hi)
        scale = (hi - lo) / (s.qmax - s.qmin)
        scale = scale + (scale_v - scale).detach()  # the writer's value, the range's gradient
        zp = s.qmin - lo / scale
        zp = zp + (zp_v - zp).detach()
        if s.symmetric or s.fixed:
            zp = zp.detach()
        grad = 1.0 / math.sqrt(max(x[0].numel(), 1) * s.qmax)
        return torch._fake_quantize_learnable_per_tensor_affine(x, scale.reshape(1), zp.reshape(1), s.qmin, s.qmax, grad)


def weight_scale(w: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """ONNX Runtime's symmetric per-channel weight scale (axis 0): max |w_c| over half the range,
    computed in float64 and stored as float32, as its writer does."""
    absmax = w.detach().abs().flatten(1).amax(dim=1).double()
    scale = (2 * absmax / (qmax - qmin)).float()
    return torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)


def fake_quantize_weight(w: torch.Tensor, site: WeightSite, fold: torch.Tensor | None) -> torch.Tensor:
    """w as the Q/DQ graph computes with it: per output channel, symmetric, on the weight the
    export folds its BatchNorm's scale `fold` into (straight-through gradient)."""
    folded = w * fold.reshape(-1, *([1] * (w.dim() - 1))) if fold is not None else w
    scale = weight_scale(folded, site.qmin, site.qmax)
    q = torch.fake_quantize_per_channel_affine(folded, scale, torch.zeros_like(scale, dtype=torch.int32), 0, site.qmin, site.qmax)
    return q / fold.reshape(-1, *([1] * (w.dim() - 1))) if fold is not None else q


def batchnorm_scale(bn: nn.Module) -> torch.Tensor:
    """What the export folds into the preceding weight, per channel: gamma / sqrt(var + eps)."""
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_var is not None
    return bn.weight / torch.sqrt(bn.running_var + bn.eps)


class FakeQuantModel(nn.Module):
    """`model` (the adapted model) computing as the Q/DQ graph of `placement` does. Its ranges are
    parameters (DDP averages their gradients like any other); `model`'s state dict is untouched."""

    def __init__(self, model: nn.Module, placement: Placement) -> None:
        super().__init__()
        self.model = model
        self.placement = placement
        self.quantizers = nn.ModuleList(ActivationQuantizer(r) for r in placement.ranges)
        self._index = {r.name: i for i, r in enumerate(placement.ranges)}
        self._acts: dict[str, ActivationSite] = {a.site: a for a in placement.activations}
        self._weights: dict[int, WeightSite] = {}
        self._folds: dict[int, nn.Module] = {}
        for w in placement.weights:
            param = model.get_submodule(w.module).weight
            self._weights[id(param)] = w
            if w.fold:
                self._folds[id(param)] = model.get_submodule(w.fold)
        self.enabled = True

    def quantizer(self, range_name: str) -> ActivationQuantizer:
        return self.quantizers[self._index[range_name]]  # type: ignore[return-value]

    def _on_output(self, site: str, t: torch.Tensor) -> torch.Tensor:
        a = self._acts.get(site)
        return self.quantizer(a.range)(t) if a is not None else t

    def _on_weight(self, w: Any) -> Any:
        site = self._weights.get(id(w))
        if site is None:
            return w
        bn = self._folds.get(id(w))
        return fake_quantize_weight(w, site, batchnorm_scale(bn) if bn is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.model(x)
        a = self._acts.get(INPUT_SITE)
        if a is not None:
            x = self.quantizer(a.range)(x)
        with sites(self.model, self._on_output, self._on_weight):
            return self.model(x)

    def ranges(self) -> dict[str, list[float]]:
        """Each range as trained: {ONNX tensor: [lo, hi]}."""
        return {r.name: [float(v) for v in self.quantizer(r.name).range.detach().tolist()] for r in self.placement.ranges}

