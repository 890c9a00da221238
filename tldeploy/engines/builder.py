"""`tldeploy build`: an exported ONNX file -> a deployable artifact and its build record.

    tldeploy build model.onnx --precision fp16                   # TensorRT engine (needs TensorRT + GPU)
    tldeploy build model.onnx --precision int8 --backend ort --calib-data data/train

Backends and precisions follow `capabilities.CAPABILITIES`. Each artifact gets a JSON record beside
it (ARTIFACT.json) whose cache key covers the input ONNX, precision, backend, device, calibration
set, quantization options, tool versions, GPU and engine options: an unchanged build is reused,
anything else needs --force.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tldeploy._io import atomic_path, now, probe_output
from tldeploy.contract import Contract, OnnxFile
from tldeploy.engines import artifacts
from tldeploy.engines.calibration import CalibrationSet
from tldeploy.engines.capabilities import PrecisionTarget
from tldeploy.engines.inspector import summarize_layers
from tldeploy.engines.quant_config import Int8Options, QuantConfig
from tldeploy.engines.tensorrt import TrtConfig
from tldeploy.errors import ConfigError, OutputExistsError, TldeployError
from tldeploy.records import BuildRecord
from tldeploy.runtime import host
from tldeploy.runtime.runners import ENGINE_SUFFIXES, read_sidecar, sidecar_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    onnx: Path
    target: PrecisionTarget = field(default_factory=PrecisionTarget)  # precision, backend (auto by default), device
    output: Path | None = None  # default: beside the ONNX, e.g. model.int8.ort.onnx, model.fp16.engine
    calib_data: Path | None = None
    int8: Int8Options = field(default_factory=Int8Options)  # how --precision int8 quantizes, in any flavour; other precisions ignore it
    check_data: Path | None = None  # images the model was not trained on (validation), to hold INT8 to
    precision_plan: Path | None = None  # units to keep in higher precision, from `tldeploy diagnose`
    trt: TrtConfig = field(default_factory=TrtConfig)
    force: bool = False

    def __post_init__(self) -> None:
        self.target.check_calib_data(self.calib_data)
        if self.precision == "fp32" and self.precision_plan is not None:
            raise ConfigError("--precision-plan is for --precision int8 or fp16; an FP32 build keeps everything in float")

    @property
    def precision(self) -> str:
        """The target's precision (the target owns it; read throughout the build)."""
        return self.target.precision


@dataclass
class BuildResult:
    path: Path
    record: BuildRecord
    reused: bool
    seconds: float


def resolve_backend(precision: str, backend: str) -> str:
    if backend != "auto":
        return backend
    from tldeploy.runtime.trt import tensorrt_unavailable

    if precision == "fp16":
        return "tensorrt"  # FP16 is a GPU precision; the error below names the alternatives if it is missing
    reason = tensorrt_unavailable()
    if reason is None:
        return "tensorrt"
    log.info("building for ONNX Runtime on CPU (TensorRT: %s); pass --backend to choose", reason)
    return "ort"


def default_output(onnx: Path, precision: str, backend: str, device: str) -> Path:
    stem = onnx.name[: -len(".onnx")] if onnx.name.endswith(".onnx") else onnx.stem
    if backend == "tensorrt":
        return onnx.with_name(f"{stem}.{precision}.engine")
    return onnx.with_name(f"{stem}.{precision}.ort{'-cuda' if device == 'cuda' else ''}.onnx")


def _require_runtime(backend: str, device: str, precision: str) -> None:
    if backend == "tensorrt":
        from tldeploy.runtime.trt import tensorrt_unavailable

        reason = tensorrt_unavailable()
        if reason:
            alt = ("--backend ort --device cuda (needs onnxruntime-gpu); on a CPU, build fp32 or int8 with --backend ort"
                   if precision == "fp16" else f"--backend ort (builds {precision} for ONNX Runtime on CPU)")
            raise TldeployError(f"cannot build a TensorRT {precision} engine here: {reason}. "
                                f"On an NVIDIA machine: pip install 'tldeploy[tensorrt]'; or use {alt}")
    elif device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise TldeployError(
                "--backend ort --device cuda needs onnxruntime-gpu and a GPU (available providers: "
                f"{', '.join(ort.get_available_providers())}); install it with: pip install 'tldeploy[gpu]'"
            )


