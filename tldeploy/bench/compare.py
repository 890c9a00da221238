"""Is the current latency a regression against the baseline? Decided from the raw samples.

A single mean cannot tell a slowdown from noise. A regression is flagged only when both hold:
- the ratio of medians (current / baseline) exceeds 1 + `max_slowdown`, and
- the lower end of its confidence interval is above 1 (the slowdown is real).

The interval comes from a bootstrap that resamples whole rounds (see `tldeploy.bench.latency`),
not single samples: consecutive samples are not independent (a machine runs slow for seconds at a
time), and resampling single samples makes the interval far too narrow and flags drift.
- Two entries of one bench run took turns in the same rounds: the comparison is paired, the
  ratio is the median of the per-round ratios and the rounds are resampled together.
- Two separate runs: each side's rounds are resampled independently.
- With fewer than `MIN_ROUNDS` rounds, blocks of about sqrt(n) consecutive samples are resampled
  instead (a moving-block bootstrap), which catches short bursts but not slow drift.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tldeploy.records import BenchDocument, BenchRow

MIN_ROUNDS = 4


@dataclass
class LatencyVerdict:
    baseline_p50: float
    current_p50: float
    ratio: float  # current median / baseline median
    ci_low: float
    ci_high: float
    confidence: float
    resampled: str  # "paired rounds", "rounds" or "blocks"
    max_slowdown: float
    regression: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        state = "REGRESSION" if self.regression else "ok"
        return (f"{state}: p50 {self.baseline_p50:.3f} -> {self.current_p50:.3f} ms, ratio {self.ratio:.3f} "
                f"[{self.ci_low:.3f}, {self.ci_high:.3f}], limit +{self.max_slowdown:.0%}")


def _round_medians(x: np.ndarray, sizes: list[int], pick: np.ndarray) -> np.ndarray:
    """Medians of resamples that draw whole rounds: row i of `pick` lists the rounds of resample i."""
    k, width = len(sizes), max(sizes)
    table = np.full((k, width), np.nan)
    for i, (start, n) in enumerate(zip(np.cumsum([0, *sizes[:-1]]), sizes, strict=True)):
        table[i, :n] = x[start : start + n]
    return np.nanmedian(table[pick].reshape(len(pick), -1), axis=1)


def _per_round_medians(x: np.ndarray, sizes: list[int]) -> np.ndarray:
    return np.array([np.median(x[a : a + n]) for a, n in zip(np.cumsum([0, *sizes[:-1]]), sizes, strict=True)])


def _block_medians(x: np.ndarray, n_boot: int, rng) -> np.ndarray:
    """Medians of `n_boot` moving-block resamples (blocks of ~sqrt(n) consecutive samples)."""
    block = max(1, int(round(np.sqrt(x.size))))
    starts = rng.integers(0, x.size - block + 1, size=(n_boot, -(-x.size // block)))
    idx = (starts[..., None] + np.arange(block)).reshape(n_boot, -1)[:, : x.size]
    return np.median(x[idx], axis=1)


def compare_latency(
    baseline_ms, current_ms, *, baseline_rounds: list[int] | None = None, current_rounds: list[int] | None = None,
    paired: bool = False, max_slowdown: float = 0.10, confidence: float = 0.99, n_boot: int = 2000, seed: int = 0,
) -> LatencyVerdict:
    """The regression verdict for two series of latency samples (ms) and their round sizes.

    `paired`: the two were timed in turns in the same rounds (one `bench` run), so round i of one
    met the same machine state as round i of the other; resamples then draw the same rounds for
    both, and drift common to both cancels out."""
    base, cur = np.asarray(baseline_ms, np.float64), np.asarray(current_ms, np.float64)
    if base.size < 5 or cur.size < 5:
        raise ValueError(f"need at least 5 samples on each side, got {base.size} and {cur.size}")
    for x, sizes in ((base, baseline_rounds), (cur, current_rounds)):
        if sizes is not None and sum(sizes) != x.size:
            raise ValueError(f"round sizes add up to {sum(sizes)}, but there are {x.size} samples")
    rng = np.random.default_rng(seed)
    b_rounds, c_rounds = list(baseline_rounds or []), list(current_rounds or [])
    by_rounds = all(len(s) >= MIN_ROUNDS and min(s) > 0 for s in (b_rounds, c_rounds))
    if paired and not (by_rounds and len(b_rounds) == len(c_rounds)):
        raise ValueError("paired comparison needs the same number (at least 4) of non-empty rounds on both sides")
    b50, c50 = float(np.median(base)), float(np.median(cur))
    ratio = c50 / b50
    if paired:  # the median of per-round ratios, robust to a round the machine spoilt for one side
        per_round = _per_round_medians(cur, c_rounds) / _per_round_medians(base, b_rounds)
        ratio = float(np.median(per_round))
        boot = np.median(per_round[rng.integers(0, per_round.size, size=(n_boot, per_round.size))], axis=1)
    elif by_rounds:
        b_boot = _round_medians(base, b_rounds, rng.integers(0, len(b_rounds), size=(n_boot, len(b_rounds))))
        c_boot = _round_medians(cur, c_rounds, rng.integers(0, len(c_rounds), size=(n_boot, len(c_rounds))))
        boot = c_boot / b_boot
    else:
        boot = _block_medians(cur, n_boot, rng) / _block_medians(base, n_boot, rng)
    tail = (1 - confidence) / 2 * 100
    lo, hi = (float(v) for v in np.percentile(boot, [tail, 100 - tail]))
    how = ("paired rounds" if paired else "rounds") if by_rounds else "blocks"
    return LatencyVerdict(b50, c50, ratio, lo, hi, confidence, how, max_slowdown,
                          ratio > 1 + max_slowdown and lo > 1.0)


# ------------------------------------------------------------------ bench documents


@dataclass(frozen=True)
class CompareConfig:
    max_slowdown: float = 0.10  # latency: ratio of medians above 1 + this (and significant) fails
    confidence: float = 0.99
    max_accuracy_drop: float = 0.5  # accuracy points lost against the baseline's same artifact
    max_agreement_drop: float = 0.5  # top-1 agreement with the reference, points lost
    max_robustness_drop: float = 1.0  # robustness: accuracy points lost, or flip / disagreement points gained
    allow_env_mismatch: bool = False

    def __post_init__(self) -> None:
        from tldeploy.errors import ConfigError

        if self.max_slowdown < 0:
            raise ConfigError(f"--max-slowdown is a share (0.10 = 10%) and must not be negative, got {self.max_slowdown}")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"--confidence must be in [0.5, 1), got {self.confidence}")
        if min(self.max_accuracy_drop, self.max_agreement_drop, self.max_robustness_drop) < 0:
            raise ConfigError("--max-accuracy-drop, --max-agreement-drop and --max-robustness-drop are points and must not be negative")


@dataclass
class Comparison:
    """One comparison: latency of an entry at a batch size, or its accuracy or agreement."""

    name: str  # "base_entry -> current_entry" or the shared entry name
    what: str  # "latency b1", "accuracy", "top-1 agreement"
    baseline: float | None
    current: float | None
    detail: str
    regression: bool
    verdict: LatencyVerdict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["verdict"] = self.verdict.to_dict() if self.verdict else None
        return d


@dataclass
class CompareResult:
    checks: list[Comparison]
    environment_differences: list[str]
    unmatched: list[str]
    notes: list[str]

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.checks if c.regression]

    def to_dict(self) -> dict:
        return {"regression": bool(self.regressions), "checks": [c.to_dict() for c in self.checks],
                "environment_differences": self.environment_differences, "unmatched": self.unmatched, "notes": self.notes}

    def table(self) -> str:
        rows = [("entry", "check", "baseline", "current", "result")]
        for c in self.checks:
            rows.append((c.name, c.what, _num(c.baseline), _num(c.current), ("REGRESSION: " if c.regression else "ok: ") + c.detail))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r[:4], widths, strict=False)) + "  " + r[4] for r in rows]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"{len(self.regressions)} regression(s) in {len(self.checks)} check(s)")
        return "\n".join(lines)

    def junit(self) -> str:
        from xml.sax.saxutils import quoteattr

        cases = []
        for c in self.checks:
            body = f"<failure message={quoteattr(c.detail)}/>" if c.regression else ""
            cases.append(f'  <testcase classname="tldeploy.compare" name={quoteattr(f"{c.name}: {c.what}")}>{body}</testcase>')
        return ('<?xml version="1.0" encoding="utf-8"?>\n'
                f'<testsuite name="tldeploy compare" tests="{len(self.checks)}" failures="{len(self.regressions)}">\n'
                + "\n".join(cases) + "\n</testsuite>\n")


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def _pairs(base: BenchDocument, cur: BenchDocument, base_pick: str | None,
           cur_pick: str | None) -> tuple[list[tuple[BenchRow, BenchRow]], list[str]]:
    """Matching (baseline entry, current entry) pairs: the picked entries, or all shared names."""
    from tldeploy.errors import ConfigError

    b_by, c_by = base.by_name(), cur.by_name()
    for pick, by, side in ((base_pick, b_by, "baseline"), (cur_pick, c_by, "current")):
        if pick is not None and pick not in by:
            raise ConfigError(f"the {side} has no entry {pick!r}; it has {', '.join(by)}")
    if base_pick or cur_pick:
        if not (base_pick and cur_pick):
            raise ConfigError("name an entry on both sides (FILE.json#NAME) or on neither")
        return [(b_by[base_pick], c_by[cur_pick])], []
    shared = [n for n in b_by if n in c_by]
    if not shared:
        raise ConfigError(f"the two bench results share no entry names (baseline: {', '.join(b_by)}; current: {', '.join(c_by)}); "
                          "pick entries with FILE.json#NAME")
    unmatched = [f"only in baseline: {n}" for n in b_by if n not in c_by] + [f"only in current: {n}" for n in c_by if n not in b_by]
    return [(b_by[n], c_by[n]) for n in shared], unmatched


def compare_bench(base: BenchDocument, cur: BenchDocument, cfg: CompareConfig = CompareConfig(),
                  base_pick: str | None = None, cur_pick: str | None = None) -> CompareResult:
    """Compare two bench documents, or two entries picked by name (possibly of one document)."""
    from tldeploy.bench.environment import environment_differences
    from tldeploy.errors import TldeployError

    env_diff = environment_differences(base.environment, cur.environment)
    if env_diff and not cfg.allow_env_mismatch:
        raise TldeployError("the two bench results come from different environments (" + "; ".join(env_diff)
                            + "); latencies are not comparable. Rerun both on one machine, or pass --allow-env-mismatch")
    pairs, unmatched = _pairs(base, cur, base_pick, cur_pick)
    # Two entries of one bench run took turns in the same rounds: compare them round by round.
    paired = base.run_id == cur.run_id
    notes: list[str] = []
    same_data = base.data_sha256 == cur.data_sha256
    if not same_data:
        notes.append("the two results used different images; accuracy and agreement are not compared")
    if not paired:
        notes.append("separate bench runs: a shift of the whole machine's speed between them looks like a change; "
                     "on shared machines bench both artifacts in one run and compare FILE.json#A FILE.json#B")
    checks: list[Comparison] = []
    for b, c in pairs:
        name = b.name if b.name == c.name else f"{b.name} -> {c.name}"
        for bs in b.latency:
            cs = c.latency_at(bs.batch)
            if cs is None:
                notes.append(f"{name}: batch {bs.batch} was not timed in the current result")
                continue
            v = compare_latency(bs.samples_ms, cs.samples_ms, baseline_rounds=bs.round_sizes, current_rounds=cs.round_sizes,
                                paired=paired and len(bs.round_sizes) == len(cs.round_sizes) >= MIN_ROUNDS, max_slowdown=cfg.max_slowdown, confidence=cfg.confidence)
            detail = (f"ratio {v.ratio:.3f}, {cfg.confidence:.0%} interval [{v.ci_low:.3f}, {v.ci_high:.3f}] "
                      f"(resampling {v.resampled}), limit +{cfg.max_slowdown:.0%}")
            checks.append(Comparison(name, f"p50 ms, batch {bs.batch}", v.baseline_p50, v.current_p50, detail, v.regression, v))
        if not same_data:
            continue
        if b.accuracy is not None and c.accuracy is not None:
            drop = (b.accuracy - c.accuracy) * 100
            checks.append(Comparison(name, "accuracy", b.accuracy, c.accuracy,
                                f"{-drop:+.2f} points, limit -{cfg.max_accuracy_drop:g}", drop > cfg.max_accuracy_drop))
        if b.parity is not None and c.parity is not None:
            ba, ca = b.parity.top1_agreement, c.parity.top1_agreement
            drop = (ba - ca) * 100
            checks.append(Comparison(name, "top-1 agreement", ba, ca, f"{-drop:+.2f} points, limit -{cfg.max_agreement_drop:g}",
                                drop > cfg.max_agreement_drop))
        checks += _robustness_checks(name, b.robustness, c.robustness, cfg.max_robustness_drop, notes)
    return CompareResult(checks, env_diff, unmatched, notes)


def _robustness_checks(name: str, b: dict | None, c: dict | None, limit: float, notes: list[str]) -> list[Comparison]:
    """Robustness of one entry in two runs, over the corruptions, attacks and budgets both measured:
    mean corruption accuracy, mean attack accuracy (each may lose `limit` points), the largest
    corruption flip rate and the share of searched inputs found to disagree (each may gain `limit`)."""
    if not b and not c:
        return []
    if not (b and c):
        notes.append(f"{name}: robustness was measured in the {'baseline' if b else 'current'} result only; not compared")
        return []
    checks = []

    def compare(what: str, rows_b: list[dict], rows_c: list[dict], key, value, worse: int, agg: str = "mean") -> None:
        vb, vc = {key(r): value(r) for r in rows_b}, {key(r): value(r) for r in rows_c}
        shared = [k for k in vb if k in vc and vb[k] is not None and vc[k] is not None]
        if len(shared) < max(len(vb), len(vc)):
            notes.append(f"{name}: {what} compared over the {len(shared)} rows both results have")
        if not shared:
            return
        pick = max if agg == "max" else (lambda v: sum(v) / len(v))
        base, cur = pick([vb[k] for k in shared]), pick([vc[k] for k in shared])
        label = f"{what}, mean of {len(shared)}" if agg == "mean" else what
        checks.append(Comparison(name, label, base, cur, f"{(cur - base) * 100:+.2f} points, limit {'+' if worse > 0 else '-'}{limit:g}",
                            (cur - base) * 100 * worse > limit))

    def by_row(r: dict) -> tuple:
        return r["corruption"], r["severity"]

    compare("corruption accuracy", b["corruptions"], c["corruptions"], by_row, lambda r: r["accuracy"], -1)
    compare("largest corruption flip rate", b["corruptions"], c["corruptions"], by_row, lambda r: r["flip_rate"], +1, "max")
    compare("attack accuracy", b["attacks"], c["attacks"], lambda r: (r["method"], r["epsilon"]), lambda r: r["accuracy"], -1)
    for d in b.get("disagreement") or []:
        other = next((e for e in c.get("disagreement") or [] if e["epsilon"] == d["epsilon"]), None)
        if other is not None and d["searched"] and other["searched"]:
            compare(f"share found to disagree, eps {d['epsilon']:g}", [d], [other], lambda r: r["epsilon"],
                  lambda r: r["found"] / r["searched"], +1, "one")
    return checks
