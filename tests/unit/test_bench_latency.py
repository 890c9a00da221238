"""Latency statistics and the noise-aware regression check, on a runner with a fixed workload."""

import numpy as np
import pytest

from tldeploy.bench.compare import compare_latency
from tldeploy.bench.latency import LatencyConfig, LatencyStats, measure_latency
from tldeploy.build.runners import BaseRunner, TensorSpec
from tldeploy.errors import ConfigError


class WorkRunner(BaseRunner):
    """A runner whose inference is `rounds` passes of a single-threaded ufunc over a fixed array."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds, self.name = rounds, f"work[{rounds}]"

    def _activate(self) -> None:
        self.x = np.random.default_rng(0).standard_normal(50_000)

    def _input_spec(self):
        return {"images": TensorSpec((None, 4), np.dtype(np.float32))}

    def _infer(self, feed):
        acc = self.x
        for _ in range(self.rounds):
            acc = np.sin(acc)
        return {"logits": feed["images"] + float(acc[0])}


FEED = {"images": np.zeros((2, 4), np.float32)}


def test_stats_from_samples():
    s = LatencyStats.from_samples(4, [1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s.min, s.p50, s.max) == (1.0, 3.0, 100.0) and s.p90 > s.p50 and s.p99 <= s.max
    assert s.throughput == pytest.approx(4 * 1000 / 22.0) and len(s.samples_ms) == 5


def test_measure_counts_iterations_and_duration():
    with WorkRunner(1) as r:
        s = measure_latency(r, FEED, LatencyConfig(warmup=2, iters=25))
        assert len(s.samples_ms) == 25 and s.batch == 2 and s.min > 0
        timed = measure_latency(r, FEED, LatencyConfig(warmup=0, iters=0, duration_s=0.05))
        assert len(timed.samples_ms) >= 5
    with pytest.raises(ConfigError):
        LatencyConfig(iters=0)


def test_compare_needs_samples_and_reports():
    v = compare_latency([1.0] * 10 + [1.1] * 10, [1.5] * 10 + [1.6] * 10)
    assert v.regression and v.ratio == pytest.approx(1.55 / 1.05) and v.ci_low > 1
    assert "REGRESSION" in v.line()
    assert not compare_latency([1.0] * 10 + [1.1] * 10, [1.04] * 10 + [1.12] * 10).regression  # below the 10% limit
    with pytest.raises(ValueError, match="at least 5 samples"):
        compare_latency([1.0, 2.0], [1.0] * 10)
