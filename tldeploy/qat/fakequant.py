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
gradient reaches the range through the learnable fake-quant operator (LSQ, `LearnableFakeQuant`),
and the weights through the straight-through estimator. A weight's scale is the writer's too (from
its largest magnitude), or a learnt clip below it that is then written into the weight.
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


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) without a product tensor: both flattened in one logical order (a view of each
    when both are contiguous or both channels-last, as in QAT)."""
    if a.dim() == 4 and not (a.is_contiguous() and b.is_contiguous()):
        a, b = a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)
    return torch.dot(a.reshape(-1), b.reshape(-1))


class LearnableFakeQuant(torch.autograd.Function):
    """PyTorch's learnable per-tensor fake quantization (LSQ, `_fake_quantize_learnable_per_tensor_affine`):
    the same values and gradients, in float passes PyTorch vectorises. Its kernels were over half
    of a QAT step on CPU: 45 ms for one 16x144x56x56 tensor where these take 13-18 (AMD EPYC
    avx512-vnni, 2 threads); bool masks are avoided because multiplying or selecting by one costs
    as much as the whole fake quantization.

    y = s * (clamp(round(x / s) + z, qmin, qmax) - z), as QuantizeLinear then DequantizeLinear
    compute it (rounding half to even). With rounding passed straight through, dy/dx is 1 inside
    the range and 0 outside; dy/ds is (y - x) / s inside and y / s outside; dy/dz is -s outside."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int, grad_factor: float):  # type: ignore[override]
        s, z = float(scale), float(round(float(zero_point)))
        code = torch.div(x, s).round_().add_(z)
        y = code.clamp(qmin, qmax)
        inside = code.sub_(y).abs_().clamp_(max=1.0).neg_().add_(1.0)  # 1 inside the range, 0 outside (codes are integers)
        y.sub_(z).mul_(s)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            ctx.save_for_backward(inside, torch.addcmul(y, x, inside, value=-1.0))  # s times the scale's gradient per element
        else:
            ctx.save_for_backward(inside)
        ctx.s, ctx.factor = s, grad_factor
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        inside, *err = ctx.saved_tensors
        dx = g * inside
        dscale = dzp = None
        if err:
            dscale = (_dot(g, err[0]) / ctx.s * ctx.factor).reshape(1)
            if ctx.needs_input_grad[2]:
                dzp = (-ctx.s * (g.sum() - dx.sum()) * ctx.factor).reshape(1)  # clipped elements: -s each
        return dx, dscale, dzp, None, None, None


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
        if not self.range.requires_grad:  # a fixed range: the straight-through operator alone
            return LearnableFakeQuant.apply(x, torch.tensor([scale_v]), torch.tensor([float(zp_v)]), s.qmin, s.qmax, 1.0)
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
        return LearnableFakeQuant.apply(x, scale.reshape(1), zp.reshape(1), s.qmin, s.qmax, grad)


def weight_scale(absmax: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """ONNX Runtime's symmetric per-channel weight scale from each channel's largest magnitude:
    max |w_c| over half the range, computed in float64 and stored as float32, as its writer does."""
    scale = (2 * absmax.detach().double() / (qmax - qmin)).float()
    return torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)


def _per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1)))


