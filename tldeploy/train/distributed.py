"""One process or torchrun's many: the process group, the seeds every process starts from, and
the allocator setting of a process that trains on CPU."""

from __future__ import annotations

import ctypes
import os
import random
import sys

import numpy as np
import torch


class Dist:
    """torchrun's environment, or a single process."""

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            torch.distributed.init_process_group(backend=backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def broadcast(self, obj):
        """Rank 0's `obj` in every process (a picklable value)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of returning it to the system. A QAT step on
    CPU allocates and frees activation tensors of 25-80 MB; by default glibc maps each afresh and the
    kernel zeroes every page again, which measured up to half the cost of the fake quantization
    (digits EfficientNet-Lite0, AMD EPYC avx512-vnni). Process-wide, as LD_PRELOAD of jemalloc or
    tcmalloc would be (PyTorch's advice for CPU training); a no-op off glibc."""
    if not sys.platform.startswith("linux"):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(m_mmap_threshold, ctypes.c_int(1 << 30))
        libc.mallopt(m_trim_threshold, ctypes.c_int(2**31 - 1))
    except (OSError, AttributeError):  # not glibc
        return
