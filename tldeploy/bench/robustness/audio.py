"""Audio corruptions at severities 1, 3, 5, on the fitted clip (mono, the contract's rate and
length) before the in-graph front end: what a microphone, a codec and a capture window do to a
clip. Each takes (clip, severity, generator, contract) and returns a float32 clip in [-1, 1].

Our own few lines in NumPy and SciPy rather than audiomentations: its parameters are drawn per
call from ranges, where a severity table needs fixed ones, and it would be one more dependency
for four transforms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def white_noise(clip: np.ndarray, s: int, rng: np.random.Generator, prep: Any) -> np.ndarray:
    """Gaussian white noise at an SNR of 30, 20 and 10 dB against the clip's own RMS."""
    snr_db = {1: 30.0, 3: 20.0, 5: 10.0}[s]
    rms = float(np.sqrt(np.mean(clip.astype(np.float64) ** 2))) or 1e-4  # a silent clip gets noise at -80 dBFS
    return _clip(clip + rng.normal(0, rms / 10 ** (snr_db / 20), clip.shape))


def gain(clip: np.ndarray, s: int, rng: np.random.Generator, prep: Any) -> np.ndarray:
    """A level change of 3, 9 and 18 dB, up or down (drawn per clip); louder clips clip at full scale."""
    db = {1: 3.0, 3: 9.0, 5: 18.0}[s] * rng.choice((-1.0, 1.0))
    return _clip(clip * 10 ** (db / 20))


def time_shift(clip: np.ndarray, s: int, rng: np.random.Generator, prep: Any) -> np.ndarray:
    """The capture window moved by 10, 25 and 40% of the clip, earlier or later (drawn per clip),
    the gap filled with silence."""
    n = int(round({1: 0.10, 3: 0.25, 5: 0.40}[s] * len(clip)))
    out = np.zeros_like(clip)
    if rng.random() < 0.5:
        out[n:] = clip[: len(clip) - n]
    else:
        out[: len(clip) - n] = clip[n:]
    return out


def low_pass(clip: np.ndarray, s: int, rng: np.random.Generator, prep: Any) -> np.ndarray:
    """A band limit: 4th-order Butterworth low-pass (zero phase) at 1/2, 1/4 and 1/8 of Nyquist
    (4, 2 and 1 kHz at 16 kHz): a narrow-band channel, a cheap microphone."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, {1: 0.5, 3: 0.25, 5: 0.125}[s], btype="low", output="sos")
    return _clip(sosfiltfilt(sos, clip.astype(np.float64)))


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -1.0, 1.0).astype(np.float32)


AUDIO_CORRUPTIONS: dict[str, Callable[..., np.ndarray]] = {
    "white_noise": white_noise, "gain": gain, "time_shift": time_shift, "low_pass": low_pass,
}
