"""Latency of runners: warm-up, then timed iterations in rounds, with every raw sample kept.

Runners never time themselves; this module owns the clock so every backend is measured the same
way. Host runners are timed with `time.perf_counter` around `infer`, which returns host arrays.
Runners that expose device stages (TensorRT, PyTorch on CUDA) are timed with CUDA events on their
stream: host-to-device copy, compute and device-to-host copy separately, the sample being the sum.

Timing runs in rounds, and several runners are timed in turns within each round. Shared and
virtual machines change speed by 5-20% for seconds at a time (measured on the 2-core VM this was
written on: 1-second medians of one model varied with a 6.6% coefficient of variation and did
not average out over 3-second windows). Taking turns exposes every runner to the same slow
stretches, and the spread between rounds is what `tldeploy.bench.compare` uses to judge whether a
difference is more than that drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tldeploy.errors import ConfigError
from tldeploy.records import LatencyStats

__all__ = ["LatencyConfig", "LatencyStats", "measure_interleaved", "measure_latency", "summarise"]


@dataclass(frozen=True)
class LatencyConfig:
    warmup: int = 10  # iterations, or
    warmup_s: float | None = None  # seconds of warm-up (whichever is given)
    iters: int = 100  # timed iterations in all, or
    duration_s: float | None = None  # seconds of timing in all
    rounds: int = 10  # the timing is split into this many rounds, runners taking turns
    # A pause before each turn, so that the threads of the runner before, which spin-wait after a
    # call, are idle: measured here, PyTorch's turn made the next ONNX Runtime INT8 model run 1.2-1.6x
    # slower without it (12.3-14.5 vs 7.7-9.4 ms at batch 1).
    settle_s: float = 0.05

    def __post_init__(self) -> None:
        if self.warmup < 0 or (self.warmup_s is not None and self.warmup_s < 0):
            raise ConfigError("--warmup / --warmup-s must not be negative")
        if self.iters < 1 and self.duration_s is None:
            raise ConfigError(f"--iters must be at least 1, got {self.iters}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"--duration must be positive, got {self.duration_s}")
        if self.settle_s < 0:
            raise ConfigError(f"settle_s must not be negative, got {self.settle_s}")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be at least 1, got {self.rounds}")
        if self.duration_s is None and self.iters < self.rounds:
            raise ConfigError(f"--iters {self.iters} is fewer than --rounds {self.rounds}; each round needs an iteration")


def summarise(samples_ms) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"mean": float(a.mean()), "p50": float(np.median(a)), "min": float(a.min()), "max": float(a.max())}


class _Timer:
    """Times one runner on one feed: host clock, or CUDA events on the runner's device stages."""

    STAGES = ("h2d", "compute", "d2h")

    def __init__(self, runner, feed: dict[str, np.ndarray]) -> None:
        self.runner, self.feed = runner, feed
        self.batch = len(next(iter(feed.values())))
        self.device = runner.device_stages(feed) if hasattr(runner, "device_stages") else None
        self.samples: list[float] = []
        self.round_sizes: list[int] = []
        self.parts: dict[str, list[float]] = {k: [] for k in self.STAGES}

    def run(self, timed: bool) -> None:
        if self.device is None:
            t0 = time.perf_counter()
            self.runner.infer(self.feed)
            if timed:
                self.samples.append((time.perf_counter() - t0) * 1000.0)
            return
        import torch

        st = self.device
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if timed else None
        with torch.cuda.stream(st.stream):
            for i, fn in enumerate((st.upload, st.compute, st.download)):
                if events:
                    events[i].record(st.stream)
                fn()
            if events:
                events[3].record(st.stream)
        st.stream.synchronize()
        if events:
            times = [events[i].elapsed_time(events[i + 1]) for i in range(3)]
            for key, t in zip(self.STAGES, times, strict=True):
                self.parts[key].append(t)
            self.samples.append(sum(times))

    def stats(self) -> LatencyStats:
        if self.device is None:
            return LatencyStats.from_samples(self.batch, self.samples, self.round_sizes)
        return LatencyStats.from_samples(self.batch, self.samples, self.round_sizes, clock="cuda_events",
                                         stages={k: summarise(v) for k, v in self.parts.items()})


def _repeat(step: Callable[[], Any], n: int, seconds: float | None) -> None:
    """Call `step` n times, or for `seconds` when given."""
    start, done = time.perf_counter(), 0
    while done < n if seconds is None else time.perf_counter() - start < seconds:
        step()
        done += 1


def measure_interleaved(items: list[tuple[Any, dict[str, np.ndarray]]], cfg: LatencyConfig = LatencyConfig(),
                        progress: Callable[[int], None] | None = None) -> list[LatencyStats]:
    """Time each (active runner, feed) pair: each warms up, then in every round each takes its
    turn of iters/rounds iterations (or duration/rounds seconds), after a pause of `settle_s` and
    one untimed iteration that refills caches another runner's turn has emptied; the order of turns
    rotates from round to round. `progress(n)` is told of timed iterations."""
    timers = [_Timer(r, f) for r, f in items]
    for t in timers:
        _repeat(lambda t=t: t.run(False), cfg.warmup, cfg.warmup_s)
    seconds = None if cfg.duration_s is None else cfg.duration_s / cfg.rounds
    for r in range(cfg.rounds):
        n = cfg.iters // cfg.rounds + (1 if r < cfg.iters % cfg.rounds else 0)
        shift = r % len(timers)  # rotate who goes first, so no runner always follows the same one
        for t in timers[shift:] + timers[:shift]:
            if len(timers) > 1 and cfg.settle_s:
                time.sleep(cfg.settle_s)
            t.run(False)
            before = len(t.samples)

            def step(t=t) -> None:
                t.run(True)
                if progress:
                    progress(1)

            _repeat(step, n, seconds)
            t.round_sizes.append(len(t.samples) - before)
    return [t.stats() for t in timers]


def measure_latency(runner, feed: dict[str, np.ndarray], cfg: LatencyConfig = LatencyConfig(),
                    progress: Callable[[int], None] | None = None) -> LatencyStats:
    """Time `runner.infer(feed)` (the runner must be active) after a warm-up."""
    return measure_interleaved([(runner, feed)], cfg, progress)[0]
