"""The built-in offline audio set: synthetic clips of seven kinds of sound, written as WAV files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tldeploy._io import atomic_dir
from tldeploy.data.folders import soundfile_module
from tldeploy.errors import ConfigError, DataError

TONE_CLASSES = ("tone", "chirp_up", "chirp_down", "am_tone", "fm_tone", "noise_band", "clicks")


def synth_clip(kind: str, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """One synthetic clip of `kind` (see TONE_CLASSES): random pitch, length, onset, level and
    background noise, so that classes overlap in pitch and loudness and differ in shape only."""
    length = rng.uniform(0.6, 1.4)  # clips shorter and longer than a second: padded or cropped later
    n = int(length * sample_rate)
    t = np.arange(n) / sample_rate
    dur = rng.uniform(0.25, 0.8)
    onset = rng.uniform(0.0, max(0.0, length - dur))
    f0 = float(np.exp(rng.uniform(np.log(200.0), np.log(2500.0))))
    local = np.clip(t - onset, 0.0, dur)
    if kind in ("tone", "am_tone", "fm_tone"):
        phase_f = f0 * local
        if kind == "fm_tone":
            rate, depth = rng.uniform(4, 12), rng.uniform(0.03, 0.1)
            phase_f = f0 * (local - depth / (2 * np.pi * rate) * np.cos(2 * np.pi * rate * local))
        sig = sum(rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * h * phase_f) for h in range(1, int(rng.integers(1, 4)) + 1))
        if kind == "am_tone":
            sig = sig * (1 - rng.uniform(0.5, 1.0) * (0.5 + 0.5 * np.cos(2 * np.pi * rng.uniform(4, 16) * local)))
    elif kind in ("chirp_up", "chirp_down"):
        ratio = rng.uniform(1.4, 4.0) ** (1 if kind == "chirp_up" else -1)
        k = np.log(ratio) / dur  # exponential sweep f(t) = f0 * exp(k t)
        sig = np.sin(2 * np.pi * f0 * (np.exp(k * local) - 1) / k)
    elif kind == "noise_band":
        from scipy.signal import butter, sosfilt

        bw = rng.uniform(0.1, 0.5) * f0
        sos = butter(4, [max(20.0, f0 - bw / 2), min(sample_rate / 2 - 50, f0 + bw / 2)], btype="band", fs=sample_rate, output="sos")
        sig = sosfilt(sos, rng.standard_normal(n))
        sig = sig / (np.abs(sig).max() + 1e-9)
    elif kind == "clicks":
        rate = rng.uniform(5, 30)
        pulses = np.zeros(n)
        idx = ((onset + np.arange(0, dur, 1 / rate)) * sample_rate).astype(int)
        pulses[idx[idx < n]] = 1.0
        ring = np.exp(-np.arange(int(0.01 * sample_rate)) / (0.002 * sample_rate)) * np.sin(2 * np.pi * f0 * np.arange(int(0.01 * sample_rate)) / sample_rate)
        sig = np.convolve(pulses, ring)[:n]
    else:
        raise ConfigError(f"unknown synthetic sound {kind!r}; one of {', '.join(TONE_CLASSES)}")
    gate = ((t >= onset) & (t <= onset + dur)).astype(np.float64)
    edge = int(0.005 * sample_rate)  # 5 ms fades: no clicks at the ends of tones
    ramp = np.convolve(gate, np.ones(edge) / edge, mode="same") if kind != "clicks" else 1.0
    sig = sig * ramp
    sig = sig / (np.abs(sig).max() + 1e-9) * 10 ** (rng.uniform(-20, -3) / 20)
    noise_db = rng.uniform(5, 30)  # background at 5-30 dB below the sound's power
    power = float(np.mean(sig[gate > 0] ** 2)) if gate.any() else 1e-6
    sig = sig + rng.standard_normal(n) * np.sqrt(power / 10 ** (noise_db / 10))
    return np.clip(sig, -1.0, 1.0).astype(np.float32)


def write_tones(out_dir: Path, per_class: int = 60, val_fraction: float = 0.25, sample_rate: int = 16_000, seed: int = 0,
                force: bool = False) -> dict[str, int]:
    """A built-in offline audio set: `per_class` synthetic clips of each TONE_CLASSES kind as WAV files
    under train/ and val/. Files vary as real ones do: every third at 22,050 Hz instead of
    `sample_rate`, every fourth stereo, lengths 0.6-1.4 s. Returns the number of files per split."""
    sf = soundfile_module()
    if per_class < 2:
        raise ConfigError(f"--per-class must be at least 2, got {per_class}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise DataError(f"{out_dir} exists and is not empty; choose another folder or pass --force")
    n_val = max(1, round(per_class * val_fraction))
    if n_val >= per_class:
        raise ConfigError(f"--val-fraction {val_fraction} of --per-class {per_class} leaves no training clips; lower it or raise --per-class")
    written = {"train": 0, "val": 0}
    with atomic_dir(out_dir, force=True) as tmp:
        for c, kind in enumerate(TONE_CLASSES):
            for i in range(per_class):
                rng = np.random.default_rng([seed, c, i])
                rate = 22_050 if i % 3 == 2 else sample_rate
                clip = synth_clip(kind, rng, rate)
                data = np.stack([clip, clip * rng.uniform(0.6, 1.0)], axis=1) if i % 4 == 3 else clip
                split = "val" if i < n_val else "train"
                folder = tmp / split / kind
                folder.mkdir(parents=True, exist_ok=True)
                sf.write(str(folder / f"{kind}_{i:03d}.wav"), data, rate, subtype="PCM_16")
                written[split] += 1
    return written


