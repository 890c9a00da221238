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
  only re-writes the graph. A precision plan (`plan.py`) replaces the search with its units.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tldeploy.contract import OnnxFile
from tldeploy.engines.calibration import MIN_CALIB_IMAGES, CalibrationSet, ImageSet, spread
from tldeploy.engines.graph import check_written_graph, frontend_nodes, name_every_node
from tldeploy.engines.qdq import QdqStats, head_nodes, qdq_stats
from tldeploy.engines.quant_config import QatRecord, QuantConfig
from tldeploy.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

CALIB_BATCH = 8
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


def _require_ort():
    try:
        import onnxruntime
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        raise MissingDependencyError("onnxruntime", purpose="INT8 calibration") from None
    return onnxruntime


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs advice and per-channel scale notes on the root logger, and its
    histogram calibrators (entropy, percentile) print progress: to stderr, so stdout stays ours
    (build --json)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        root.setLevel(level)


def _cache_key(onnx_sha: str, calib: CalibrationSet, cfg: QuantConfig, ort_version: str) -> str:
    key = {"onnx": onnx_sha, "calib": calib.sha256, "method": cfg.options.calib_method,
           "symmetric": cfg.activation_symmetric, "activation": cfg.activation_type, "ort": ort_version}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class Quantizer:
    """Calibrates once (the ranges are cached across builds), then writes Q/DQ models with any
    set of nodes left in float. A context manager: it owns a temporary folder."""

    def __init__(self, source: Path | OnnxFile, calib: CalibrationSet | None, cfg: QuantConfig, cache_dir: Path) -> None:
        self.src = OnnxFile.of(source)
        self.onnx_path, self.calib, self.cfg, self.cache_dir = self.src.path, calib, cfg, Path(cache_dir)
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Quantizer:
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from tldeploy.scopes import keep_name_scopes

        ort = _require_ort()
        contract = self.src.contract
        if contract.attention == "plugin":
            raise ConfigError(
                f"{self.onnx_path} has ChannelAttention plugin nodes, which ONNX Runtime cannot run to calibrate; "
                "build INT8 from the standard export (without --attention-plugin)"
            )
        if contract.precision != "fp32":
            raise ConfigError(f"{self.onnx_path} is a {contract.precision} export; INT8 calibrates an FP32 export")
        self.contract = contract
        self._tmp = tempfile.TemporaryDirectory(prefix="tldeploy-quant-")
        self.tmp = Path(self._tmp.name)
        self.pre = self.tmp / "pre.onnx"
        with _quiet_root_logger():
            # ONNX Runtime's pre-processing reads the file itself: given the ModelProto instead, its
            # optimizer fails on the initializers it moves out ("Cannot parse data from external tensors").
            quant_pre_process(str(self.onnx_path), str(self.pre), skip_symbolic_shape=True)
        self.float_model = onnx.load(str(self.pre))
        if name_every_node(self.float_model):  # the quantizer must see the names the mixes use
            onnx.save(self.float_model, str(self.pre))
        keep_name_scopes(self.src.proto, self.float_model)
        self.front = frontend_nodes(self.float_model, contract)  # the log-mel stays float: power spectra span many decades
        self.head = head_nodes(self.float_model, self.front)
        # A quantization-aware trained export brings its ranges: they are written as the cache
        # quantize_static reads, so nothing is calibrated and the trained scales are the ones written.
        self.qat = QatRecord.from_contract(contract, str(self.onnx_path))
        if self.qat is not None:
            self.qat.check_target(self.cfg, str(self.onnx_path))
            self.cache = self.tmp / "qat-ranges.json"
            self.qat.write_cache(self.cache)
        elif self.calib is None:
            raise ConfigError(f"--precision int8 needs --calib-data DIR to calibrate {self.onnx_path} on (the training folder works)")
        else:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self.cache = self.cache_dir / f"calib-{_cache_key(self.src.sha256, self.calib, self.cfg, ort.__version__)}.json"
        self._full = None
        self._units: list | None = None
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def full(self):
        """The Q/DQ ModelProto with everything but the head and the front end quantized (made once)."""
        if self._full is None:
            self._full = self._quantize()
        return self._full

    def units(self) -> list:
        """The units `full()` quantized, in graph order (found once)."""
        if self._units is None:
            from tldeploy.engines.units import int8_units

            self._units = int8_units(self.float_model, self.full())
        return self._units

    def mix(self, keep_float: list[str] | tuple[str, ...] = ()):
        """The Q/DQ ModelProto with `keep_float` nodes also in float.

        Built from the float graph with the quantized units' Q/DQ copied in, not by quantizing
        again with `nodes_to_exclude`: ONNX Runtime's quantizer folds a Relu/Clip into the
        producer's quantization range and deletes it, so a float consumer would read the
        unclipped tensor (measured on the digits model: 59% agreement with one depthwise
        convolution excluded that way, 98% with its inputs simply left unquantized)."""
        from tldeploy.engines.mixed import mixed_int8

        if not keep_float:
            return self.full()
        skip = set(keep_float)
        quantized = [n for u in self.units() for n in u.nodes if n not in skip]
        return mixed_int8(self.float_model, self.full(), quantized)

    def _quantize(self):
        """quantize_static with the head and the front end in float."""
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        cfg, name = self.cfg, self.contract.input_name
        images = self.calib.images if self.calib is not None else np.zeros((0,), np.float32)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.i = 0

            def get_next(self):
                if self.i >= len(images):
                    return None
                self.i += CALIB_BATCH
                return {name: images[self.i - CALIB_BATCH : self.i]}

        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[cfg.options.calib_method]
        out = self.tmp / "full.onnx"
        hit = self.cache.is_file()
        target = self.cache if hit else self.tmp / "calib.json"
        with _quiet_root_logger():
            if not hit and cfg.options.calib_method == "entropy":
                self._entropy_ranges(Reader(), target)
            quantize_static(
                str(self.pre), str(out), None if hit else Reader(), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8 if cfg.activation_type == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                nodes_to_exclude=self.head + sorted(self.front), calibrate_method=method, calibration_cache_path=str(target),
                extra_options={"ActivationSymmetric": cfg.activation_symmetric, "WeightSymmetric": True},
            )
        if not hit:  # publish the ranges only once complete: a cache is never half-written
            target.replace(self.cache)
        return onnx.load(str(out))

    def _entropy_ranges(self, reader, target: Path) -> None:
        """quantize_static builds its entropy calibrator with 128 histogram bins and 128 quantized
        bins, which leaves the KL search one candidate, the min/max range. Calibrate here with 512/128
        (193 candidate ranges; TensorRT's 2048 bins give 961, and ONNX Runtime searches them in
        Python, per tensor); quantize_static then reads `target`."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        calibrator = create_calibrator(
            self.pre, sorted(set(QLinearOpsRegistry) | set(QDQRegistry)), augmented_model_path=str(self.tmp / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy, extra_options={"num_bins": 512, "num_quantized_bins": 128},
        )
        calibrator.collect_data(reader)
        save_tensors_data(calibrator.compute_data(), target)

    def evaluator(self, images: np.ndarray):
        from tldeploy.engines.sensitivity import Evaluator

        return Evaluator(images, self.contract.input_name, self.float_model, as_written=self.cfg.evaluated_as_written)


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
    from tldeploy.engines.sensitivity import choose
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

        def metrics_for(units) -> object:
            return ev.metrics(q.mix(base + [n for u in units for n in u.nodes]))

        if plan is not None:
            plan.check_nodes(q.float_model, plan_path, onnx_path)
            units = [Unit.from_plan(u) for u in plan.units]
            model = q.mix(plan.nodes)
            m = ev.metrics(model)
            history, passed = [("plan", len(units), m)], accept.accepts(m)
            log.info("INT8 with the %d unit(s) of %s in float: top-1 agreement %.2f%%, KL %.2e on %s",
                     len(units), plan_path, 100 * m.top1_agreement, m.kl, accept.images)
        else:
            order: list = []
            if opts.keep_float == "auto" or int(opts.keep_float) > 0:  # fully quantized needs no ranking
                log.info("INT8 guard: ranking %d units on %d of %s, then checking against %s", searched,
                         min(opts.rank_images, len(check.images)), accept.images, accept.describe())
                _, ranked = rank_int8(q, spread(check.images, opts.rank_images), floats)
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
            else:
                units = order[: int(opts.keep_float)]
                m = metrics_for(units)
                history, passed = [("ranked", len(units), m)], accept.accepts(m)
            model = q.mix(base + [n for u in units for n in u.nodes])
        contract = q.contract
        regions = float_regions(q.float_model, list(units)) if units else 0
    write_contract(model, _with_precision(contract, "int8", cfg))
    check_written_graph(model, "INT8")
    return QuantResult(model, cfg, calib, list(units), m, accept, passed, history, time.perf_counter() - t0, qdq_stats(model),
                       str(plan_path) if plan_path else None, regions, preset)


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
