"""INT8 by explicit quantization: a Q/DQ ONNX calibrated on real images with ONNX Runtime's
quantization tools, in the flavour the target runs fast and correctly.

Two things are ours, on top of `onnxruntime.quantization.quantize_static`:

- what stays float: the CAM head and the softmax always do (the CAM's Gather of classifier
  rows breaks per-axis Q/DQ, and the head is a sliver of the compute), and
- an accuracy guard: with `keep_float="auto"` the first convolutions (counted from the input)
  are kept in float one by one until the INT8 model's top-1 agrees with the float model on the
  images held out from calibration at least `min_agreement` of the time. Calibration runs once; the ranges are
  cached, so each step only re-writes the graph.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tldeploy.build.graph import frontend_nodes
from tldeploy.errors import ConfigError, DataError, MissingDependencyError, TldeployError

log = logging.getLogger(__name__)

CALIB_METHODS = ("minmax", "entropy", "percentile")
FLAVOURS = ("tensorrt", "ort-x86")
MIN_CALIB_IMAGES = 32
CALIB_BATCH = 8


def cpu_has_vnni() -> bool:
    """True when this x86 CPU has a VNNI dot-product instruction (Linux /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


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
    keep_float: int | str = "auto"  # leading convolutions kept in float: a number, or "auto"
    # auto: top-1 agreement with the float model to reach on held-out images. Images from the
    # training distribution sit far from decision boundaries and overstate it (digits: 99.6% on
    # held-out training images, 97.5% on the validation set), so by default all of them must agree.
    min_agreement: float = 1.0
    max_keep_float: int = 12  # auto: give up (with a warning) after this many

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
        if not 0.0 < self.min_agreement <= 1.0:
            raise ConfigError(f"--int8-min-agreement must be in (0, 1], got {self.min_agreement}")
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
        from tldeploy.pipeline.data import find_files

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
    keep_float: int
    agreement: float
    history: list[tuple[int, float]]  # (leading convolutions in float, top-1 agreement)
    seconds: float
    stats: QdqStats

    def summary(self) -> dict:
        return {
            "flavour": self.config.flavour,
            "activations": f"{self.config.activation_type} {'symmetric' if self.config.activation_symmetric else 'asymmetric'}",
            "weights": f"int8 symmetric {'per-channel' if self.config.per_channel else 'per-tensor'}"
            + (", 7-bit (reduce_range)" if self.config.reduce_range else ""),
            "calibration": {"method": self.config.calib_method, "images": len(self.calibration.images),
                            "check_images": len(self.calibration.check_images), "source": self.calibration.source,
                            "sha256": self.calibration.sha256},
            "keep_float_convs": self.keep_float,
            "check_top1_agreement": self.agreement,
            "search": [{"keep_float_convs": k, "top1_agreement": a} for k, a in self.history],
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


def _session(model_bytes: bytes, simulate: bool):
    ort = _require_ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if simulate:
        # Q/DQ evaluated as written (float arithmetic on quantized values): what an engine that
        # computes exactly in int8/int32 would produce, without ORT's CPU-specific kernels.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _top1(sess, images: np.ndarray) -> np.ndarray:
    from tldeploy.export.onnx_export import run_batched

    return run_batched(sess, images, 16)["logits"].argmax(1)


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs advice and per-channel scale notes on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _cache_key(onnx_sha: str, calib: CalibrationSet, cfg: QuantConfig, ort_version: str) -> str:
    key = {"onnx": onnx_sha, "calib": calib.sha256, "method": cfg.calib_method,
           "symmetric": cfg.activation_symmetric, "activation": cfg.activation_type, "ort": ort_version}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def quantize_model(onnx_path: Path, calib: CalibrationSet, cfg: QuantConfig, cache_dir: Path) -> QuantResult:
    """The Q/DQ ModelProto of the float ONNX at `onnx_path`, calibrated on `calib`."""
    import onnx

    ort = _require_ort()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tldeploy.export.contract import read_contract, write_contract
    from tldeploy.export.onnx_export import sha256_file

    t0 = time.perf_counter()
    contract = read_contract(onnx_path)
    if contract.attention == "plugin":
        raise ConfigError(
            f"{onnx_path} has ChannelAttention plugin nodes, which ONNX Runtime cannot run to calibrate; "
            "build INT8 from the standard export (without --attention-plugin)"
        )
    if contract.precision != "fp32":
        raise ConfigError(f"{onnx_path} is a {contract.precision} export; INT8 calibrates an FP32 export")
    images = calib.images

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= len(images):
                return None
            self.i += CALIB_BATCH
            return {contract.input_name: images[self.i - CALIB_BATCH : self.i]}

    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir / f"calib-{_cache_key(sha256_file(onnx_path), calib, cfg, ort.__version__)}.json"
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calib_method]
    with tempfile.TemporaryDirectory(prefix="tldeploy-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        with _quiet_root_logger():
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        float_model = onnx.load(str(pre))
        front = frontend_nodes(float_model, contract)  # the log-mel stays float: power spectra span many decades
        convs, head = split_backbone_head(float_model, front)
        simulate = cfg.flavour == "tensorrt"  # TensorRT's INT8 cannot run here; evaluate the Q/DQ arithmetic
        check = calib.check_images
        if check is calib.images:
            log.warning("too few images left in %s to hold out; the INT8 agreement is checked on the calibration images", calib.source)
        reference = _top1(_session(float_model.SerializeToString(), simulate=False), check)

        def quantize(keep: int):
            out = Path(tmp) / f"q{keep}.onnx"
            hit = cache.is_file()
            target = cache if hit else Path(tmp) / "calib.json"
            with _quiet_root_logger():
                quantize_static(
                        str(pre), str(out), None if hit else Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8 if cfg.activation_type == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                    nodes_to_exclude=head + sorted(front) + convs[:keep], calibrate_method=method, calibration_cache_path=str(target),
                    extra_options={"ActivationSymmetric": cfg.activation_symmetric, "WeightSymmetric": True},
                )
            if not hit:  # publish the ranges only once complete: a cache is never half-written
                target.replace(cache)
            model = onnx.load(str(out))
            agree = float(np.mean(_top1(_session(model.SerializeToString(), simulate), check) == reference))
            return model, agree

        if cfg.keep_float == "auto":
            history: list[tuple[int, float]] = []
            best = None
            for keep in range(0, min(cfg.max_keep_float, len(convs)) + 1):
                model, agree = quantize(keep)
                history.append((keep, agree))
                log.info("  INT8 with %d leading convolution(s) in float: top-1 agreement %.2f%% on %d held-out images", keep, 100 * agree, len(check))
                if best is None or agree > best[2]:
                    best = (model, keep, agree)
                if agree >= cfg.min_agreement:
                    break
            else:
                log.warning(
                    "INT8 top-1 agreement stayed below %.1f%% (best %.2f%% with %d convolution(s) in float); "
                    "keeping the best. Try --calib-method percentile, more --calib-samples, or --precision fp32",
                    100 * cfg.min_agreement, 100 * best[2], best[1],
                )
            model, keep, agree = best
        else:
            keep = min(int(cfg.keep_float), len(convs))
            model, agree = quantize(keep)
            history = [(keep, agree)]
    write_contract(model, _with_precision(contract, "int8", cfg))
    return QuantResult(model, cfg, calib, keep, agree, history, time.perf_counter() - t0, qdq_stats(model))


def _with_precision(contract, precision: str, cfg: QuantConfig):
    from dataclasses import replace

    return replace(contract, precision=precision, extra={**contract.extra, "qdq_flavour": cfg.flavour})