def build(cfg: BuildConfig) -> BuildResult:
    from tldeploy._io import sha256_file

    t0 = time.perf_counter()
    src = OnnxFile(cfg.onnx)  # read once: every step below takes the graph, contract and hash from it
    onnx_path, contract = src.path, src.contract
    src.check()
    onnx_sha = src.sha256
    plan = None
    if cfg.precision_plan is not None:
        from tldeploy.engines.plan import load_plan

        plan = load_plan(cfg.precision_plan)
        plan.check_applies(cfg.precision_plan, onnx_sha, cfg.precision, onnx_path)
    cap = cfg.target.resolved(resolve_backend(cfg.precision, cfg.target.backend)).capability
    backend, device = cap.backend, cap.device
    output = _checked_output(cfg, onnx_path, contract, backend, device)
    qat = _qat_target(cfg, contract, backend, onnx_path)
    _require_runtime(backend, device, cfg.precision)
    calib, quant, check = _build_data(cfg, contract, backend, qat)
    from tldeploy.runtime.trt import gpu_info

    record = BuildRecord(
        artifact=output.name, input_onnx=str(onnx_path), input_onnx_sha256=onnx_sha, precision=cfg.precision, backend=backend, device=device,
        calibration=_calibration_record(calib, quant),
        quantization_options=_quant_options(quant),
        check_data={"source": check.source, "images": len(check.images), "sha256": check.sha256} if check else None,
        precision_plan={"path": str(cfg.precision_plan), "sha256": sha256_file(Path(cfg.precision_plan))} if plan else None,
        tools=host.tool_versions(), gpu=gpu_info() if device == "cuda" else None, options=_trt_options(cfg.trt) if backend == "tensorrt" else None,
    )
    key = artifacts.cache_key(record)

    with artifacts.build_lock(output):
        old = read_sidecar(output) if output.exists() and not cfg.force else None  # --force ignores even a broken record
        if old is not None and old.cache_key == key and old.artifact_sha256 == sha256_file(output) and not cfg.force:
            log.info("%s is up to date (same inputs, options and tools); pass --force to rebuild", output)
            return BuildResult(output, old, True, time.perf_counter() - t0)
        if output.exists() and not cfg.force:
            why = (f"it was built from other inputs or tools (differs in: {', '.join(artifacts.key_differences(old, record))})"
                   if old else "it has no matching build record")
            raise OutputExistsError(f"{output} already exists and {why}; pass --force to rebuild it")
        log.info("building %s %s on %s: %s -> %s (%s)", backend, cfg.precision, device, onnx_path, output, cap.describe(cfg.precision))
        details, artifact_contract = _build_artifact(_Job(cfg, src, backend, device, output, calib, quant, check, plan))
        release = host.read_jetson_release()
        record = replace(record, cache_key=key).finished(
            **details, artifact_sha256=sha256_file(output), size_bytes=output.stat().st_size, cpu=host.cpu_info(),
            jetson=release.to_dict() if release else None,  # JetPack and L4T on a Jetson
            contract=artifact_contract,
            created=now(), build_seconds=round(time.perf_counter() - t0, 2))
        record.save(sidecar_path(output))
    return BuildResult(output, record, False, time.perf_counter() - t0)


def _checked_output(cfg: BuildConfig, onnx_path: Path, contract, backend: str, device: str) -> Path:
    """Where the artifact goes (-o or the default name), refused when it cannot be built there."""
    output = Path(cfg.output) if cfg.output else default_output(onnx_path, cfg.precision, backend, device)
    suffixes = ENGINE_SUFFIXES if backend == "tensorrt" else (".onnx",)
    if output.suffix not in suffixes:
        raise ConfigError(f"output {output} should end in {' or '.join(suffixes)} for --backend {backend}")
    if output.resolve() == onnx_path.resolve():
        raise ConfigError(f"output {output} is the input ONNX; choose another -o")
    if contract.precision == "fp16" and cfg.precision != "fp16":
        raise ConfigError(f"{onnx_path} is an FP16 export; build {cfg.precision} from the FP32 export")
    if contract.attention == "plugin" and backend != "tensorrt":
        raise ConfigError(f"{onnx_path} has ChannelAttention plugin nodes, which only TensorRT runs; use --backend tensorrt or the standard export")
    probe_output(output)
    return output


