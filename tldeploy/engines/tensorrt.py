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


@dataclass
class Network:
    """A parsed TensorRT network and what must outlive it (the parser holds its weights)."""

    builder: trt.Builder
    network: trt.INetworkDefinition
    parser: trt.OnnxParser
    logger: trt.ILogger
    source: Path


class NetworkFromOnnx:
    """A lazy build step: the strongly typed TensorRT network of an ONNX file (the precision is the
    graph's), with the plugin libraries it needs loaded first."""

    def __init__(self, onnx_path: Path, plugins: tuple[Path, ...] = (), needs_plugin: bool = False) -> None:
        self.onnx_path, self.plugins, self.needs_plugin = Path(onnx_path), plugins, needs_plugin

    def __call__(self) -> Network:
        require_tensorrt()
        import tensorrt as trt

        if self.needs_plugin and not self.plugins:
            raise ConfigError(
                f"{self.onnx_path} has ChannelAttention plugin nodes; pass --plugins PATH to the library from "
                "cpp_plugins/ ('tldeploy plugins build'), or build the standard export"
            )
        logger = create_logger()
        load_plugins(self.plugins)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise TldeployError(f"TensorRT could not parse {self.onnx_path}: {errors}")
        return Network(builder, network, parser, logger, self.onnx_path)


class CreateConfig:
    """A build step: the builder config for a network (workspace, the batch profile of a dynamic
    input, version and hardware compatibility, the timing cache), from a `TrtConfig`."""

    def __init__(self, config: TrtConfig) -> None:
        self.config = config

    def check(self) -> trt.HardwareCompatibilityLevel:
        """What this TensorRT cannot do, refused before any parsing (the hardware compatibility level)."""
        return hardware_compatibility_level(self.config.hardware_compat)

    def __call__(self, net: Network) -> tuple[trt.IBuilderConfig, trt.ITimingCache | None]:
        import tensorrt as trt

        cfg, builder, network = self.config, net.builder, net.network
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
                log.info("%s has a fixed batch of %d; --batch does not apply", net.source, shape[0])
        config.add_optimization_profile(profile)
        if cfg.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
            if cfg.plugins:
                config.plugins_to_serialize = [str(p) for p in cfg.plugins]
        config.hardware_compatibility_level = self.check()
        cache = None
        if cfg.timing_cache is not None:
            blob = cfg.timing_cache.read_bytes() if cfg.timing_cache.is_file() else b""
            cache = config.create_timing_cache(blob)
            config.set_timing_cache(cache, ignore_mismatch=False)
        return config, cache


class EngineFromNetwork:
    """A lazy build step: the serialized engine and the engine inspector's layer information
    (JSON) of a network loader built with a config step; the timing cache is saved back."""

    def __init__(self, network: NetworkFromOnnx, config: CreateConfig) -> None:
        self.network, self.config = network, config

    def __call__(self) -> tuple[bytes, str]:
        require_tensorrt()
        self.config.check()  # refused before the ONNX is read
        net = self.network()
        config, cache = self.config(net)
        serialized = net.builder.build_serialized_network(net.network, config)
        if serialized is None:
            raise TldeployError(f"TensorRT failed to build an engine from {net.source}; see the TensorRT messages above")
        engine_bytes = bytes(memoryview(serialized))
        timing_cache = self.config.config.timing_cache
        if cache is not None and timing_cache is not None:
            _save_timing_cache(timing_cache, config.get_timing_cache())
        return engine_bytes, inspect_engine(net.logger, engine_bytes)


def EngineFromOnnx(onnx_path: Path, config: TrtConfig, needs_plugin: bool = False) -> EngineFromNetwork:  # noqa: N802 (a loader's name)
    """`EngineFromNetwork(NetworkFromOnnx(...), CreateConfig(...))`: nothing runs until it is called."""
    return EngineFromNetwork(NetworkFromOnnx(onnx_path, config.plugins, needs_plugin), CreateConfig(config))


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