class WeightQuantizer(nn.Module):
    """Fake quantization of one weight as the Q/DQ graph computes with it: per output channel,
    symmetric, on the weight the export folds its BatchNorm's scale into (straight-through
    gradient to the weight).

    The writer derives each channel's scale from its largest magnitude. With `learn_clip`, a
    channel may clip below that (LSQ: the gradient reaches the clipping value through the
    learnable fake-quant operator, as a ratio of the channel's starting largest magnitude so one
    learning rate suits every layer); `project` then clips the weight itself there before it is
    written, which changes nothing the simulation computes and makes the writer's scale the
    simulation's."""

    def __init__(self, site: WeightSite, weight: torch.Tensor, bn: nn.Module | None, learn_clip: bool) -> None:
        super().__init__()
        self.site = site
        self._bn = (bn,)  # a tuple: the BatchNorm stays the model's module, not registered twice
        with torch.no_grad():
            absmax = self._folded(weight).abs().flatten(1).amax(dim=1)
        self.register_buffer("start", torch.where(absmax > 0, absmax, torch.ones_like(absmax)))
        self.clip = nn.Parameter(torch.ones_like(absmax), requires_grad=learn_clip)

    def step(self) -> float:
        """The mean size of one code step of this weight as the model holds it (before the BatchNorm
        fold), at the scale it started from. A channel whose fold is zero computes nothing and has
        no step there (its weight is left as it is, as `project` leaves it); it is not counted."""
        scale = weight_scale(self.start, self.site.qmin, self.site.qmax)
        fold = self._fold()
        if fold is None:
            return float(scale.mean())
        fold = fold.detach()
        live = fold != 0
        return float((scale[live] / fold[live].abs()).mean()) if live.any() else float(scale.mean())

    def _fold(self) -> torch.Tensor | None:
        bn = self._bn[0]
        return batchnorm_scale(bn) if bn is not None else None

    def _folded(self, w: torch.Tensor) -> torch.Tensor:
        fold = self._fold()
        return w * _per_channel(fold, w) if fold is not None else w

    def _clip(self, folded: torch.Tensor) -> torch.Tensor:
        absmax = folded.detach().abs().flatten(1).amax(dim=1)
        return torch.minimum(self.clip * self.start, absmax) if self.clip.requires_grad else absmax

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.site
        fold = self._fold()
        folded = w * _per_channel(fold, w) if fold is not None else w
        clip = self._clip(folded)
        if not self.clip.requires_grad:  # the writer's scale from the largest magnitude; the plain operator, cheaper
            scale = weight_scale(clip, s.qmin, s.qmax)
            q = torch.fake_quantize_per_channel_affine(folded, scale, torch.zeros_like(scale, dtype=torch.int32), 0, s.qmin, s.qmax)
        else:
            scale = 2 * clip / (s.qmax - s.qmin)
            scale = scale + (weight_scale(clip, s.qmin, s.qmax) - scale).detach()  # the writer's value, the clip's gradient
            grad = 1.0 / math.sqrt(max(w[0].numel(), 1) * s.qmax)
            q = torch._fake_quantize_learnable_per_channel_affine(folded, scale, torch.zeros_like(scale), 0, s.qmin, s.qmax, grad)
        return q / _per_channel(fold, w) if fold is not None else q

    @torch.no_grad()
    def project(self, w: torch.Tensor) -> None:
        """Clip the weight `w` (in place) where the simulation clips it."""
        if not self.clip.requires_grad:
            return
        fold = self._fold()
        folded = self._folded(w)
        clip = _per_channel(self._clip(folded), w)
        clipped = torch.maximum(torch.minimum(folded, clip), -clip)
        if fold is None:
            w.copy_(clipped)
            return
        f = _per_channel(fold, w)
        w.copy_(torch.where(f != 0, clipped / torch.where(f != 0, f, torch.ones_like(f)), w))


def batchnorm_scale(bn: nn.Module) -> torch.Tensor:
    """What the export folds into the preceding weight, per channel: gamma / sqrt(var + eps)."""
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_var is not None
    return bn.weight / torch.sqrt(bn.running_var + bn.eps)


class FakeQuantModel(nn.Module):
    """`model` (the adapted model) computing as the Q/DQ graph of `placement` does. Its ranges and
    weight clips are parameters (DDP averages their gradients like any other); `model`'s state
    dict is untouched until `project_weights` clips its weights."""

    def __init__(self, model: nn.Module, placement: Placement, learn_clip: bool = False) -> None:
        super().__init__()
        self.model = model
        self.placement = placement
        self.quantizers = nn.ModuleList(ActivationQuantizer(r) for r in placement.ranges)
        self._index = {r.name: i for i, r in enumerate(placement.ranges)}
        self._acts: dict[str, ActivationSite] = {a.site: a for a in placement.activations}
        self._params = [model.get_submodule(w.module).weight for w in placement.weights]
        self.weight_quantizers = nn.ModuleList(WeightQuantizer(w, p, model.get_submodule(w.fold) if w.fold else None, learn_clip)
                                               for w, p in zip(placement.weights, self._params, strict=True))
        self._weights: dict[int, WeightQuantizer] = {id(p): q for p, q in self.quantized_weights()}
        self.enabled = True

    def quantizer(self, range_name: str) -> ActivationQuantizer:
        return self.quantizers[self._index[range_name]]  # type: ignore[return-value]

    def _on_output(self, site: str, t: torch.Tensor) -> torch.Tensor:
        a = self._acts.get(site)
        return self.quantizer(a.range)(t) if a is not None else t

    def _on_weight(self, w: Any) -> Any:
        q = self._weights.get(id(w))
        return q(w) if q is not None else w

    def quantized_weights(self) -> list[tuple[nn.Parameter, WeightQuantizer]]:
        """(weight, its quantizer) for every fake-quantized weight of the model."""
        return list(zip(self._params, self.weight_quantizers, strict=True))  # type: ignore[arg-type]

    def project_weights(self) -> None:
        """Before the weights are written: each clipped where the simulation clips it (`WeightQuantizer.project`)."""
        for p, q in self.quantized_weights():
            q.project(p)

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

