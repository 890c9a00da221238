"""Latency of a runner: warm-up, then timed iterations, with every raw sample kept.

Runners never time themselves; this module owns the clock so every backend is measured the same
way. Each `infer` returns host arrays, so GPU runners have synchronised before the clock stops.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from tldeploy.errors import ConfigError

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencyConfig:
    warmup: int = 10  # iterations, or
    warmup_s: float | None = None  # seconds of warm-up (whichever is given)
    iters: int = 100  # timed iterations, or
    duration_s: float | None = None  # seconds of timing

    def __post_init__(self) -> None:
        if self.warmup < 0 or (self.warmup_s is not None and self.warmup_s < 0):
            raise ConfigError("--warmup / --warmup-s must not be negative")
        if self.iters < 1 and self.duration_s is None:
            raise ConfigError(f"--iters must be at least 1, got {self.iters}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"--duration must be positive, got {self.duration_s}")


@dataclass
class LatencyStats:
    batch: int
    samples_ms: list[float] = field(repr=False)
    mean: float = 0.0
    std: float = 0.0
    min: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    throughput: float = 0.0  # images per second, from the mean

    @classmethod
    def from_samples(cls, batch: int, samples_ms: list[float]) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no latency samples")
        p = np.percentile(a, PERCENTILES)
        return cls(batch, [float(s) for s in a], float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0,
                   float(a.min()), *(float(v) for v in p), float(a.max()), float(batch * 1000.0 / a.mean()))

    def to_dict(self) -> dict:
        return asdict(self)


def measure_latency(runner, feed: dict[str, np.ndarray], cfg: LatencyConfig = LatencyConfig()) -> LatencyStats:
    """Time `runner.infer(feed)` (the runner must be active) after a warm-up."""
    batch = len(next(iter(feed.values())))
    clock = time.perf_counter
    start = clock()
    n = 0
    while n < cfg.warmup if cfg.warmup_s is None else clock() - start < cfg.warmup_s:
        runner.infer(feed)
        n += 1
    samples: list[float] = []
    start = clock()
    while len(samples) < cfg.iters if cfg.duration_s is None else clock() - start < cfg.duration_s:
        t0 = clock()
        runner.infer(feed)
        samples.append((clock() - t0) * 1000.0)
    return LatencyStats.from_samples(batch, samples)