def _qat_target(cfg: BuildConfig, contract, backend: str, onnx_path: Path):
    from tldeploy.engines.quant_config import QatRecord

    return QatRecord.for_int8(contract, str(onnx_path), backend, cfg.int8.reduce_range, cfg.calib_data) if cfg.precision == "int8" else None


def _build_data(cfg: BuildConfig, contract, backend: str, qat) -> tuple[CalibrationSet | None, QuantConfig | None, Any]:
    """(calibration images, quantization options) for INT8, and the check images when given. A
    quantization-aware trained export (`qat`) is built as it was trained: no calibration."""
    calib = quant = check = None
    if cfg.check_data is not None:
        from tldeploy.engines.calibration import ImageSet

        check = ImageSet.from_folder(cfg.check_data, contract.preprocessing, contract.classes)
    if cfg.precision == "int8":
        if qat is not None:  # its trained ranges are written as a min/max calibration cache
            return None, qat.quant_config(replace(cfg.int8, calib_method="minmax")), check
        assert cfg.calib_data is not None  # _qat_target refused an INT8 build without one
        calib = CalibrationSet.from_folder(cfg.calib_data, contract.preprocessing, cfg.int8.calib_samples)
        quant = cfg.int8.quant_config(backend)
    return calib, quant, check


def _calibration_record(calib: CalibrationSet | None, quant: QuantConfig | None) -> dict | None:
    if calib is None or quant is None:
        return None
    return {"sha256": calib.sha256, "images": len(calib.images), "held_out": len(calib.holdout), "method": quant.options.calib_method}


def _quant_options(quant: QuantConfig | None) -> dict | None:
    if quant is None:
        return None
    o = quant.options
    return {"flavour": quant.flavour, "activation_type": quant.activation_type, "activation_symmetric": quant.activation_symmetric,
            "per_channel": quant.per_channel, "reduce_range": quant.reduce_range, "keep_float": o.keep_float,
            "min_agreement": o.min_agreement, "max_kl": o.max_kl, "preset": o.preset}


def _trt_options(t: TrtConfig) -> dict:
    return {"batch": str(t.batch), "workspace_mib": t.workspace_mib, "plugins": [str(p) for p in t.plugins],
            "version_compatible": t.version_compatible, "hardware_compat": t.hardware_compat}


@dataclass(frozen=True)
class _Job:
    """One build: the input (read once), the target and what the conversion needs."""

    cfg: BuildConfig
    src: OnnxFile
    backend: str
    device: str
    output: Path
    calib: CalibrationSet | None
    quant: QuantConfig | None
    check: Any  # ImageSet of --check-data, or None
    plan: Any  # PrecisionPlan, or None

    def convert(self) -> tuple[Any, dict[str, Any]]:
        """The converted graph in memory (None: an FP32 build takes the export as it is) and what
        the conversion adds to the record; the precision's loader runs here."""
        from tldeploy.engines.fp16 import Fp16FromOnnx
        from tldeploy.engines.quantize import QdqFromOnnx

        cfg, extra = self.cfg, {}
        if cfg.precision == "int8":
            assert self.quant is not None  # _build_data made the options of every INT8 build
            q = QdqFromOnnx(self.src, self.calib, self.quant, artifacts.cache_dir() / "calibration", check=self.check, plan=self.plan,
                            plan_path=cfg.precision_plan)()
            extra = {"qdq_flavour": self.quant.flavour, "quantization": q.summary()}
            if q.metrics is not None:
                extra["check"] = extra["quantization"]["check"]  # the guard measured the artifact's graph already
            return q.model, extra
        if cfg.precision == "fp16":
            if self.plan is not None:
                self.plan.check_nodes(self.src.proto, cfg.precision_plan, self.src.path)
                extra["fp32_units"] = [{"name": u.name, "module": u.module, "short": u.short, "op": u.op, "nodes": list(u.nodes)}
                                       for u in self.plan.units]
            return Fp16FromOnnx(self.src, keep_fp32=self.plan.nodes if self.plan else ())(), extra
        return None, extra


