"""INT8 by explicit quantization: a Q/DQ ONNX calibrated on real images with ONNX Runtime's
quantization tools, in the flavour the target runs fast and correctly.

Two things are ours, on top of `onnxruntime.quantization.quantize_static`:

- what stays float: the CAM head and the softmax always do (the CAM's Gather of classifier
  rows breaks per-axis Q/DQ, and the head is a sliver of the compute), and
- an accuracy guard: with `keep_float="auto"` the units (a convolution with its activation, an
  Add, ...) are ranked by their measured effect on the task (`sensitivity.py`), and the most
  sensitive ones, anywhere in the network, are kept in float one by one until the INT8 model
  agrees with the float model on the check images (`Acceptance`). With validation images
  (`check`) the promise is about them; without, held-out calibration-folder images stand in,
  with a stricter bar (all agree and a KL margin), since images from the training distribution
  sit far from decision boundaries. Calibration runs once; the ranges are cached, so each step
  only re-writes the graph (`quantizer.py`). A precision plan (`plan.py`) replaces the search
  with its units.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tldeploy.contract import OnnxFile
from tldeploy.engines.calibration import MIN_CALIB_IMAGES, CalibrationSet, ImageSet, spread
from tldeploy.engines.graph import check_written_graph
from tldeploy.engines.qdq import QdqStats, qdq_stats
from tldeploy.engines.quant_config import QatRecord, QuantConfig
from tldeploy.engines.quantizer import Quantizer
from tldeploy.errors import ConfigError

log = logging.getLogger(__name__)

# The transformer preset: in a backbone with LayerNorms or Softmaxes, only the matrix products
# (Conv, MatMul, Gemm) read Q/DQ: their inputs (the Softmax's output into the attention's second
# MatMul included); their bias Adds, the normalisations, Softmaxes, GELUs and residual Adds compute
# in float from the start, and the guard searches the matrix products only, as NVIDIA's ModelOpt
# places Q/DQ for transformers. Measured (benchmarks/results/vit_int8.json, AMD EPYC avx512-vnni):
# on a ViT trained on the digits, top-1 agreement with FP32 100% on 359 validation images, against
# 98.33% with every unit quantized, 99.72% with the bias Adds quantized too, and 98.05-98.89% with
# only the residual Adds, the LayerNorms, the Softmaxes, the GELUs or the linear layers kept in
# float; batch-1 p50 at ViT-Tiny's size (224 px, random weights) 0.58x FP32 against 0.68x fully
# quantized (one interleaved run; a probe run beside it: 0.48x, 0.61x, and 0.56x with the bias Adds
# quantized). The guard then needed no unit in float at either weight width.
MATRIX_PRODUCTS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass
class QuantResult:
    model: object  # onnx.ModelProto
    config: QuantConfig
    calibration: CalibrationSet | None  # None: quantization-aware trained ranges, nothing calibrated
    float_units: list  # sensitivity.Unit kept in float, most sensitive first
    metrics: object  # sensitivity.TaskMetrics of the result on the check images (None: no check images)
    acceptance: object  # sensitivity.Acceptance it was held to
    passed: bool
    history: list  # (units in float, TaskMetrics) of the search
    seconds: float
    stats: QdqStats
    plan: str | None = None  # the precision plan applied, if any
    float_regions: int = 0  # connected pieces the float units form (each costs a float/INT8 boundary)
    preset_units: list = field(default_factory=list)  # sensitivity.Unit the transformer preset kept in float
    qat: QatRecord | None = None  # the quantization-aware training the ranges come from

    def summary(self) -> dict:
        m = self.metrics
        if m is None:
            check: dict = {"skipped": "no check images (pass --check-data)", "images": self.acceptance.images}
        else:
            check = {**m.to_dict(), "images": self.acceptance.images, "criterion": self.acceptance.to_dict(), "passed": self.passed,
                     "evaluated": "Q/DQ graph as written" if self.config.evaluated_as_written else "onnxruntime CPU kernels"}
        calibration = ({"method": self.config.options.calib_method, "images": len(self.calibration.images), "source": self.calibration.source,
                        "sha256": self.calibration.sha256} if self.calibration is not None else None)
        return {
            "flavour": self.config.flavour,
            "activations": f"{self.config.activation_type} {'symmetric' if self.config.activation_symmetric else 'asymmetric'}",
            "weights": f"int8 symmetric {'per-channel' if self.config.per_channel else 'per-tensor'}"
            + (", 7-bit (reduce_range)" if self.config.reduce_range else ""),
            "calibration": calibration,
            "qat": {k: v for k, v in self.qat.to_dict().items() if k not in ("ranges", "float_nodes")} if self.qat else None,
            "float_units": [{"name": u.name, "module": u.module, "short": u.short, "op": u.op, "nodes": list(u.nodes)}
                            for u in self.float_units],
            "plan": self.plan,
            "preset": {"name": "as quantization-aware training computed" if self.qat else "transformer: matrix products only", "float_units": [u.short or u.name for u in self.preset_units]}
            if self.preset_units else None,
            "float_regions": self.float_regions,
            "check": check,
            "search": [{"order": o, "float_units": k, "top1_agreement": h.top1_agreement, "kl": h.kl} for o, k, h in self.history],
            "qdq": self.stats.to_dict(),
        }



def rank_int8(q: Quantizer, images: np.ndarray, floats: set[str] | None = None):
    """(metrics of the model with every unit quantized but the `floats` nodes (a preset's), the
    effects of the units not wholly in `floats`, ranked) on `images`."""
    from tldeploy.engines.sensitivity import rank, sweep_int8

    floats = floats or set()
    ev = q.evaluator(images)
    units = [u for u in q.units() if not set(u.nodes) <= floats]
    base_metrics = ev.metrics(q.mix(sorted(floats)))
    return base_metrics, rank(sweep_int8(ev, q.float_model, q.full(), units, base_metrics, floats))


def transformer_preset(units: list) -> set[str]:
    """The nodes the transformer preset computes in float (see PRESETS): every node but the matrix
    products themselves, where the units include a LayerNormalization or a Softmax; none otherwise."""
    if not any(u.op in ("LayerNormalization", "Softmax") for u in units):
        return set()
    return {n for u in units for i, n in enumerate(u.nodes) if i or u.op.split("+")[0] not in MATRIX_PRODUCTS}


class QdqFromOnnx:
    """A lazy build step: the Q/DQ INT8 model of an FP32 export (`quantize_model`) when called."""

    def __init__(self, source: OnnxFile, calib: CalibrationSet | None, cfg: QuantConfig, cache_dir: Path,
                 check: ImageSet | None = None, plan=None, plan_path: Path | None = None) -> None:
        self.source, self.calib, self.cfg, self.cache_dir = source, calib, cfg, cache_dir
        self.check, self.plan, self.plan_path = check, plan, plan_path

    def __call__(self) -> QuantResult:
        return quantize_model(self.source, self.calib, self.cfg, self.cache_dir, self.check, self.plan, self.plan_path)


def quantize_model(source: Path | OnnxFile, calib: CalibrationSet | None, cfg: QuantConfig, cache_dir: Path,
                   check: ImageSet | None = None, plan=None, plan_path: Path | None = None) -> QuantResult:
    """The Q/DQ ModelProto of the float ONNX at `onnx_path`, calibrated on `calib`, with the units
    the plan names, or the guard chooses, left in float (see the module docstring). A quantization-
    aware trained export needs no `calib`: its own ranges are written (`_qat_model`)."""
    from tldeploy.contract import write_contract
    from tldeploy.engines.units import Unit, float_regions

    t0 = time.perf_counter()
    src = OnnxFile.of(source)
    onnx_path = src.path
    if QatRecord.from_contract(src.contract, str(onnx_path)) is not None:
        with Quantizer(src, None, cfg, cache_dir) as q:
            return _qat_model(q, cfg, check, plan, plan_path, t0)
    if calib is None:
        raise ConfigError(f"--precision int8 needs --calib-data DIR to calibrate {onnx_path} on (the training folder works)")
    check, accept = _guard_images(calib, check, cfg)
    opts = cfg.options
    if cfg.evaluated_as_written and cfg.flavour == "ort-x86":
        log.warning("8-bit INT8 weights on a CPU without VNNI: ONNX Runtime's kernels here saturate, so the check evaluates "
                    "the Q/DQ graph as written (what a VNNI CPU computes); run this artifact on a VNNI CPU, or build with --reduce-range")
    with Quantizer(src, calib, cfg, cache_dir) as q:
        ev = q.evaluator(check.images)
        floats = transformer_preset(q.units()) if plan is None and opts.preset == "auto" else set()
        base = sorted(floats)
        preset = [u for u in q.units() if set(u.nodes) <= floats]  # wholly in float; the others are searched
        searched = len(q.units()) - len(preset)
        if base:
            log.info("INT8 transformer preset: the %d matrix products quantized, their bias Adds and %d other units "
                     "(normalisations, Softmaxes, activations, Adds) in float (--int8-preset none quantizes all)", searched, len(preset))
        if plan is not None:
            plan.check_nodes(q.float_model, plan_path, onnx_path)
            units = [Unit.from_plan(u) for u in plan.units]
            model = q.mix(plan.nodes)
            m = ev.metrics(model)
            history, passed = [("plan", len(units), m)], accept.accepts(m)
            log.info("INT8 with the %d unit(s) of %s in float: top-1 agreement %.2f%%, KL %.2e on %s",
                     len(units), plan_path, 100 * m.top1_agreement, m.kl, accept.images)
        else:
            units, m, history, passed = _guard(q, ev, accept, floats, searched)
            model = q.mix(base + [n for u in units for n in u.nodes])
        contract = q.contract
        regions = float_regions(q.float_model, list(units)) if units else 0
    write_contract(model, _with_precision(contract, "int8", cfg))
    check_written_graph(model, "INT8")
    return QuantResult(model, cfg, calib, list(units), m, accept, passed, history, time.perf_counter() - t0, qdq_stats(model),
                       str(plan_path) if plan_path else None, regions, preset)


def _guard(q: Quantizer, ev, accept, floats: set[str], searched: int) -> tuple[list, object, list, bool]:
    """The guard's search, as `--int8-keep-float` says: (the units kept in float, the metrics of
    their mix on `ev`'s images, the search as (order, count, metrics), whether `accept` passed
    it). `floats` (the preset's nodes) stay in float throughout; `searched` units are ranked."""
    from tldeploy.engines.sensitivity import choose
    from tldeploy.engines.units import float_regions

    opts, base = q.cfg.options, sorted(floats)

    def metrics_for(units) -> object:
        return ev.metrics(q.mix(base + [n for u in units for n in u.nodes]))

    order: list = []
    if opts.keep_float == "auto" or int(opts.keep_float) > 0:  # fully quantized needs no ranking
        log.info("INT8 guard: ranking %d units on %d of %s, then checking against %s", searched,
                 min(opts.rank_images, len(ev.images)), accept.images, accept.describe())
        _, ranked = rank_int8(q, spread(ev.images, opts.rank_images), floats)
        order = [e.unit for e in ranked]
    if opts.keep_float == "auto":
        # Errors of early layers compound, which a one-at-a-time ranking underrates, so
        # graph order is tried beside it: the guard never needs more units than either.
        orders = {"ranked": order, "graph order": sorted(order, key=lambda u: u.index)}
        units, m, history, passed = choose(orders, metrics_for, accept, opts.max_keep_float,
                                           regions=lambda us: float_regions(q.float_model, us))
        if not passed:
            log.warning("INT8 stayed short of %s (kept the mix with the lowest KL: top-1 agreement %.2f%%, KL %.2e "
                        "with %d unit(s) in float). Pass --check-data with validation images, try --calib-method percentile, or use --precision fp32",
                        accept.describe(), 100 * m.top1_agreement, m.kl, len(units))
        return units, m, history, passed
    units = order[: int(opts.keep_float)]
    m = metrics_for(units)
    return units, m, [("ranked", len(units), m)], accept.accepts(m)


def _guard_images(calib: CalibrationSet, check: ImageSet | None, cfg: QuantConfig):
    """(the images the guard measures, what it holds the mix to): --check-data, else the
    calibration images held out (each with its default bar)."""
    from tldeploy.engines.sensitivity import Acceptance

    held_out = check is None
    if check is None:
        check = ImageSet.holdout_of(calib)
        if len(calib.holdout) < MIN_CALIB_IMAGES:
            log.warning("too few images left in %s to hold out; the INT8 agreement is checked on the calibration images "
                        "(pass --check-data with validation images)", calib.source)
    return check, Acceptance(cfg.options.tolerance("held_out" if held_out else "validation"), check.describe())


def _qat_model(q: Quantizer, cfg: QuantConfig, check: ImageSet | None, plan, plan_path: Path | None, t0: float) -> QuantResult:
    """The Q/DQ model of a quantization-aware trained export: its trained ranges, the nodes QAT
    computed in float, and only what a plan or `--int8-keep-float N` adds; the check images (if
    any) measure it, the guard searches nothing."""
    from tldeploy.contract import write_contract
    from tldeploy.engines.sensitivity import Acceptance
    from tldeploy.engines.units import Unit, float_regions

    assert q.qat is not None
    floats = set(q.qat.float_nodes)
    units: list = []
    if plan is not None:
        plan.check_nodes(q.float_model, plan_path, q.onnx_path)
        units = [Unit.from_plan(u) for u in plan.units]
    elif cfg.options.keep_float != "auto" and int(cfg.options.keep_float) > 0:
        if check is None:
            raise ConfigError("--int8-keep-float N on a quantization-aware trained export needs --check-data DIR to rank the units on")
        _, ranked = rank_int8(q, spread(check.images, cfg.options.rank_images), floats)
        units = [e.unit for e in ranked][: int(cfg.options.keep_float)]
    floats |= {n for u in units for n in u.nodes}
    model = q.mix(sorted(floats))
    preset = [u for u in q.units() if set(u.nodes) <= set(q.qat.float_nodes)]
    accept = Acceptance(cfg.options.tolerance("validation"), check.describe() if check is not None else "no check images")
    m, passed, history = None, True, []
    if check is not None:
        m = q.evaluator(check.images).metrics(model)
        passed, history = accept.accepts(m), [("qat", len(units), m)]
        log.info("INT8 from quantization-aware training (%s), %d unit(s) kept in float: top-1 agreement with FP32 %.2f%%, KL %.2e on %s",
                 q.qat.flavour, len(units), 100 * m.top1_agreement, m.kl, accept.images)
        if not passed:
            log.warning("the QAT artifact stays short of %s on %s; keep units in float with --int8-keep-float N or a plan, "
                        "or train QAT longer", accept.describe(), accept.images)
    else:
        log.info("INT8 from quantization-aware training (%s): written from its trained ranges, nothing calibrated; "
                 "pass --check-data DIR to measure its agreement with FP32", q.qat.flavour)
    write_contract(model, _with_precision(q.contract, "int8", cfg))
    check_written_graph(model, "INT8")
    regions = float_regions(q.float_model, units) if units else 0
    return QuantResult(model, cfg, None, units, m, accept, passed, history, time.perf_counter() - t0, qdq_stats(model),
                       str(plan_path) if plan_path else None, regions, preset, qat=q.qat)


def _with_precision(contract, precision: str, cfg: QuantConfig):
    return replace(contract, precision=precision, extra={**contract.extra, "qdq_flavour": cfg.flavour})
