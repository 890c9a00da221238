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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tldeploy.engines.capabilities import CALIB_METHODS
from tldeploy.engines.graph import frontend_nodes
from tldeploy.errors import ConfigError, DataError, MissingDependencyError, TldeployError

log = logging.getLogger(__name__)

FLAVOURS = ("tensorrt", "ort-x86")
MIN_CALIB_IMAGES = 32
CALIB_BATCH = 8


def cpu_has_vnni() -> bool:
    """True when this x86 CPU has a VNNI dot-product instruction (Linux /proc/cpuinfo)."""
    from tldeploy.runtime.host import has_vnni

    return has_vnni()


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize; build one with `QuantConfig.tensorrt()` or `QuantConfig.ort_x86()`."""

    flavour: str
    activation_type: str  # "int8" or "uint8"
    activation_symmetric: bool
    per_channel: bool
    reduce_range: bool
    calib_method: str = "minmax"
    calib_samples: int = 256
    keep_float: int | str = "auto"  # units kept in float, most sensitive first: a number, or "auto"
    # auto: top-1 agreement with the float model to reach on the check images; None: the default
    # for the kind of images (CHECK_DEFAULTS).
    min_agreement: float | None = None
    max_kl: float | None = None  # auto: mean KL to stay under as well; None: the default for the images
    max_keep_float: int = 16  # auto: give up (with a warning) after this many units
    rank_images: int = 32  # images the ranking sweep runs on (the check itself uses all): 2 runs per unit

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ConfigError(f"Q/DQ flavour must be one of {', '.join(FLAVOURS)}, got {self.flavour!r}")
        if self.activation_type not in ("int8", "uint8"):
            raise ConfigError(f"activation type must be int8 or uint8, got {self.activation_type!r}")
        if self.calib_method not in CALIB_METHODS:
            raise ConfigError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {self.calib_method!r}")
        if self.calib_samples < 1:
            raise ConfigError(f"--calib-samples must be at least 1, got {self.calib_samples}")
        if not (self.keep_float == "auto" or (isinstance(self.keep_float, int) and self.keep_float >= 0)):
            raise ConfigError(f"--int8-keep-float must be 'auto' or a count >= 0, got {self.keep_float!r}")
        if self.min_agreement is not None and not 0.0 < self.min_agreement <= 1.0:
            raise ConfigError(f"--int8-min-agreement must be in (0, 1], got {self.min_agreement}")
        if self.max_kl is not None and self.max_kl < 0:
            raise ConfigError(f"--int8-max-kl must be >= 0, got {self.max_kl}")
        if self.flavour == "tensorrt" and (self.activation_type != "int8" or not self.activation_symmetric):
            raise ConfigError("TensorRT takes only symmetric signed INT8 activations (zero points 0)")

    @classmethod
    def tensorrt(cls, **kw) -> QuantConfig:
        # TensorRT only accepts symmetric signed INT8 (zero point 0) and wants per-channel weights;
        # its kernels accumulate in int32, so there is no reason to give up a weight bit.
        return cls(flavour="tensorrt", activation_type="int8", activation_symmetric=True, per_channel=True, reduce_range=False, **kw)

    @classmethod
    def ort_x86(cls, reduce_range: bool | None = None, **kw) -> QuantConfig:
        # ORT's x86 kernels are fast with unsigned activations and signed weights (U8S8); signed
        # activations ran ~3x slower on this AVX2 CPU. Without VNNI, AVX2 adds pairs of u8*s8
        # products in int16 and saturates: 7-bit weights (reduce_range) avoid it (measured on the
        # digits model: top-1 0.55 with 8-bit weights, 0.89 with 7-bit, both all-INT8).
        rr = (not cpu_has_vnni()) if reduce_range is None else reduce_range
        return cls(flavour="ort-x86", activation_type="uint8", activation_symmetric=False, per_channel=True, reduce_range=rr, **kw)

    @property
    def evaluated_as_written(self) -> bool:
        """True when this CPU's ONNX Runtime kernels would not compute what the target computes,
        so the guard evaluates the Q/DQ graph as written: TensorRT's INT8 (it cannot run here), and
        8-bit weights on a CPU without VNNI (whose kernels saturate where a VNNI CPU's do not)."""
        return self.flavour == "tensorrt" or (not self.reduce_range and not cpu_has_vnni())

    @classmethod
    def for_backend(cls, backend: str, **kw) -> QuantConfig:
        return cls.tensorrt(**kw) if backend == "tensorrt" else cls.ort_x86(**kw)


@dataclass(frozen=True)
class CalibrationSet:
    images: np.ndarray  # N x input shape, preprocessed by the contract: the ranges come from these
    holdout: np.ndarray  # other images from the same folder, for the agreement check (may be empty)
    source: str
    sha256: str  # of both tensors: changes with the files, their order and the preprocessing

    @classmethod
    def from_folder(cls, folder: Path, prep, samples: int) -> CalibrationSet:
        """Up to `samples` images, evenly spaced over the sorted files (so every class folder is
        represented), and up to as many others held out to check the quantized model on."""
        from tldeploy.data.folders import find_files

        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"--calib-data {folder} is not a folder; pass a folder of real {prep.media.noun} (the training set works)")
        if samples < 1:
            raise ConfigError(f"--calib-samples must be at least 1, got {samples}")
        paths = find_files(folder, flag="--calib-data", media=prep.media)
        step = max(1, len(paths) // samples)
        chosen = paths[::step][:samples]
        taken = set(chosen)
        rest = [p for p in paths if p not in taken]
        held = rest[:: max(1, len(rest) // samples)][:samples]
        if len(chosen) < MIN_CALIB_IMAGES:
            log.warning(
                "calibrating on only %d images from %s; ranges from fewer than %d images may not cover "
                "what the model meets (add images or raise --calib-samples)", len(chosen), folder, MIN_CALIB_IMAGES,
            )
        def load(ps):
            return np.stack([prep.load(p) for p in ps]).astype(np.float32) if ps else np.zeros((0, *prep.input_shape), np.float32)

        images, holdout = load(chosen), load(held)
        digest = hashlib.sha256(images.tobytes() + holdout.tobytes()).hexdigest()
        return cls(images, holdout, str(folder), digest)

    @property
    def check_images(self) -> np.ndarray:
        """Held-out images when there are enough, else the calibration images themselves."""
        return self.holdout if len(self.holdout) >= MIN_CALIB_IMAGES else self.images


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed images to check a low-precision model on (validation images, ideally), with
    their labels when they sit in folders named like the model's classes."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    sha256: str
    kind: str = "check"  # "check" (given as such), "held-out" or "calibration" (none could be held out)

    @classmethod
    def from_folder(cls, folder: Path, prep, classes: list[str], limit: int | None = None, flag: str = "--check-data") -> ImageSet:
        """As `bench --data` reads a folder: class folders give labels, a flat folder none."""
        from tldeploy.data.folders import load_inputs

        images, labels, _ = load_inputs(Path(folder), classes, prep, limit, flag=flag)
        return cls(images, labels, str(folder), hashlib.sha256(images.tobytes()).hexdigest())

    @classmethod
    def holdout_of(cls, calib: CalibrationSet) -> ImageSet:
        x = calib.check_images
        return cls(x, None, calib.source, hashlib.sha256(x.tobytes()).hexdigest(), "held-out" if x is calib.holdout else "calibration")

    def describe(self) -> str:
        what = {"check": "check", "held-out": "held-out calibration-folder", "calibration": "calibration (none held out)"}[self.kind]
        return f"{len(self.images)} {what} images from {self.source}"


# The guard's bar, by the images it checks on. Validation images are what the promise is about.
# Held-out calibration-folder images are easier than validation images (digits: held-out
# agreement 100% where validation agreement is 98.6%), so there every image must agree and the
# mean KL must stay under a margin. No held-out bar predicted >= 99% validation agreement for 7-
# and 8-bit weights alike on the digits model (validation KL at 99% was 0.004 with 8-bit weights,
# 0.017 with 7-bit), so this one is strict: it was not reached there with either width, and the
# guard warns the same way on both CPU classes (benchmarks/int8_guard.py).
CHECK_DEFAULTS = {"validation": (0.99, None), "held_out": (1.0, 2e-3)}


@dataclass
class QdqStats:
    quantize: int
    dequantize: int
    activation_zero_point_types: list[str]
    weight_zero_point_types: list[str]
    per_channel_weights: int
    all_zero_points_zero: bool

    def to_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class QuantResult:
    model: object  # onnx.ModelProto
    config: QuantConfig
    calibration: CalibrationSet
    float_units: list  # sensitivity.Unit kept in float, most sensitive first
    metrics: object  # sensitivity.TaskMetrics of the result on the check images
    acceptance: object  # sensitivity.Acceptance it was held to
    passed: bool
    history: list  # (units in float, TaskMetrics) of the search
    seconds: float
    stats: QdqStats
    plan: str | None = None  # the precision plan applied, if any
    float_regions: int = 0  # connected pieces the float units form (each costs a float/INT8 boundary)

    def summary(self) -> dict:
        m = self.metrics
        return {
            "flavour": self.config.flavour,
            "activations": f"{self.config.activation_type} {'symmetric' if self.config.activation_symmetric else 'asymmetric'}",
            "weights": f"int8 symmetric {'per-channel' if self.config.per_channel else 'per-tensor'}"
            + (", 7-bit (reduce_range)" if self.config.reduce_range else ""),
            "calibration": {"method": self.config.calib_method, "images": len(self.calibration.images),
                            "source": self.calibration.source, "sha256": self.calibration.sha256},
            "float_units": [{"name": u.name, "module": u.module, "short": u.short, "op": u.op, "nodes": list(u.nodes)}
                            for u in self.float_units],
            "plan": self.plan,
            "float_regions": self.float_regions,
            "check": {**m.to_dict(), "images": self.acceptance.images, "criterion": self.acceptance.to_dict(), "passed": self.passed,
                      "evaluated": "Q/DQ graph as written" if self.config.evaluated_as_written else "onnxruntime CPU kernels"},
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


def split_backbone_head(model, frontend: frozenset[str] | set[str] = frozenset()) -> tuple[list[str], list[str]]:
    """(convolutions of the backbone in graph order, names of head nodes); `frontend` nodes (an
    audio model's log-mel) belong to neither.

    The head is every node that does not feed the last convolution, except the activation right
    after it (so that convolution stays fused with its activation)."""
    nodes = list(model.graph.node)
    conv_idx = [i for i, n in enumerate(nodes) if n.op_type == "Conv" and n.name not in frontend]
    if not conv_idx:
        raise TldeployError("the ONNX graph has no Conv node; INT8 here quantizes convolutional backbones")
    producers = {o: n for n in nodes for o in n.output}
    last = nodes[conv_idx[-1]]
    keep, stack = {last.name}, list(last.input)
    while stack:
        t = stack.pop()
        n = producers.get(t)
        if n is not None and n.name not in keep:
            keep.add(n.name)
            stack.extend(n.input)
    consumers = [n for n in nodes if last.output[0] in n.input]
    if len(consumers) == 1 and consumers[0].op_type in ("Clip", "Relu"):
        keep.add(consumers[0].name)
    convs = [nodes[i].name for i in conv_idx]
    return convs, [n.name for n in nodes if n.name not in keep and n.name not in frontend]


def qdq_stats(model) -> QdqStats:
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nq = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    ndq = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    act, wt, per_channel, zero = set(), set(), 0, True
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or len(n.input) < 3 or n.input[2] not in inits:
            continue
        zp = numpy_helper.to_array(inits[n.input[2]])
        zero = zero and not np.any(zp)
        if n.input[0] in inits:  # a stored weight (or bias)
            if zp.dtype == np.int32:
                continue  # biases are int32 by definition
            wt.add(str(zp.dtype))
            per_channel += zp.size > 1
        else:
            act.add(str(zp.dtype))
    return QdqStats(nq, ndq, sorted(act), sorted(wt), per_channel, bool(zero))



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
    key = {"onnx": onnx_sha, "calib": calib.sha256, "method": cfg.calib_method,
           "symmetric": cfg.activation_symmetric, "activation": cfg.activation_type, "ort": ort_version}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class Quantizer:
    """Calibrates once (the ranges are cached across builds), then writes Q/DQ models with any
    set of nodes left in float. A context manager: it owns a temporary folder."""

    def __init__(self, onnx_path: Path, calib: CalibrationSet, cfg: QuantConfig, cache_dir: Path) -> None:
        self.onnx_path, self.calib, self.cfg, self.cache_dir = Path(onnx_path), calib, cfg, Path(cache_dir)
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Quantizer:
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from tldeploy._io import sha256_file
        from tldeploy.contract import read_contract
        from tldeploy.scopes import keep_name_scopes

        ort = _require_ort()
        contract = read_contract(self.onnx_path)
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
            quant_pre_process(str(self.onnx_path), str(self.pre), skip_symbolic_shape=True)
        self.float_model = onnx.load(str(self.pre))
        keep_name_scopes(onnx.load(str(self.onnx_path), load_external_data=False), self.float_model)
        self.front = frontend_nodes(self.float_model, contract)  # the log-mel stays float: power spectra span many decades
        _, self.head = split_backbone_head(self.float_model, self.front)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.cache = self.cache_dir / f"calib-{_cache_key(sha256_file(self.onnx_path), self.calib, self.cfg, ort.__version__)}.json"
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
            from tldeploy.engines.sensitivity import int8_units

            self._units = int8_units(self.float_model, self.full())
        return self._units

    def mix(self, keep_float: list[str] | tuple[str, ...] = ()):
        """The Q/DQ ModelProto with `keep_float` nodes also in float.

        Built from the float graph with the quantized units' Q/DQ copied in, not by quantizing
        again with `nodes_to_exclude`: ONNX Runtime's quantizer folds a Relu/Clip into the
        producer's quantization range and deletes it, so a float consumer would read the
        unclipped tensor (measured on the digits model: 59% agreement with one depthwise
        convolution excluded that way, 98% with its inputs simply left unquantized)."""
        from tldeploy.engines.sensitivity import mixed_int8

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

        cfg, images, name = self.cfg, self.calib.images, self.contract.input_name

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.i = 0

            def get_next(self):
                if self.i >= len(images):
                    return None
                self.i += CALIB_BATCH
                return {name: images[self.i - CALIB_BATCH : self.i]}

        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[cfg.calib_method]
        out = self.tmp / "full.onnx"
        hit = self.cache.is_file()
        target = self.cache if hit else self.tmp / "calib.json"
        with _quiet_root_logger():
            if not hit and cfg.calib_method == "entropy":
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


def rank_int8(q: Quantizer, images: np.ndarray):
    """(metrics of the fully quantized model, the unit effects ranked) on `images`."""
    from tldeploy.engines.sensitivity import rank, sweep_int8

    ev = q.evaluator(images)
    full = q.full()
    full_metrics = ev.metrics(full)
    return full_metrics, rank(sweep_int8(ev, q.float_model, full, q.units(), full_metrics))


def spread(x: np.ndarray, n: int) -> np.ndarray:
    """At most `n` rows of `x`, evenly spaced (inputs are sorted by class, so each keeps its share)."""
    return x if len(x) <= n else x[:: len(x) // n][:n]


def quantize_model(onnx_path: Path, calib: CalibrationSet, cfg: QuantConfig, cache_dir: Path,
                   check: ImageSet | None = None, plan=None, plan_path: Path | None = None) -> QuantResult:
    """The Q/DQ ModelProto of the float ONNX at `onnx_path`, calibrated on `calib`, with the units
    the plan names, or the guard chooses, left in float (see the module docstring)."""
    from tldeploy.contract import write_contract
    from tldeploy.engines.sensitivity import Acceptance, Unit, choose, float_regions

    t0 = time.perf_counter()
    held_out = check is None
    if held_out:
        check = ImageSet.holdout_of(calib)
        if len(calib.holdout) < MIN_CALIB_IMAGES:
            log.warning("too few images left in %s to hold out; the INT8 agreement is checked on the calibration images "
                        "(pass --check-data with validation images)", calib.source)
    agree_default, kl_default = CHECK_DEFAULTS["held_out" if held_out else "validation"]
    accept = Acceptance(cfg.min_agreement if cfg.min_agreement is not None else agree_default,
                        cfg.max_kl if cfg.max_kl is not None else kl_default, check.describe())
    if cfg.evaluated_as_written and cfg.flavour == "ort-x86":
        log.warning("8-bit INT8 weights on a CPU without VNNI: ONNX Runtime's kernels here saturate, so the check evaluates "
                    "the Q/DQ graph as written (what a VNNI CPU computes); run this artifact on a VNNI CPU, or build with --reduce-range")
    with Quantizer(onnx_path, calib, cfg, cache_dir) as q:
        ev = q.evaluator(check.images)

        def metrics_for(units) -> object:
            return ev.metrics(q.mix([n for u in units for n in u.nodes]))

        if plan is not None:
            plan.check_nodes(q.float_model, plan_path, onnx_path)
            units = [Unit.from_dict(u) for u in plan.units]
            model = q.mix(plan.nodes)
            m = ev.metrics(model)
            history, passed = [("plan", len(units), m)], accept.accepts(m)
            log.info("INT8 with the %d unit(s) of %s in float: top-1 agreement %.2f%%, KL %.2e on %s",
                     len(units), plan_path, 100 * m.top1_agreement, m.kl, accept.images)
        else:
            log.info("INT8 guard: ranking %d units on %d of %s, then checking against %s", len(q.units()),
                     min(cfg.rank_images, len(check.images)), accept.images, accept.describe())
            _, ranked = rank_int8(q, spread(check.images, cfg.rank_images))
            order = [e.unit for e in ranked]
            if cfg.keep_float == "auto":
                # Errors of early layers compound, which a one-at-a-time ranking underrates, so
                # graph order is tried beside it: the guard never needs more units than either.
                orders = {"ranked": order, "graph order": sorted(order, key=lambda u: u.index)}
                units, m, history, passed = choose(orders, metrics_for, accept, cfg.max_keep_float,
                                                   regions=lambda us: float_regions(q.float_model, us))
                if not passed:
                    log.warning("INT8 stayed short of %s (kept the mix with the lowest KL: top-1 agreement %.2f%%, KL %.2e "
                                "with %d unit(s) in float). Pass --check-data with validation images, try --calib-method percentile, or use --precision fp32",
                                accept.describe(), 100 * m.top1_agreement, m.kl, len(units))
            else:
                units = order[: int(cfg.keep_float)]
                m = metrics_for(units)
                history, passed = [("ranked", len(units), m)], accept.accepts(m)
            model = q.mix([n for u in units for n in u.nodes])
        contract = q.contract
        regions = float_regions(q.float_model, list(units)) if units else 0
    write_contract(model, _with_precision(contract, "int8", cfg))
    return QuantResult(model, cfg, calib, list(units), m, accept, passed, history, time.perf_counter() - t0, qdq_stats(model),
                       str(plan_path) if plan_path else None, regions)


def _with_precision(contract, precision: str, cfg: QuantConfig):
    from dataclasses import replace

    return replace(contract, precision=precision, extra={**contract.extra, "qdq_flavour": cfg.flavour})