def _build_artifact(job: _Job) -> tuple[dict[str, Any], Contract]:
    """Write the artifact (atomically); return what the record should add and the artifact's contract."""
    from tldeploy.contract import read_contract
    from tldeploy.scopes import save_portable

    cfg, src, output = job.cfg, job.src, job.output
    model, extra = job.convert()
    contract = src.contract if model is None else read_contract(model, str(output))
    if src.contract.attention == "plugin":
        extra["check"] = {"skipped": "ChannelAttention plugin nodes: ONNX Runtime cannot run the reference"}
    if job.backend == "ort":
        from tldeploy.runtime.runners import OrtRunner

        with atomic_path(output) as out_tmp:  # checked before it takes the output's name
            if model is None:  # without the build machine's paths
                save_portable(src.path, out_tmp, model=src.copy())
            else:
                save_portable(model, out_tmp)
            if "check" not in extra:
                provider = "cuda" if job.device == "cuda" else "cpu"
                extra["check"] = _check(OrtRunner(out_tmp, provider=provider), src, job.check)
        return extra, contract
    from tldeploy.engines.tensorrt import EngineFromOnnx, default_timing_cache

    trt_cfg = cfg.trt if cfg.trt.timing_cache else _with_cache(cfg.trt, default_timing_cache())
    with tempfile.TemporaryDirectory(prefix="tldeploy-build-") as tmp:
        source = src.path
        if model is not None:  # TensorRT's parser reads a file
            import onnx

            source = Path(tmp) / f"model.{cfg.precision}.onnx"
            onnx.save(model, str(source))
        engine, layers = EngineFromOnnx(source, trt_cfg, needs_plugin=src.contract.attention == "plugin")()
    with atomic_path(output) as out_tmp:
        out_tmp.write_bytes(engine)
        if "check" not in extra:
            from tldeploy.runtime.trt_runner import TrtRunner

            extra["check"] = _check(TrtRunner(out_tmp, plugins=cfg.trt.plugins), src, job.check)
    layers_path = output.with_name(output.name + ".layers.json")
    with atomic_path(layers_path) as lt:
        lt.write_text(layers)
    extra["layer_info"] = layers_path.name
    extra["layers"] = _layer_summary(layers, layers_path)
    extra["timing_cache"] = str(trt_cfg.timing_cache)
    return extra, replace(src.contract, precision=cfg.precision)  # an engine's record carries the input's contract


def _layer_summary(text: str, path: Path) -> dict[str, Any] | None:
    """Layer count, types, output precisions and I/O tensors of the engine inspector's document;
    None, with a warning, where TensorRT wrote one this tldeploy cannot read (the engine is fine)."""
    try:
        return summarize_layers(text, path).to_dict()
    except TldeployError as e:
        log.warning("%s; the engine is built, its record has no layer summary", e)
        return None


def _with_cache(t: TrtConfig, path: Path) -> TrtConfig:
    from dataclasses import replace

    path.parent.mkdir(parents=True, exist_ok=True)
    return replace(t, timing_cache=path)


def _check(artifact_runner, src: OnnxFile, check) -> dict:
    """Run the new artifact (a runner on its temporary file) against the FP32 ONNX on ONNX Runtime
    CPU, on the --check-data images (up to 64) or on random inputs."""
    from tldeploy.parity import compare_outputs
    from tldeploy.runtime.runners import OrtRunner, run_batches

    if check is not None:
        x = check.images[:64]
        what = f"--check-data images from {check.source}"
    else:
        from tldeploy.parity import parity_inputs

        x = parity_inputs(src.contract.preprocessing, None, 8)
        what = "random inputs"
    with OrtRunner(src) as ref_runner:
        ref = run_batches(ref_runner, x)
    with artifact_runner as runner:
        out = run_batches(runner, x)
    report = compare_outputs(ref, out)
    # "kl" as the INT8 guard's check has it, so records read alike whatever the precision.
    return {"against": "fp32 onnx on onnxruntime cpu", "images": what, **report.to_dict(), "kl": report.kl_divergence}
