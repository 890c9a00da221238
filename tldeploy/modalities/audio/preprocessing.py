"""The audio contract (`AudioPreprocessing`): what the host does to a file, what the graph's front end
does after it, and the helpers that apply it (`log_mel`, the CAM overlay)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tldeploy.errors import ConfigError, DataError
from tldeploy.modalities.audio.augment import AudioDataset
from tldeploy.modalities.audio.config import AudioAugmentConfig, LogMelConfig
from tldeploy.modalities.audio.io import fit_clip, read_audio
from tldeploy.modalities.base import PerturbationDomain

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class AudioPreprocessing:
    """The audio contract: the host fits clips to `logmel`'s rate and length; the network's front end
    computes the log-mel spectrogram, normalises it with `mean`/`std` (the training set's) and
    feeds `in_channels` channels to the backbone."""

    logmel: LogMelConfig = field(default_factory=LogMelConfig)
    mean: float = 0.0
    std: float = 1.0
    in_channels: int = 1  # 1: the stem's RGB filters summed; 3: the spectrogram repeated

    modality = "audio"
    input_name = "audio"  # N x samples, float32 in [-1, 1]
    raw = False  # clips have one input format (images also take raw pixels)
    contract_keys: ClassVar[tuple[str, ...]] = ("preprocessing", "preprocessing_rule")
    frontend_end_op: ClassVar[str | None] = "Log"  # the log-mel spectrogram's log: normalisation and the backbone follow
    nvinfer_image = None  # DeepStream's nvinfer preprocesses images only: the bundle writes no nvinfer config

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ConfigError(f"--in-channels must be 1 or 3, got {self.in_channels}")
        if not self.std > 0:
            raise ConfigError(f"the spectrogram's std must be positive, got {self.std}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.logmel.num_samples,)

    @property
    def shape_text(self) -> str:
        return f"{self.logmel.num_samples} samples"

    @property
    def backbone_size(self) -> tuple[int, int]:
        """(height, width) of what the backbone sees: the spectrogram's mel bands and frames."""
        import torch

        h, w = log_mel(torch.zeros(1, self.logmel.num_samples), self.logmel).shape[-2:]
        return int(h), int(w)

    def random_inputs(self, n: int, seed: int = 0) -> np.ndarray:
        """`n` stand-in clips when no real ones are given: white noise at -20 dBFS."""
        return (0.1 * np.random.default_rng(seed).standard_normal((n, *self.input_shape))).astype(np.float32)

    @property
    def media(self):
        from tldeploy.data.folders import AUDIO

        return AUDIO

    def describe(self) -> str:
        c = self.logmel
        return (
            f"decode, mix to mono, resample to {c.sample_rate} Hz, pad (zeros at the end) or centre-crop to "
            f"{c.num_samples} samples; in the graph: log-mel (periodic Hann {c.n_fft}, hop {c.hop}, no centring, "
            f"{c.n_mels} HTK mel bands {c.fmin:g}-{c.top_hz:g} Hz, log(mel + {c.log_offset:g})), "
            f"(x - {self.mean:.6g}) / {self.std:.6g}, {self.in_channels} channel(s)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"modality": "audio", "logmel": self.logmel.to_dict(), "mean": self.mean, "std": self.std, "in_channels": self.in_channels}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioPreprocessing:
        try:
            return cls(LogMelConfig.from_dict(d["logmel"]), float(d["mean"]), float(d["std"]), int(d["in_channels"]))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"audio preprocessing metadata is incomplete ({type(e).__name__}: {e})") from None

    @classmethod
    def fit(cls, logmel: LogMelConfig, in_channels: int, paths: list[Path], limit: int = 512) -> AudioPreprocessing:
        """The contract with the spectrogram's mean and std over (up to `limit` of) the training clips."""
        import torch

        raw = cls(logmel, 0.0, 1.0, in_channels)
        sample = paths[:: max(1, len(paths) // limit)]
        front = raw.frontend()
        total, total_sq, count = 0.0, 0.0, 0
        with torch.no_grad():
            for i in range(0, len(sample), 64):
                z = front.log_mel(torch.from_numpy(np.stack([raw.load(p) for p in sample[i : i + 64]]))).double()
                total, total_sq, count = total + float(z.sum()), total_sq + float((z**2).sum()), count + z.numel()
        mean = total / count
        std = max((total_sq / count - mean**2) ** 0.5, 1e-6)
        return cls(logmel, round(mean, 6), round(std, 6), in_channels)

    def load(self, path: Path, rng: np.random.Generator | None = None) -> np.ndarray:
        """The network's input for one file: a mono clip at the contract's rate and length (a
        centre crop of longer files; with `rng`, a random one, for training)."""
        return fit_clip(read_audio(path, self.logmel.sample_rate), self.logmel.num_samples, random_crop=rng is not None, rng=rng)

    def dataset(self, paths: list[Path], labels: list[int], augment: AudioAugmentConfig | None = None):
        return AudioDataset(paths, labels, self, augment if augment is not None and augment.enabled else None)

    def frontend(self, augment: AudioAugmentConfig | None = None):
        """The log-mel front end; `augment`'s SpecAugment masks, if it has any, act in it in training mode."""
        from tldeploy.modalities.audio.frontend import LogMelFrontEnd

        front = LogMelFrontEnd(self)
        if augment is not None and augment.masks:
            front.augment = augment
        return front

    def contract_props(self) -> dict[str, str]:
        """The ONNX metadata this contract writes: the whole contract as JSON, and the rule in words."""
        return {"preprocessing": json.dumps(self.to_dict()), "preprocessing_rule": self.describe()}

    @classmethod
    def from_contract_props(cls, props: dict[str, str]) -> AudioPreprocessing:
        return cls.from_dict(json.loads(props["preprocessing"]))

    def perturbation_domain(self) -> PerturbationDomain:
        """1/255 of full scale of the fitted clip (the front end is in the graph)."""
        one = np.ones((1, 1), np.float32)
        return PerturbationDomain(-1.0, 1.0, 1 / 255, "1/255 of full scale", 0 * one, one)

    def perturbation_inputs(self, paths: list[Path]) -> np.ndarray:
        """The fitted clips (N, samples)."""
        return np.stack([self.load(p) for p in paths]).astype(np.float32)

    def read_source(self, path: Path) -> np.ndarray:
        """The file as predict draws on it: the fitted clip."""
        why = self.media.check(path)
        if why:
            raise DataError(f"cannot use {path} as a clip ({why}); this is an audio model: pass WAV, FLAC or OGG files")
        return self.load(path)

    def source_input(self, source: np.ndarray) -> np.ndarray:
        return source

    def write_overlay(self, target: Path, source: np.ndarray, cam: np.ndarray, title: str) -> None:
        """The clip's log-mel spectrogram (grey) with the CAM over it (jet, half transparent), as PNG."""
        from matplotlib.figure import Figure

        c = self.logmel
        spec = log_mel(source[None, :], c)[0].numpy()
        extent = (0.0, c.num_samples / c.sample_rate, 0, c.n_mels)
        fig = Figure(figsize=(6, 3.2), dpi=120)
        ax = fig.add_subplot()
        ax.imshow(spec, origin="lower", aspect="auto", cmap="gray", extent=extent)
        ax.imshow(np.clip(cam, 0, 1), origin="lower", aspect="auto", cmap="jet", alpha=0.45, extent=extent, interpolation="bilinear")
        ax.set_xlabel("time (s)")
        ax.set_ylabel(f"mel band ({c.fmin:g}-{c.top_hz:g} Hz)")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(target, format="png")


def log_mel(waveform, cfg: LogMelConfig) -> torch.Tensor:
    """Log-mel spectrogram of float waveforms (N, samples) as a tensor (N, n_mels, frames), by the
    front end's own code, in the input's precision (float64 stays float64, anything else float32)."""
    import torch

    from tldeploy.modalities.audio.frontend import LogMelFrontEnd

    x = torch.as_tensor(waveform)
    x = x if x.dtype == torch.float64 else x.to(torch.float32)
    if x.dim() != 2 or x.shape[1] < cfg.n_fft:
        raise ConfigError(f"log_mel takes waveforms of shape (N, samples >= {cfg.n_fft}), got {tuple(x.shape)}")
    front = LogMelFrontEnd(AudioPreprocessing(cfg), dtype=x.dtype)
    with torch.no_grad():
        return front.log_mel(x)
