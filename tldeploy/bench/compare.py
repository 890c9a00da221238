"""Is the current latency a regression against the baseline? Decided from the raw samples.

A single mean cannot tell a slowdown from noise. A regression is flagged only when both hold:
- the ratio of medians (current / baseline) exceeds 1 + `max_slowdown`, and
- the lower end of its confidence interval is above 1 (the slowdown is real).

The interval comes from a bootstrap that resamples whole rounds (see `tldeploy.bench.latency`),
not single samples: consecutive samples are not independent (a machine runs slow for seconds at a
time), and resampling single samples makes the interval far too narrow and flags drift. With
fewer than `MIN_ROUNDS` rounds on a side, blocks of about sqrt(n) consecutive samples are
resampled instead (a moving-block bootstrap), which catches short bursts but not slow drift.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MIN_ROUNDS = 4


@dataclass
class LatencyVerdict:
    baseline_p50: float
    current_p50: float
    ratio: float  # current median / baseline median
    ci_low: float
    ci_high: float
    confidence: float
    resampled: str  # "rounds" or "blocks"
    max_slowdown: float
    regression: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        state = "REGRESSION" if self.regression else "ok"
        return (f"{state}: p50 {self.baseline_p50:.3f} -> {self.current_p50:.3f} ms, ratio {self.ratio:.3f} "
                f"[{self.ci_low:.3f}, {self.ci_high:.3f}], limit +{self.max_slowdown:.0%}")


def _round_medians(x: np.ndarray, sizes: list[int], n_boot: int, rng) -> np.ndarray:
    """Medians of `n_boot` resamples that draw whole rounds with replacement."""
    k, width = len(sizes), max(sizes)
    table = np.full((k, width), np.nan)
    for i, (start, n) in enumerate(zip(np.cumsum([0, *sizes[:-1]]), sizes, strict=True)):
        table[i, :n] = x[start : start + n]
    pick = rng.integers(0, k, size=(n_boot, k))
    return np.nanmedian(table[pick].reshape(n_boot, -1), axis=1)


def _block_medians(x: np.ndarray, n_boot: int, rng) -> np.ndarray:
    """Medians of `n_boot` moving-block resamples (blocks of ~sqrt(n) consecutive samples)."""
    block = max(1, int(round(np.sqrt(x.size))))
    starts = rng.integers(0, x.size - block + 1, size=(n_boot, -(-x.size // block)))
    idx = (starts[..., None] + np.arange(block)).reshape(n_boot, -1)[:, : x.size]
    return np.median(x[idx], axis=1)


def compare_latency(
    baseline_ms, current_ms, *, baseline_rounds: list[int] | None = None, current_rounds: list[int] | None = None,
    max_slowdown: float = 0.10, confidence: float = 0.99, n_boot: int = 2000, seed: int = 0,
) -> LatencyVerdict:
    """The regression verdict for two series of latency samples (ms) and their round sizes."""
    base, cur = np.asarray(baseline_ms, np.float64), np.asarray(current_ms, np.float64)
    if base.size < 5 or cur.size < 5:
        raise ValueError(f"need at least 5 samples on each side, got {base.size} and {cur.size}")
    for x, sizes in ((base, baseline_rounds), (cur, current_rounds)):
        if sizes is not None and sum(sizes) != x.size:
            raise ValueError(f"round sizes add up to {sum(sizes)}, but there are {x.size} samples")
    rng = np.random.default_rng(seed)
    by_rounds = all(s is not None and sum(1 for n in s if n) >= MIN_ROUNDS for s in (baseline_rounds, current_rounds))
    if by_rounds:
        b_boot = _round_medians(base, [n for n in baseline_rounds if n], n_boot, rng)  # type: ignore[union-attr]
        c_boot = _round_medians(cur, [n for n in current_rounds if n], n_boot, rng)  # type: ignore[union-attr]
    else:
        b_boot, c_boot = _block_medians(base, n_boot, rng), _block_medians(cur, n_boot, rng)
    tail = (1 - confidence) / 2 * 100
    lo, hi = (float(v) for v in np.percentile(c_boot / b_boot, [tail, 100 - tail]))
    b50, c50 = float(np.median(base)), float(np.median(cur))
    ratio = c50 / b50
    return LatencyVerdict(b50, c50, ratio, lo, hi, confidence, "rounds" if by_rounds else "blocks", max_slowdown,
                          ratio > 1 + max_slowdown and lo > 1.0)
