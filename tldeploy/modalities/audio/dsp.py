"""The signal processing of the log-mel front end, in float64 numpy: the HTK mel scale, its
triangular filters and the windowed DFT kernels (the graph's STFT is a convolution with them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tldeploy.modalities.audio.config import LogMelConfig


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


def dft_basis(n_fft: int) -> np.ndarray:
    """(2 * bins, 1, n_fft) float64 convolution kernels: Hann-windowed cosines, then negated sines."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
    angle = 2 * np.pi * k * n / n_fft
    return np.concatenate([window * np.cos(angle), -window * np.sin(angle)])[:, None, :]
