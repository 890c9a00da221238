"""Is the current latency a regression against the baseline? Decided from the raw samples.

A single mean cannot tell a slowdown from noise. A regression is flagged only when both hold:
- the ratio of medians (current / baseline) exceeds 1 + `max_slowdown`, and
- the lower end of its confidence interval is above 1 (the slowdown is real).

The interval comes from a moving-block bootstrap: consecutive latency samples are not independent
(a busy neighbour slows a stretch of them), and resampling single samples would make the interval
too narrow and flag noise. Blocks of about sqrt(n) consecutive samples keep that correlation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class LatencyVerdict:
    baseline_p50: float
    current_p50: float
    ratio: float  # current median / baseline median
    ci_low: float
    ci_high: float
    max_slowdown: float
    regression: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        state = "REGRESSION" if self.regression else "ok"
        return (f"{state}: p50 {self.baseline_p50:.3f} -> {self.current_p50:.3f} ms, ratio {self.ratio:.3f} "
                f"[{self.ci_low:.3f}, {self.ci_high:.3f}], limit +{self.max_slowdown:.0%}")


def _block_medians(x: np.ndarray, n_boot: int, rng) -> np.ndarray:
    """Medians of `n_boot` moving-block bootstrap resamples of the series `x`."""
    block = max(1, int(round(np.sqrt(x.size))))
    starts = rng.integers(0, x.size - block + 1, size=(n_boot, -(-x.size // block)))
    idx = (starts[..., None] + np.arange(block)).reshape(n_boot, -1)[:, : x.size]
    return np.median(x[idx], axis=1)


def bootstrap_median_ratio(base: np.ndarray, cur: np.ndarray, n_boot: int, confidence: float, rng) -> tuple[float, float]:
    b = _block_medians(base, n_boot, rng)
    c = _block_medians(cur, n_boot, rng)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(c / b, [tail, 100 - tail])
    return float(lo), float(hi)


def compare_latency(
    baseline_ms, current_ms, *, max_slowdown: float = 0.10, confidence: float = 0.99, n_boot: int = 2000, seed: int = 0,
) -> LatencyVerdict:
    base, cur = np.asarray(baseline_ms, np.float64), np.asarray(current_ms, np.float64)
    if base.size < 5 or cur.size < 5:
        raise ValueError(f"need at least 5 samples on each side, got {base.size} and {cur.size}")
    ratio = float(np.median(cur) / np.median(base))
    lo, hi = bootstrap_median_ratio(base, cur, n_boot, confidence, np.random.default_rng(seed))
    regression = ratio > 1 + max_slowdown and lo > 1.0
    return LatencyVerdict(float(np.median(base)), float(np.median(cur)), ratio, lo, hi, max_slowdown, regression)
