"""The audio front end: waveform -> log-mel spectrogram, the image an image backbone sees.

First step of cross-modal transfer (issue 7): the transform and its parameters. Every parameter
is in `LogMelConfig`, which goes into the preprocessing contract so that training, export,
calibration, bench and predict apply exactly the same transform.

The STFT is not centred (frames start at sample 0, no padding): ONNX's STFT operator (opset 17)
frames the same way, so the front end can move into an exported graph without a padding rule of
its own. Power spectrum, HTK mel scale, triangular filters with unit peak, natural log of
(mel energy + `log_offset`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tldeploy.errors import ConfigError


@dataclass(frozen=True)
class LogMelConfig:
    sample_rate: int = 16_000  # clips are resampled to this rate
    clip_s: float = 1.0  # shorter clips are padded, longer ones cropped
    n_fft: int = 512  # window length (periodic Hann) and FFT size
    hop: int = 160  # samples between frames (10 ms at 16 kHz)
    n_mels: int = 64
    fmin: float = 20.0
    fmax: float | None = None  # default: sample_rate / 2
    log_offset: float = 1e-6  # log(mel + offset): silence maps to log(offset), not -inf

    def __post_init__(self) -> None:
        if self.sample_rate < 1000:
            raise ConfigError(f"--sample-rate must be at least 1000 Hz, got {self.sample_rate}")
        if self.n_fft < 16 or self.hop < 1:
            raise ConfigError(f"--n-fft must be at least 16 and --hop at least 1, got {self.n_fft} and {self.hop}")
        if self.num_samples < self.n_fft:
            raise ConfigError(f"--clip-s {self.clip_s} gives {self.num_samples} samples, fewer than one window (--n-fft {self.n_fft})")
        if not 0 <= self.fmin < self.top_hz <= self.sample_rate / 2:
            raise ConfigError(f"need 0 <= --fmin < --fmax <= sample_rate / 2, got {self.fmin}, {self.top_hz}, {self.sample_rate / 2}")
        if self.n_mels < 1 or self.log_offset <= 0:
            raise ConfigError(f"--n-mels must be at least 1 and --log-offset positive, got {self.n_mels} and {self.log_offset}")

    @property
    def top_hz(self) -> float:
        return self.fmax if self.fmax is not None else self.sample_rate / 2

    @property
    def num_samples(self) -> int:
        return int(round(self.clip_s * self.sample_rate))

    @property
    def num_frames(self) -> int:
        return 1 + (self.num_samples - self.n_fft) // self.hop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogMelConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(cfg: LogMelConfig) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float64 triangular filters, equally spaced on the HTK mel scale, peak 1."""
    freqs = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.top_hz), cfg.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / (centre - lower)
    falling = (upper - freqs[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def log_mel(waveform, cfg: LogMelConfig):
    """Log-mel spectrogram of float waveforms (N, samples) as a torch tensor (N, n_mels, frames),
    computed in the input's precision (float64 stays float64; anything else becomes float32)."""
    import torch

    x = torch.as_tensor(waveform)
    x = x if x.dtype == torch.float64 else x.to(torch.float32)
    if x.dim() != 2 or x.shape[1] < cfg.n_fft:
        raise ConfigError(f"log_mel takes waveforms of shape (N, samples >= {cfg.n_fft}), got {tuple(x.shape)}")
    window = torch.hann_window(cfg.n_fft, periodic=True, dtype=x.dtype, device=x.device)
    spec = torch.stft(x, cfg.n_fft, hop_length=cfg.hop, win_length=cfg.n_fft, window=window, center=False, return_complex=True)
    power = spec.real**2 + spec.imag**2
    fb = torch.from_numpy(mel_filterbank(cfg)).to(device=x.device, dtype=x.dtype)
    return torch.log(torch.matmul(fb, power) + cfg.log_offset)


def fit_clip(wave: np.ndarray, num_samples: int, *, random_crop: bool = False, rng: np.random.Generator | None = None) -> np.ndarray:
    """Pad (zeros at the end) or crop a mono clip to `num_samples`: centre crop, or a random one in training."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ConfigError(f"fit_clip takes a mono clip (1-D), got shape {wave.shape}")
    if len(wave) <= num_samples:
        return np.pad(wave, (0, num_samples - len(wave)))
    extra = len(wave) - num_samples
    start = int((rng or np.random.default_rng()).integers(0, extra + 1)) if random_crop else extra // 2
    return wave[start : start + num_samples]
