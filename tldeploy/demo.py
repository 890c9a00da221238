"""`tldeploy demo`: the whole pipeline, offline, on built-in data.

digits -> train (efficientnet_lite0, feature-extract) -> export -> build (ONNX Runtime FP32 and
INT8 on CPU; TensorRT FP16 and INT8 where TensorRT and a GPU exist) -> bench -> report.
With `modality="audio"`: synthetic tones -> train (efficientnet_lite0 through the log-mel front
end, staged fine-tuning) -> the same stages, plus CAM overlays of a few validation clips.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tldeploy.errors import ConfigError, OutputExistsError

if TYPE_CHECKING:
    from tldeploy.bench.bench import BenchResult
    from tldeploy.train.config import TrainResult

log = logging.getLogger(__name__)

DEMO_MARKER = ".tldeploy-demo"
AUDIO_PER_CLASS = 60  # of which 15 validation: 45 training clips per class
AUDIO_EPOCHS = 8


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("demo-run")
    modality: str = "image"
    epochs: int | None = None  # default: 10 for images (feature-extract), AUDIO_EPOCHS for audio (finetune)
    batch_sizes: tuple[int, ...] = (1, 8)
    iters: int = 50
    force: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.modality not in ("image", "audio"):
            raise ConfigError(f"--modality must be image or audio, got {self.modality!r}")


@dataclass
class DemoResult:
    bench: BenchResult
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    cams: list[Path] = field(default_factory=list)


def run_demo(cfg: DemoConfig) -> DemoResult:
    from tldeploy.bench.bench import BenchConfig, run_bench
    from tldeploy.bench.latency import LatencyConfig
    from tldeploy.export.onnx_export import ExportConfig, export_onnx

    work = _prepare_workdir(cfg)
    seconds: dict[str, float] = {}
    skipped: list[str] = []
    audio = cfg.modality == "audio"
    name = "tones" if audio else "digits"
    with _stage(seconds, "data"):
        data = _write_data(work / name, audio)
    with _stage(seconds, "train"):
        run = _train(cfg, data, work / "run", audio)
        log.info("validation accuracy %.4f", run.metrics["accuracy"])
    with _stage(seconds, "export"):
        onnx = export_onnx(ExportConfig(run.checkpoint, work / f"{name}.onnx", data=data / "val", force=True)).path
    with _stage(seconds, "build"):
        artifacts = _build_artifacts(onnx, data, skipped)
    with _stage(seconds, "bench"):
        result = run_bench(BenchConfig(
            artifacts=tuple(artifacts), output=work / "bench.json", reference=run.checkpoint, data=data / "val",
            batch_sizes=cfg.batch_sizes, latency=LatencyConfig(warmup=5, iters=cfg.iters, rounds=min(10, cfg.iters)), force=True, quiet=cfg.quiet,
        ))
    cams = _draw_cams(artifacts[0], data, work / "cams") if audio else []
    return DemoResult(result, seconds, skipped, cams)


def _prepare_workdir(cfg: DemoConfig) -> Path:
    """The demo's folder, marked as the demo's; one holding files needs --force."""
    work = Path(cfg.workdir)
    if work.exists() and any(work.iterdir()) and not cfg.force:
        what = "a previous demo" if (work / DEMO_MARKER).exists() else "files"
        raise OutputExistsError(f"--workdir {work} already holds {what}; pass --force to replace the demo's outputs there, or choose another --workdir")
    work.mkdir(parents=True, exist_ok=True)
    (work / DEMO_MARKER).touch()
    return work


@contextmanager
def _stage(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Announces a stage in the log and records its seconds (to 0.1 s) under `name` in `seconds`."""
    seconds[name] = time.perf_counter()
    log.info("== %s", name)
    yield
    seconds[name] = round(time.perf_counter() - seconds[name], 1)


def _write_data(data: Path, audio: bool) -> Path:
    from tldeploy.data.folders import write_digits
    from tldeploy.data.tones import write_tones

    if audio:
        write_tones(data, per_class=AUDIO_PER_CLASS, force=True)
    else:
        write_digits(data, size=64, force=True)
    return data


def _train(cfg: DemoConfig, data: Path, out_dir: Path, audio: bool) -> TrainResult:
    from tldeploy.train.training import TrainConfig, train

    if audio:
        train_cfg = TrainConfig(data=data, out_dir=out_dir, modality="audio", mode="finetune", epochs=cfg.epochs or AUDIO_EPOCHS,
                                warmup_epochs=2, force=True, quiet=cfg.quiet)
    else:
        train_cfg = TrainConfig(data=data, out_dir=out_dir, epochs=cfg.epochs or 10, force=True, quiet=cfg.quiet)
    return train(train_cfg)


def _build_artifacts(onnx: Path, data: Path, skipped: list[str]) -> list[Path]:
    """ONNX Runtime FP32 and INT8, and TensorRT FP16 and INT8 where TensorRT can build (else a line in `skipped`)."""
    from tldeploy.engines.builder import BuildConfig, build
    from tldeploy.engines.capabilities import PrecisionTarget
    from tldeploy.runtime.trt import tensorrt_unavailable

    artifacts = [build(BuildConfig(onnx, PrecisionTarget("fp32", "ort"), force=True)).path,
                 build(BuildConfig(onnx, PrecisionTarget("int8", "ort"), calib_data=data / "train", check_data=data / "val", force=True)).path]
    why_not = tensorrt_unavailable()
    if why_not is None:
        artifacts += [build(BuildConfig(onnx, PrecisionTarget("fp16", "tensorrt"), force=True)).path,
                      build(BuildConfig(onnx, PrecisionTarget("int8", "tensorrt"), calib_data=data / "train", check_data=data / "val", force=True)).path]
    else:
        skipped.append(f"TensorRT FP16 and INT8 engines: {why_not}")
    return artifacts


def _draw_cams(artifact: Path, data: Path, out: Path) -> list[Path]:
    """One validation clip per class, its CAM drawn over its spectrogram."""
    from tldeploy.predict import predict

    clips = sorted(next(iter(sorted(d.glob("*.wav")))) for d in (data / "val").iterdir() if d.is_dir())
    return [Path(p.cam_png) for p in predict(artifact, clips, cam_out=out, force=True) if p.cam_png]
