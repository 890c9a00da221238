"""Data loaders for training and inference passes, class balancing by sampling or by loss weights."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils.data import DataLoader, Dataset

# Inference-only passes (feature caching, validation) run in small batches: on a 2-core CPU,
# batches of 32 at 224 px were about twice as slow per image as batches of 8 (memory traffic).
INFER_BATCH = 8


def make_loader(
    ds: Dataset,
    *,
    batch_size: int,
    seed: int,
    workers: int,
    distributed: bool,
    shuffle: bool,
    sampler=None,
    infer: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader whose shuffle is seeded (the training loop reseeds it per epoch); under torchrun a
    shuffled loader shards with a DistributedSampler."""
    if distributed and shuffle:
        sampler = torch.utils.data.DistributedSampler(ds, seed=seed)
    return DataLoader(
        ds,
        batch_size=min(batch_size, INFER_BATCH) if infer else batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
    )


def balanced_sampler(labels: list[int], seed: int) -> torch.utils.data.WeightedRandomSampler:
    """Draws every class equally often (`--balance sampler`), with replacement."""
    counts = Counter(labels)
    w = torch.tensor([1.0 / counts[y] for y in labels], dtype=torch.double)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(w, len(labels), replacement=True, generator=g)


def class_weights(labels: list[int], num_classes: int, device: torch.device) -> torch.Tensor:
    """Inverse-frequency loss weights (`--balance weights`): total / (classes x count)."""
    counts = Counter(labels)
    total = sum(counts.values())
    return torch.tensor([total / (num_classes * max(counts.get(i, 0), 1)) for i in range(num_classes)], device=device)
