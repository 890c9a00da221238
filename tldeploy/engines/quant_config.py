"""How to quantize: the INT8 options of a build in any flavour (`Int8Options`), a flavour's
Q/DQ configuration (`QuantConfig`, by named constructor), and the record a quantization-aware
trained model carries (`QatRecord`). `quantize.py` does the quantizing."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tldeploy._io import check_version
from tldeploy.engines.calibration import CHECK_DEFAULTS
from tldeploy.engines.capabilities import CALIB_METHODS
from tldeploy.errors import ConfigError

if TYPE_CHECKING:
    from tldeploy.parity import Tolerance

log = logging.getLogger(__name__)

FLAVOURS = ("tensorrt", "ort-x86")
PRESETS = ("auto", "none")  # --int8-preset: auto applies the transformer preset (quantize.transformer_preset)


def cpu_has_vnni() -> bool:
    """True when this x86 CPU has a VNNI dot-product instruction (Linux /proc/cpuinfo)."""
    from tldeploy.runtime.host import has_vnni

    return has_vnni()


@dataclass(frozen=True)
class Int8Options:
    """What an INT8 build asks of quantization, whatever Q/DQ flavour its backend takes: turned into
    that flavour's `QuantConfig` by `quant_config(backend)` once the backend is known (`--backend
    auto` resolves at build time). From the command line: `Int8Options.from_cli(...)`."""

    calib_method: str = "minmax"
    calib_samples: int = 256
    keep_float: int | str = "auto"  # units kept in float, most sensitive first: a number, or "auto"
    # auto: top-1 agreement with the float model to reach on the check images; None: the default
    # for the kind of images (CHECK_DEFAULTS).
    min_agreement: float | None = None
    max_kl: float | None = None  # auto: mean KL to stay under as well; None: the default for the images
    max_keep_float: int = 16  # auto: give up (with a warning) after this many units
    rank_images: int = 32  # images the ranking sweep runs on (the check itself uses all): 2 runs per unit
    preset: str = "auto"  # auto: the transformer preset where the backbone has LayerNorms or Softmaxes; none: every unit quantized
    # ONNX Runtime x86's 7-bit weights as asked for (QuantConfig.reduce_range is what is written):
    # None = on for CPUs without VNNI, or as a quantization-aware trained export was trained.
    # TensorRT's flavour has no such choice and ignores it.
    reduce_range: bool | None = None

    def __post_init__(self) -> None:
        if self.calib_method not in CALIB_METHODS:
            raise ConfigError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {self.calib_method!r}")
        if self.calib_samples < 1:
            raise ConfigError(f"--calib-samples must be at least 1, got {self.calib_samples}")
        if not (self.keep_float == "auto" or (isinstance(self.keep_float, int) and self.keep_float >= 0)):
            raise ConfigError(f"--int8-keep-float must be 'auto' or a count >= 0, got {self.keep_float!r}")
        if self.min_agreement is not None and not 0.0 < self.min_agreement <= 1.0:
            raise ConfigError(f"--int8-min-agreement must be in (0, 1], got {self.min_agreement}")
        if self.preset not in PRESETS:
            raise ConfigError(f"--int8-preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.max_kl is not None and self.max_kl < 0:
            raise ConfigError(f"--int8-max-kl must be >= 0, got {self.max_kl}")

    @classmethod
    def from_cli(cls, keep_float: str = "auto", **kw) -> Int8Options:
        """The options of `tldeploy build`'s flags: --int8-keep-float comes as text ("auto" or a count)."""
        if keep_float == "auto":
            return cls(keep_float="auto", **kw)
        try:
            count = int(keep_float)
        except ValueError:
            raise ConfigError(f"--int8-keep-float must be 'auto' or a number, got {keep_float!r}") from None
        return cls(keep_float=count, **kw)

    def tolerance(self, images: str) -> Tolerance:
        """The guard's bar: the agreement and KL asked for, else the defaults for the kind of check
        `images` ("validation" or "held_out", CHECK_DEFAULTS)."""
        from tldeploy.parity import Tolerance

        agree, kl = CHECK_DEFAULTS[images]
        return Tolerance(min_top1_agreement=agree if self.min_agreement is None else self.min_agreement,
                         max_kl=kl if self.max_kl is None else self.max_kl)

    def quant_config(self, backend: str) -> QuantConfig:
        """These options in the Q/DQ flavour `backend` ("tensorrt" or "ort") runs."""
        return QuantConfig.tensorrt(self) if backend == "tensorrt" else QuantConfig.ort_x86(self)


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize: a Q/DQ flavour and the build's `Int8Options`. Build one with
    `QuantConfig.tensorrt()` or `QuantConfig.ort_x86()` (keywords: Int8Options fields), or
    `Int8Options.quant_config(backend)`."""

    flavour: str
    activation_type: str  # "int8" or "uint8"
    activation_symmetric: bool
    per_channel: bool
    reduce_range: bool  # 7-bit weights, as written
    options: Int8Options = field(default_factory=Int8Options)

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ConfigError(f"Q/DQ flavour must be one of {', '.join(FLAVOURS)}, got {self.flavour!r}")
        if self.activation_type not in ("int8", "uint8"):
            raise ConfigError(f"activation type must be int8 or uint8, got {self.activation_type!r}")
        if self.flavour == "tensorrt" and (self.activation_type != "int8" or not self.activation_symmetric):
            raise ConfigError("TensorRT takes only symmetric signed INT8 activations (zero points 0)")

    @classmethod
    def tensorrt(cls, options: Int8Options | None = None, **kw) -> QuantConfig:
        # TensorRT only accepts symmetric signed INT8 (zero point 0) and wants per-channel weights;
        # its kernels accumulate in int32, so there is no reason to give up a weight bit.
        return cls(flavour="tensorrt", activation_type="int8", activation_symmetric=True, per_channel=True, reduce_range=False,
                   options=_options(options, kw))

    @classmethod
    def ort_x86(cls, options: Int8Options | None = None, **kw) -> QuantConfig:
        # ORT's x86 kernels are fast with unsigned activations and signed weights (U8S8); signed
        # activations ran ~3x slower on this AVX2 CPU. Without VNNI, AVX2 adds pairs of u8*s8
        # products in int16 and saturates: 7-bit weights (reduce_range) avoid it (measured on the
        # digits model: top-1 0.55 with 8-bit weights, 0.89 with 7-bit, both all-INT8).
        opts = _options(options, kw)
        rr = (not cpu_has_vnni()) if opts.reduce_range is None else opts.reduce_range
        return cls(flavour="ort-x86", activation_type="uint8", activation_symmetric=False, per_channel=True, reduce_range=rr, options=opts)

    @property
    def evaluated_as_written(self) -> bool:
        """True when this CPU's ONNX Runtime kernels would not compute what the target computes,
        so the guard evaluates the Q/DQ graph as written: TensorRT's INT8 (it cannot run here), and
        8-bit weights on a CPU without VNNI (whose kernels saturate where a VNNI CPU's do not)."""
        return self.flavour == "tensorrt" or (not self.reduce_range and not cpu_has_vnni())


def _options(options: Int8Options | None, kw: dict) -> Int8Options:
    """`options`, or the Int8Options that the keywords of a named constructor spell out."""
    if options is not None and kw:
        raise TypeError(f"pass Int8Options or its fields as keywords, not both (got {', '.join(kw)})")
    return options if options is not None else Int8Options(**kw)


QAT_KEY = "qat"  # the contract entry (and checkpoint metadata) of a quantization-aware trained model
QAT_VERSION = 1


@dataclass(frozen=True)
class QatRecord:
    """What `tldeploy qat` trained for, carried from its checkpoint through the export's contract
    to the build: the flavour and weight width, every calibrated range (the trained ones
    replaced), and the nodes it computed in float. The build writes Q/DQ from these ranges
    instead of calibrating."""

    flavour: str
    reduce_range: bool
    ranges: dict[str, tuple[float, float]]
    float_nodes: tuple[str, ...]
    info: dict = field(default_factory=dict)  # epochs, validation, source: recorded, not interpreted

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ConfigError(f"QAT record: flavour must be one of {', '.join(FLAVOURS)}, got {self.flavour!r}")
        for name, (lo, hi) in self.ranges.items():
            if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
                raise ConfigError(f"QAT record: range of {name} is not a finite [lo, hi] ({lo}, {hi})")

    def to_dict(self) -> dict:
        return {"format_version": QAT_VERSION, "flavour": self.flavour, "reduce_range": self.reduce_range,
                "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()},
                "float_nodes": list(self.float_nodes), **self.info}

    @classmethod
    def from_dict(cls, d: dict, source: str) -> QatRecord:
        check_version(d, source, "QAT record", (QAT_VERSION,), hint="run tldeploy qat again", error=ConfigError)
        try:
            ranges = {str(k): (float(v[0]), float(v[1])) for k, v in d["ranges"].items()}
            nodes = tuple(str(n) for n in d.get("float_nodes", []))
            info = {k: v for k, v in d.items() if k not in ("format_version", "flavour", "reduce_range", "ranges", "float_nodes")}
            return cls(str(d["flavour"]), bool(d["reduce_range"]), ranges, nodes, info)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise ConfigError(f"{source} has a broken QAT record ({type(e).__name__}: {e}); re-run tldeploy qat and export again") from None

    @classmethod
    def from_contract(cls, contract, source: str) -> QatRecord | None:
        text = contract.extra.get(QAT_KEY)
        if not text:
            return None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source} has a broken QAT record ({e}); re-export it") from None
        return cls.from_dict(doc, source)

    def quant_config(self, options: Int8Options | None = None) -> QuantConfig:
        """The quantization QAT simulated, with the build's `options` (its weight width: as trained)."""
        options = options or Int8Options()
        if self.flavour == "tensorrt":
            return QuantConfig.tensorrt(options)
        return QuantConfig.ort_x86(replace(options, reduce_range=self.reduce_range))

    def check_target(self, cfg: QuantConfig, source: str) -> None:
        """A build for another flavour or weight width would not compute what QAT trained."""
        if cfg.flavour != self.flavour or (cfg.flavour == "ort-x86" and cfg.reduce_range != self.reduce_range):
            trained = f"{self.flavour}{' with 7-bit weights' if self.reduce_range and self.flavour == 'ort-x86' else ''}"
            asked = f"{cfg.flavour}{' with 7-bit weights' if cfg.reduce_range and cfg.flavour == 'ort-x86' else ''}"
            backend = "tensorrt" if self.flavour == "tensorrt" else "ort"
            raise ConfigError(f"{source} was quantization-aware trained for {trained}, not {asked}; build it with --backend {backend}"
                              f"{(' --reduce-range' if self.reduce_range else ' --no-reduce-range') if backend == 'ort' else ''}, "
                              f"or run tldeploy qat --flavour {'tensorrt' if cfg.flavour == 'tensorrt' else 'ort-x86'} for that target")

    @classmethod
    def for_int8(cls, contract, source: str, backend: str, reduce_range: bool | None, calib_data: Path | None) -> QatRecord | None:
        """The QAT record of an INT8 build's or diagnosis's input, refused for a target it was not
        trained for (`reduce_range` None: as trained); None for a float-trained export, which
        needs calibration images."""
        qat = cls.from_contract(contract, source)
        if qat is None:
            if calib_data is None:
                raise ConfigError("--precision int8 needs --calib-data DIR: real images to calibrate on (the training folder works)")
            return None
        width = qat.reduce_range if reduce_range is None else reduce_range
        qat.check_target(Int8Options(reduce_range=width).quant_config(backend), source)
        if calib_data is not None:
            log.info("--calib-data %s ignored: %s was quantization-aware trained, its ranges are built in", calib_data, source)
        return qat

    def write_cache(self, path: Path) -> None:
        """The ranges as ONNX Runtime's calibration cache, which quantize_static reads instead of calibrating."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

        data = {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in self.ranges.items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)


def read_ranges(path: Path) -> dict[str, tuple[float, float]]:
    """{tensor: (lo, hi)} of an ONNX Runtime calibration cache."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    return {k: (float(np.asarray(v.range_value[0]).item()), float(np.asarray(v.range_value[1]).item()))
            for k, v in load_tensors_data(path).data.items()}


