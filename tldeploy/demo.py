"""`tldeploy demo`: the whole pipeline, offline, on built-in data.

digits -> train (efficientnet_lite0, feature-extract) -> export -> build (ONNX Runtime FP32 and
INT8 on CPU; TensorRT FP16 and INT8 where TensorRT and a GPU exist) -> bench -> report.
With `modality="audio"`: synthetic tones -> train (efficientnet_lite0 through the log-mel front
end, staged fine-tuning) -> the same stages, plus CAM overlays of a few validation clips.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tldeploy.errors import ConfigError, OutputExistsError

if TYPE_CHECKING:
    from tldeploy.bench.bench import BenchResult

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
    from tldeploy.data.folders import write_digits
    from tldeploy.data.tones import write_tones
    from tldeploy.engines.builder import BuildConfig, build
    from tldeploy.engines.capabilities import PrecisionTarget
    from tldeploy.export.onnx_export import ExportConfig, export_onnx
    from tldeploy.predict import predict
    from tldeploy.runtime.trt import tensorrt_unavailable
    from tldeploy.train.training import TrainConfig, train

    work = Path(cfg.workdir)
    if work.exists() and any(work.iterdir()) and not cfg.force:
        what = "a previous demo" if (work / DEMO_MARKER).exists() else "files"
        raise OutputExistsError(f"--workdir {work} already holds {what}; pass --force to replace the demo's outputs there, or choose another --workdir")
    work.mkdir(parents=True, exist_ok=True)
    (work / DEMO_MARKER).touch()
    seconds: dict[str, float] = {}
    skipped: list[str] = []

    def stage(name: str):
        seconds[name] = time.perf_counter()
        log.info("== %s", name)

    def done(name: str) -> None:
        seconds[name] = round(time.perf_counter() - seconds[name], 1)

    audio = cfg.modality == "audio"
    name = "tones" if audio else "digits"
    stage("data")
    data = work / name
    if audio:
        write_tones(data, per_class=AUDIO_PER_CLASS, force=True)
    else:
        write_digits(data, size=64, force=True)
    done("data")
    stage("train")
    if audio:
        train_cfg = TrainConfig(data=data, out_dir=work / "run", modality="audio", mode="finetune", epochs=cfg.epochs or AUDIO_EPOCHS,
                                warmup_epochs=2, force=True, quiet=cfg.quiet)
    else:
        train_cfg = TrainConfig(data=data, out_dir=work / "run", epochs=cfg.epochs or 10, force=True, quiet=cfg.quiet)
    run = train(train_cfg)
    log.info("validation accuracy %.4f", run.metrics["accuracy"])
    done("train")
    stage("export")
    onnx = export_onnx(ExportConfig(run.checkpoint, work / f"{name}.onnx", data=data / "val", force=True)).path
    done("export")
    stage("build")
    artifacts = [build(BuildConfig(onnx, PrecisionTarget("fp32", "ort"), force=True)).path,
                 build(BuildConfig(onnx, PrecisionTarget("int8", "ort"), calib_data=data / "train", check_data=data / "val", force=True)).path]
    why_not = tensorrt_unavailable()
    if why_not is None:
        artifacts += [build(BuildConfig(onnx, PrecisionTarget("fp16", "tensorrt"), force=True)).path,
                      build(BuildConfig(onnx, PrecisionTarget("int8", "tensorrt"), calib_data=data / "train", check_data=data / "val", force=True)).path]
    else:
        skipped.append(f"TensorRT FP16 and INT8 engines: {why_not}")
    done("build")
    stage("bench")
    result = run_bench(BenchConfig(
        artifacts=tuple(artifacts), output=work / "bench.json", reference=run.checkpoint, data=data / "val",
        batch_sizes=cfg.batch_sizes, latency=LatencyConfig(warmup=5, iters=cfg.iters, rounds=min(10, cfg.iters)), force=True, quiet=cfg.quiet,
    ))
    done("bench")
    cams: list[Path] = []
    if audio:  # one validation clip per class, its CAM drawn over its spectrogram
        clips = sorted(next(iter(sorted(d.glob("*.wav")))) for d in (data / "val").iterdir() if d.is_dir())
        cams = [Path(p.cam_png) for p in predict(artifacts[0], clips, cam_out=work / "cams", force=True) if p.cam_png]
    return DemoResult(result, seconds, skipped, cams)
