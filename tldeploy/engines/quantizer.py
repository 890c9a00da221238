"""The Quantizer: ONNX Runtime's `quantize_static` (Q/DQ format) run once per FP32 export, then Q/DQ
models written with any set of nodes left in float. The calibrated ranges are cached across builds
(keyed by the export, the calibration images, the method and the ONNX Runtime version); a
quantization-aware trained export brings its own ranges, written as that cache. Which nodes stay in
float, and why, is `quantize.py`'s business.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from tldeploy.contract import OnnxFile
from tldeploy.engines.calibration import CalibrationSet
from tldeploy.engines.graph import frontend_nodes, name_every_node
from tldeploy.engines.qdq import head_nodes
from tldeploy.engines.quant_config import QatRecord, QuantConfig
from tldeploy.errors import ConfigError, MissingDependencyError

CALIB_BATCH = 8


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
