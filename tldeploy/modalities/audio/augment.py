"""Training-time audio: the dataset that reads clips with a random crop, and waveform augmentation
(time shift, gain, white noise). SpecAugment's masks act in the front end (`frontend.spec_augment`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tldeploy.modalities.audio.config import AudioAugmentConfig

if TYPE_CHECKING:
    from tldeploy.modalities.audio.preprocessing import AudioPreprocessing


class AudioDataset:
    """torch Dataset over (path, label) pairs: fitted clips, with waveform augmentation in training."""

    def __init__(self, paths: list[Path], labels: list[int], prep: AudioPreprocessing, augment: AudioAugmentConfig | None) -> None:
        self.paths, self.labels, self.prep, self.augment = paths, labels, prep, augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        if self.augment is None:
            return torch.from_numpy(self.prep.load(self.paths[i])), self.labels[i]
        # Random draws from torch's generator, which the training loop seeds (workers included).
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
        clip = self.prep.load(self.paths[i], rng=rng)
        return torch.from_numpy(augment_waveform(clip, self.augment, rng)), self.labels[i]


def augment_waveform(wave: np.ndarray, aug: AudioAugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Time shift (zeros fill in), gain, and white noise at a random SNR."""
    n = len(wave)
    out = wave.copy()
    limit = int(aug.time_shift * n)
    if limit:
        s = int(rng.integers(-limit, limit + 1))
        out = np.roll(out, s)
        if s > 0:
            out[:s] = 0
        elif s < 0:
            out[s:] = 0
    if aug.gain_db:
        out *= np.float32(10 ** (rng.uniform(-aug.gain_db, aug.gain_db) / 20))
    if aug.noise_prob and rng.random() < aug.noise_prob:
        power = float(np.mean(out**2))
        if power > 0:
            snr = rng.uniform(*aug.noise_snr_db)
            out += rng.standard_normal(n).astype(np.float32) * np.float32(np.sqrt(power / 10 ** (snr / 10)))
    return out.astype(np.float32)


