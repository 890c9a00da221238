"""Audio files as clips: decode, mix to mono, resample, and pad or crop to the contract's length."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

from tldeploy.data.folders import soundfile_module
from tldeploy.errors import ConfigError, DataError, is_user_path_error


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


def read_audio(path: Path, sample_rate: int) -> np.ndarray:
    """A file as a mono float32 clip at `sample_rate` (channels averaged, polyphase resampling)."""
    from scipy.signal import resample_poly

    sf = soundfile_module()
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        if is_user_path_error(e):  # permission denied, not a directory...: the CLI's one line, not "corrupt"
            raise
        raise DataError(f"cannot decode audio file {path} ({type(e).__name__}); pass a WAV, FLAC or OGG file") from None
    if data.shape[0] == 0:
        raise DataError(f"audio file {path} holds a zero-length clip; remove it")
    wave = data.mean(axis=1)
    if rate != sample_rate:
        g = gcd(int(rate), int(sample_rate))
        wave = resample_poly(wave, sample_rate // g, int(rate) // g).astype(np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32)


