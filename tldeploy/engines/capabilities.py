"""Which backend builds which precision on which device: one typed table drives validation,
the defaults and `tldeploy build --help`. An impossible request is an error, never a silent
downgrade (a tool that measures precision must not quietly build something else)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tldeploy.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "int8")
BACKENDS = ("tensorrt", "ort")
DEVICES = ("cpu", "cuda")
CALIB_METHODS = ("minmax", "entropy", "percentile")  # INT8 calibration, ONNX Runtime's calibrators


@dataclass(frozen=True)
class Capability:
    backend: str
    device: str
    precisions: tuple[str, ...]
    suffix: str  # the artifact's file suffix
    extra: str | None  # pip extra that brings the backend's runtime
    note: str
    precision_notes: tuple[tuple[str, str], ...] = ()  # (precision, how it is built), where it needs saying

    def describe(self, precision: str) -> str:
        """What a build of `precision` makes, for the build log."""
        return dict(self.precision_notes).get(precision, self.note)


CAPABILITIES: tuple[Capability, ...] = (
    Capability("tensorrt", "cuda", ("fp32", "fp16", "int8"), ".engine", "tensorrt",
               "strongly typed engine from the FP32, FP16 or Q/DQ ONNX"),
    Capability("ort", "cpu", ("fp32", "int8"), ".onnx", None,
               "CPUExecutionProvider; INT8 as U8S8 Q/DQ (FP16 has no fast CPU kernels)",
               (("fp32", "CPUExecutionProvider, float32"), ("int8", "CPUExecutionProvider, INT8 as U8S8 Q/DQ"))),
    # The CUDA provider runs Q/DQ models by dequantizing to float, so INT8 there would not be INT8.
    Capability("ort", "cuda", ("fp32", "fp16"), ".onnx", "gpu", "CUDAExecutionProvider"),
)


def find_capability(backend: str, device: str) -> Capability | None:
    return next((c for c in CAPABILITIES if c.backend == backend and c.device == device), None)


def default_device(backend: str) -> str:
    return "cuda" if backend == "tensorrt" else "cpu"


def check_target(precision: str, backend: str, device: str) -> Capability:
    """The capability that builds `precision` with `backend` on `device`, or a ConfigError
    that lists what is possible instead."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    cap = find_capability(backend, device)
    if cap is None:
        devices = [c.device for c in CAPABILITIES if c.backend == backend]
        raise ConfigError(f"--backend {backend} runs on --device {' or '.join(devices)}, not {device}")
    if precision not in cap.precisions:
        able = [f"--backend {c.backend} --device {c.device}" for c in CAPABILITIES if precision in c.precisions]
        raise ConfigError(
            f"{backend} on {device} cannot build {precision} (it builds {', '.join(cap.precisions)}); "
            f"{precision} is built by: {'; '.join(able)}"
        )
    return cap


@dataclass(frozen=True)
class PrecisionTarget:
    """What a build makes, or a diagnosis measures the numerics of: a precision for a backend on a
    device, checked against CAPABILITIES where it is made. `backend="auto"` and `device=None` are
    left for the build to resolve (`resolved`), which checks the named target then."""

    precision: str = "fp32"
    backend: str = "auto"  # "auto": TensorRT where it and a GPU exist, else ONNX Runtime (builder.resolve_backend)
    device: str | None = None  # None: the backend's default, cuda for TensorRT, cpu for ONNX Runtime

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.backend not in ("auto", *BACKENDS):
            raise ConfigError(f"--backend must be one of auto, {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.device is not None and self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.backend != "auto" and self.device is not None:
            check_target(self.precision, self.backend, self.device)

    def check_calib_data(self, calib_data: object) -> None:
        """Only INT8 calibrates: calibration images for another precision are a mistake, not a no-op."""
        if calib_data is not None and self.precision != "int8":
            raise ConfigError(f"--calib-data is for --precision int8; {self.precision} needs no calibration")

    def resolved(self, backend: str) -> PrecisionTarget:
        """This target built with `backend` (what "auto" resolved to), on its device or the backend's
        default; checked against the table, so `capability` names its row."""
        if self.backend not in ("auto", backend):
            raise ValueError(f"a --backend {self.backend} target cannot resolve to {backend}")
        return replace(self, backend=backend, device=self.device or default_device(backend))

    @property
    def capability(self) -> Capability:
        """The table's row that builds this (resolved) target."""
        if self.backend == "auto" or self.device is None:
            raise ValueError(f"{self} is not resolved to a backend and a device; call resolved() first")
        return check_target(self.precision, self.backend, self.device)


def capability_table() -> str:
    """The table as text, for --help and the README."""
    rows = [f"{c.backend:<9} {c.device:<5} {','.join(c.precisions):<15} {c.note}" for c in CAPABILITIES]
    return "\n".join([f"{'backend':<9} {'device':<5} {'precisions':<15} notes", *rows])
