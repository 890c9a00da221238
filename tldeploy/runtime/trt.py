"""What running and building TensorRT engines both need: the version check, the reason engines
cannot be built here, the GPU's description, a logger, plugin libraries and Dims as tuples.
`tensorrt` is imported only inside these functions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tldeploy.errors import ConfigError, MissingDependencyError, TldeployError

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

MIN_VERSION = (10, 3)  # JetPack 6.1 and 6.2 (Jetson Orin) ship TensorRT 10.3


def require_tensorrt() -> None:
    """Raise a MissingDependencyError naming the extra unless TensorRT >= 10.3 imports."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError("tensorrt", extra="tensorrt", purpose="TensorRT engines") from None
    version = tuple(int(p) for p in tensorrt.__version__.split(".")[:2])
    if version < MIN_VERSION:
        raise MissingDependencyError(
            f"tensorrt>={MIN_VERSION[0]}.{MIN_VERSION[1]} (found {tensorrt.__version__})", extra="tensorrt",
            purpose="strongly typed engines",
        )


def tensorrt_unavailable() -> str | None:
    """Why TensorRT engines cannot be built here, or None when they can."""
    try:
        require_tensorrt()
    except MissingDependencyError as e:
        return str(e)
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    except ImportError:
        return "PyTorch is needed to find the GPU"
    return None


def gpu_info() -> dict[str, str]:
    """GPU name, compute capability and CUDA version, as far as PyTorch can tell."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {}
        major, minor = torch.cuda.get_device_capability()
        return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}", "cuda": str(torch.version.cuda)}
    except Exception:  # no driver, broken install: the record just says less
        return {}


def create_logger() -> trt.ILogger:
    """A TensorRT logger that forwards to Python logging."""
    import tensorrt as trt

    class Forward(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            level = {
                trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR,
                trt.ILogger.Severity.ERROR: logging.ERROR,
                trt.ILogger.Severity.WARNING: logging.WARNING,
            }.get(severity, logging.DEBUG)
            log.log(level, "TensorRT: %s", msg)

    return Forward()


HARDWARE_COMPAT = ("none", "ampere+", "same-compute-capability")  # --hardware-compat


def hardware_compatibility_level(name: str) -> trt.HardwareCompatibilityLevel:
    """The level `--hardware-compat NAME` asks for, chosen by what this TensorRT has rather than by
    its version number: SAME_COMPUTE_CAPABILITY came in 10.9 (10.3 and 10.8 lack it)."""
    import tensorrt as trt

    levels = {
        "none": trt.HardwareCompatibilityLevel.NONE,
        "ampere+": trt.HardwareCompatibilityLevel.AMPERE_PLUS,
        "same-compute-capability": getattr(trt.HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY", None),
    }
    level = levels[name]
    if level is None:
        raise ConfigError(
            f"--hardware-compat {name} needs TensorRT >= 10.9 (HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY; "
            f"this is {trt.__version__}); use --hardware-compat ampere+ or none, or a newer TensorRT"
        )
    return level


def dims_tuple(dims: trt.Dims) -> tuple[int, ...]:
    """TensorRT Dims behave like tuples at run time; this says so to the type checker too."""
    return tuple(dims[i] for i in range(len(dims)))


def load_plugins(plugins: tuple[Path, ...]) -> None:
    import tensorrt as trt

    registry = trt.get_plugin_registry()
    for lib in plugins:
        if not Path(lib).is_file():
            raise ConfigError(f"--plugins {lib} does not exist; build it with 'tldeploy plugins build' (cpp_plugins/)")
        if registry.load_library(str(lib)) is None:
            raise TldeployError(f"TensorRT could not load the plugin library {lib}; was it built for this TensorRT version?")
