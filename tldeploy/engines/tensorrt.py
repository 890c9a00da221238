"""TensorRT engines from ONNX, for TensorRT 10.3+ and 11.x.

Every engine is a strongly typed network: the precision is the ONNX file's (FP32, FP16, or INT8
Q/DQ), never a builder flag. TensorRT 11 removed the FP16/INT8 flags and the calibrators and
10.12 deprecated them, so this one code path serves both versions. `tensorrt` is imported only
inside these functions; importing this module never needs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tldeploy.errors import ConfigError, TldeployError
from tldeploy.runtime.trt import (
    HARDWARE_COMPAT,
    create_logger,
    dims_tuple,
    gpu_info,
    hardware_compatibility_level,
    load_plugins,
    require_tensorrt,
)

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class BatchProfile:
    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(f"--batch must be MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {self.min},{self.opt},{self.max}")

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        try:
            parts = [int(p) for p in text.split(",")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            return cls(parts[0], parts[0], parts[0])
        if len(parts) != 3:
            raise ConfigError(f"--batch must be MIN,OPT,MAX (or one size), got {text!r}")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.min},{self.opt},{self.max}"


@dataclass(frozen=True)
class TrtConfig:
    batch: BatchProfile = BatchProfile()
    workspace_mib: int = 4096
    timing_cache: Path | None = None
    plugins: tuple[Path, ...] = ()
    version_compatible: bool = False
    hardware_compat: str = "none"

    def __post_init__(self) -> None:
        if self.workspace_mib < 1:
            raise ConfigError(f"--workspace must be at least 1 MiB, got {self.workspace_mib}")
        if self.hardware_compat not in HARDWARE_COMPAT:
            raise ConfigError(f"--hardware-compat must be one of {', '.join(HARDWARE_COMPAT)}, got {self.hardware_compat!r}")


class EngineFromOnnx:
    """A lazy build step: nothing runs until it is called. Returns (serialized engine, layer info JSON)."""

    def __init__(self, onnx_path: Path, config: TrtConfig, needs_plugin: bool = False) -> None:
        self.onnx_path, self.config, self.needs_plugin = Path(onnx_path), config, needs_plugin

    def __call__(self) -> tuple[bytes, str]:
        require_tensorrt()
        import tensorrt as trt

        cfg = self.config
        if self.needs_plugin and not cfg.plugins:
            raise ConfigError(
                f"{self.onnx_path} has ChannelAttention plugin nodes; pass --plugins PATH to the library from "
                "cpp_plugins/ ('tldeploy plugins build'), or build the standard export"
            )
        level = hardware_compatibility_level(cfg.hardware_compat)  # refused before any parsing where this TensorRT lacks it
        logger = create_logger()
        load_plugins(cfg.plugins)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise TldeployError(f"TensorRT could not parse {self.onnx_path}: {errors}")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer information for the inspector
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = dims_tuple(tensor.shape)
            if shape[0] == -1:
                b = cfg.batch
                profile.set_shape(tensor.name, *(trt.Dims([n, *shape[1:]]) for n in (b.min, b.opt, b.max)))
            elif (cfg.batch.min, cfg.batch.max) != (shape[0], shape[0]):
                log.info("%s has a fixed batch of %d; --batch does not apply", self.onnx_path, shape[0])
        config.add_optimization_profile(profile)
        if cfg.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
            if cfg.plugins:
                config.plugins_to_serialize = [str(p) for p in cfg.plugins]
        config.hardware_compatibility_level = level
        cache = None
        if cfg.timing_cache is not None:
            blob = cfg.timing_cache.read_bytes() if cfg.timing_cache.is_file() else b""
            cache = config.create_timing_cache(blob)
            config.set_timing_cache(cache, ignore_mismatch=False)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise TldeployError(f"TensorRT failed to build an engine from {self.onnx_path}; see the TensorRT messages above")
        engine_bytes = bytes(memoryview(serialized))
        if cache is not None and cfg.timing_cache is not None:
            _save_timing_cache(cfg.timing_cache, config.get_timing_cache())
        return engine_bytes, inspect_engine(logger, engine_bytes)


def _save_timing_cache(path: Path, cache: trt.ITimingCache) -> None:
    from tldeploy._io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(memoryview(cache.serialize())))


def inspect_engine(logger: trt.ILogger, engine_bytes: bytes) -> str:
    """The engine inspector's per-layer information (JSON text)."""
    import tensorrt as trt

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise TldeployError("TensorRT could not deserialize the engine it just built")
    inspector = engine.create_engine_inspector()
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def trt_version() -> str | None:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        return None


def default_timing_cache() -> Path:
    """One timing cache per TensorRT version and GPU, reused across builds (a cache from another
    version or GPU would be rejected anyway)."""
    from tldeploy.engines.artifacts import cache_dir

    info = gpu_info()
    tag = f"trt{trt_version()}-sm{info.get('compute_capability', 'x').replace('.', '')}"
    return cache_dir() / "tensorrt" / f"timing-{tag}.cache"
