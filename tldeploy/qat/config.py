"""What `tldeploy qat` takes (`QatConfig`, checked as it is made) and gives back (`QatResult`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tldeploy.engines.quant_config import FLAVOURS, PRESETS, QuantConfig
from tldeploy.errors import ConfigError


@dataclass(frozen=True)
class QatConfig:
    checkpoint: Path
    calib_data: Path  # the training images: calibration and fine-tuning (labels not needed)
    data: Path  # validation images in class folders: the best epoch, and the report
    out_dir: Path
    flavour: str = "ort-x86"
    reduce_range: bool | None = None  # ort-x86: 7-bit weights; None = on for CPUs without VNNI, as build decides
    epochs: int = 2
    lr: float = 5e-6  # biases and BatchNorm (every parameter with step_lr 0); measured for all at once: 20 steps at 3e-5 / 1.5e-5 / 7.5e-6 / 3.75e-6 reached 96.94 / 97.49 / 98.33 / 98.61% (digits Lite0)
    step_lr: float = 3e-3  # each quantized weight's learning rate in its own code steps (its mean step times this); 0: --lr for all
    range_lr: float = 1e-3  # the activation ranges learn faster than the weights: they start calibrated, not trained
    clip_lr: float = 1e-3  # each weight channel's clipping value, as a ratio of its starting largest magnitude; 0: not learnt
    batch_size: int = 8  # more, smaller steps: QAT runs briefly (digits Lite0, 7-bit, seeds 0/1/2, AMD EPYC avx512-vnni: 16 agreed on 98.61/98.89/98.61%, 8 on 99.16/99.44/98.89%)
    samples_per_epoch: int | None = None  # None: every training image each epoch
    calib_samples: int = 256
    keep_float: Path | None = None  # a precision plan (tldeploy diagnose) whose units QAT and the build keep in float
    preset: str = "auto"
    device: str = "cpu"
    seed: int = 0
    workers: int = 0
    quiet: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ConfigError(f"--flavour must be one of {', '.join(FLAVOURS)}, got {self.flavour!r}")
        if self.flavour == "tensorrt" and self.reduce_range:
            raise ConfigError("--reduce-range is for --flavour ort-x86; TensorRT takes 8-bit weights")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if not (self.lr > 0 and self.step_lr >= 0 and self.range_lr >= 0 and self.clip_lr >= 0):
            raise ConfigError(f"--lr must be > 0, --step-lr, --range-lr and --clip-lr >= 0, got {self.lr}, {self.step_lr}, {self.range_lr} and {self.clip_lr}")
        if self.batch_size < 1 or self.calib_samples < 1:
            raise ConfigError(f"--batch-size and --calib-samples must be at least 1, got {self.batch_size} and {self.calib_samples}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ConfigError(f"--samples-per-epoch must be at least 1, got {self.samples_per_epoch}")
        if self.preset not in PRESETS:
            raise ConfigError(f"--int8-preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")

    def quant_config(self) -> QuantConfig:
        if self.flavour == "tensorrt":
            return QuantConfig.tensorrt()
        return QuantConfig.ort_x86(reduce_range=self.reduce_range)


@dataclass
class QatResult:
    checkpoint: Path
    metrics: dict[str, Any]  # another torchrun process than rank 0's: its training history only
    seconds: float
    wrote: bool = True  # False in the torchrun processes that do not write
