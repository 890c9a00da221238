"""The audio front end as a module: waveforms -> normalised log-mel spectrogram, in the graph.

See the `audio` package's docstring for the transform and why it is written as convolution + MatMul + Log rather than STFT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from tldeploy.modalities.audio.dsp import dft_basis, mel_filterbank

if TYPE_CHECKING:
    from tldeploy.modalities.audio.config import AudioAugmentConfig
    from tldeploy.modalities.audio.preprocessing import AudioPreprocessing


class LogMelFrontEnd(nn.Module):
    """waveforms (N, samples) -> normalised log-mel (N, in_channels, n_mels, frames).

    Buffers are not persistent: they follow from the contract, so checkpoints hold none of them.
    `augment` (SpecAugment masks) acts only in training mode and is never saved."""

    def __init__(self, prep: AudioPreprocessing, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.prep = prep
        c = prep.logmel
        # Made in float64 and rounded once to `dtype`: a float64 front end is exact to ~1e-12.
        self.register_buffer("basis", torch.from_numpy(dft_basis(c.n_fft)).to(dtype), persistent=False)
        self.register_buffer("filters", torch.from_numpy(mel_filterbank(c)).to(dtype), persistent=False)
        self.augment: AudioAugmentConfig | None = None

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        c = self.prep.logmel
        # A 1 x n_fft Conv2d rather than a Conv1d: every TensorRT version's parser takes 2-D convolutions.
        basis = self.basis.to(x.dtype).unsqueeze(2)  # (2 * bins, 1, 1, n_fft)
        spec = nn.functional.conv2d(x[:, None, None, :], basis, stride=(1, c.hop)).squeeze(2)  # (N, 2 * bins, frames)
        bins = c.n_fft // 2 + 1
        re, im = spec[:, :bins], spec[:, bins:]
        power = re * re + im * im
        return torch.log(torch.matmul(self.filters.to(x.dtype), power) + c.log_offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.log_mel(x) - self.prep.mean) / self.prep.std
        if self.training and self.augment is not None and self.augment.masks:
            z = spec_augment(z, self.augment)
        z = z.unsqueeze(1)
        return z.expand(-1, 3, -1, -1) if self.prep.in_channels == 3 else z


def spec_augment(z: torch.Tensor, aug: AudioAugmentConfig) -> torch.Tensor:
    """Zero (the normalised mean) random time and frequency bands of (N, n_mels, frames), per clip."""
    n, mels, frames = z.shape
    keep = torch.ones_like(z, dtype=torch.bool)
    for count, width, size, is_time in ((aug.time_masks, aug.time_mask_frames, frames, True), (aug.freq_masks, aug.freq_mask_bins, mels, False)):
        pos = torch.arange(size, device=z.device)
        for _ in range(count if width else 0):
            w = torch.randint(0, min(width, size) + 1, (n, 1), device=z.device)
            start = (torch.rand(n, 1, device=z.device) * (size - w + 1)).long()
            band = (pos[None, :] >= start) & (pos[None, :] < start + w)  # (N, size)
            keep &= ~(band[:, None, :] if is_time else band[:, :, None])
    return z * keep


