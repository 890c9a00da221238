"""Parity of a deployed artifact's outputs against the PyTorch reference, as an object.

A `ParityReport` is truthy when it passes its tolerances, serialises to JSON and prints as a
short table, like Polygraphy's comparator results. A `Tolerance` is the one way to hold a report
to limits: export's FP32 check, bench's gates, a bundle's per-precision tolerances and the INT8
acceptance are instances of it.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tldeploy.errors import ConfigError

if TYPE_CHECKING:
    from tldeploy.modalities.base import Modality


class Measured(Protocol):
    """What a `Tolerance` reads, under `ParityReport`'s names. A record without a bounded quantity
    cannot be held to that limit (engines' `TaskMetrics` measures no logit difference or accuracy)."""

    @property
    def top1_agreement(self) -> float: ...
    @property
    def cosine(self) -> float: ...
    @property
    def kl_divergence(self) -> float: ...


@dataclass(frozen=True)
class ToleranceResult:
    """One limit of a `Tolerance` held against one report."""

    name: str  # the Tolerance field, e.g. "min_cosine"
    limit: float
    value: float  # what the report measured
    passed: bool

    @property
    def line(self) -> str:
        """The miss in words: "top-1 agreement 93.75% is below 96.00%"."""
        return _LIMITS[self.name].line.format(value=self.value, limit=self.limit)


@dataclass(frozen=True)
class _Limit:
    measure: Callable[[Any], float | None]  # the quantity of a report it bounds; None: not measured there (not checked)
    floor: bool  # passes at or above the limit; else at or below it (NaN passes neither)
    valid: Callable[[float], bool]  # which limits make sense
    rule: str  # `valid` in words, for the error
    line: str  # a miss, formatted with value and limit


# Each Tolerance field's meaning, in checking order: the order of results and failure lines, which
# keeps bench's gate rows (drop, agreement, cosine) and compare_outputs' lines (logits, agreement)
# as they were written before (deploy's verify.json order is its own: deploy/manifest.py).
_LIMITS: dict[str, _Limit] = {
    "max_top1_drop": _Limit(lambda r: None if r.accuracy_delta is None else -r.accuracy_delta * 100, False,
                            lambda v: v >= 0, "is in accuracy points and must not be negative",
                            "top-1 accuracy dropped {value:.2f} points, more than {limit:g}"),
    "max_logit_diff": _Limit(lambda r: r.logits_max_abs, False, lambda v: v >= 0, "must not be negative",
                             "logits max |diff| {value:.3g} exceeds {limit:g}"),
    "min_top1_agreement": _Limit(lambda r: r.top1_agreement, True, lambda v: 0 <= v <= 1, "is a share in [0, 1]",
                                 "top-1 agreement {value:.2%} is below {limit:.2%}"),
    "min_cosine": _Limit(lambda r: r.cosine, True, lambda v: -1 <= v <= 1, "must be in [-1, 1]",
                         "cosine {value:.6f} is below {limit:g}"),
    "max_kl": _Limit(lambda r: r.kl_divergence, False, lambda v: v >= 0, "is in nats and must not be negative",
                     "KL divergence {value:.3g} exceeds {limit:g}"),
}


@dataclass(frozen=True)
class Tolerance:
    """Limits on how far a test run may stray from the reference; None leaves a limit unchecked.

    Each limit is spelled in errors as the command-line option of the same name (bench's gates:
    --max-top1-drop, --min-top1-agreement, --min-cosine). A value at a limit passes; NaN never does.
    """

    max_top1_drop: float | None = None  # accuracy points (0-100) below the reference's; checked only where labels give accuracy
    max_logit_diff: float | None = None  # largest |logit difference| over all outputs
    min_top1_agreement: float | None = None  # share (0-1) of inputs with the reference's top-1
    min_cosine: float | None = None  # mean per-input cosine similarity of the logits
    max_kl: float | None = None  # mean KL(reference probs || test probs), nats

    def __post_init__(self) -> None:
        for name, lim in _LIMITS.items():
            v = getattr(self, name)
            if v is None:
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ConfigError(f"{flag} must be a number, got {v!r}")
            if not lim.valid(float(v)):  # NaN included: it compares false
                raise ConfigError(f"{flag} {lim.rule}, got {v}")

    @property
    def limits(self) -> dict[str, float]:
        """The limits that are set, in checking order."""
        return {name: getattr(self, name) for name in _LIMITS if getattr(self, name) is not None}

    def check(self, report: Measured) -> list[ToleranceResult]:
        """One result per set limit whose quantity `report` measured, in checking order."""
        results = []
        for name, bound in self.limits.items():
            lim = _LIMITS[name]
            value = lim.measure(report)
            if value is None:
                continue
            passed = value >= bound if lim.floor else value <= bound
            results.append(ToleranceResult(name, bound, value, bool(passed)))
        return results

    def to_dict(self, *names: str) -> dict[str, float | None]:
        """The limits `names` (default: all), None where unset: a file format writes the limits it
        has always written. A set limit left out would be lost on reading, so it is refused."""
        names = names or tuple(_LIMITS)
        unknown = [n for n in names if n not in _LIMITS]
        if unknown:
            raise ValueError(f"no tolerance limit {', '.join(unknown)}; the limits are {', '.join(_LIMITS)}")
        dropped = [n for n in self.limits if n not in names]
        if dropped:
            raise ValueError(f"{', '.join(dropped)} is set but not among the limits written ({', '.join(names)})")
        return {n: getattr(self, n) for n in names}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Tolerance:
        """A tolerance as `to_dict` wrote it (absent limits unset); an unknown key is refused, not ignored."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a tolerance is a JSON object of limits ({', '.join(_LIMITS)}), got {d!r}")
        unknown = sorted(set(d) - set(_LIMITS))
        if unknown:
            raise ConfigError(f"unknown tolerance limit(s) {', '.join(map(repr, unknown))}; the limits are {', '.join(_LIMITS)}")
        return cls(**d)


@dataclass
class ParityReport:
    n: int
    logits_max_abs: float
    logits_mean_abs: float
    probs_max_abs: float
    probs_mean_abs: float
    cosine: float  # mean per-sample cosine similarity of the logits
    top1_agreement: float
    cam_max_abs: float
    kl_divergence: float = 0.0  # mean KL(reference probs || test probs), nats
    cam_correlation: float = 1.0  # mean per-image Pearson correlation of the CAMs
    cam_iou_top20: float = 1.0  # mean per-image IoU of the CAMs' top-20% regions
    accuracy: float | None = None  # with labels: top-1 accuracy of the test outputs
    reference_accuracy: float | None = None
    accuracy_delta: float | None = None  # accuracy - reference_accuracy
    max_logit_tolerance: float | None = None
    min_top1_agreement: float | None = None
    failures: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self, title: str = "parity") -> str:
        rows = [
            ("images", f"{self.n}"),
            ("logits max |diff|", f"{self.logits_max_abs:.3g}"),
            ("logits mean |diff|", f"{self.logits_mean_abs:.3g}"),
            ("probs max |diff|", f"{self.probs_max_abs:.3g}"),
            ("probs mean |diff|", f"{self.probs_mean_abs:.3g}"),
            ("cosine (logits)", f"{self.cosine:.6f}"),
            ("top-1 agreement", f"{self.top1_agreement:.2%}"),
            ("KL divergence (probs)", f"{self.kl_divergence:.3g}"),
            ("CAM max |diff|", f"{self.cam_max_abs:.3g}"),
            ("CAM correlation", f"{self.cam_correlation:.4f}"),
            ("CAM top-20% IoU", f"{self.cam_iou_top20:.4f}"),
        ]
        if self.accuracy is not None:
            rows.append(("accuracy (reference)", f"{self.accuracy:.4f} ({self.reference_accuracy:.4f}, {self.accuracy_delta:+.4f})"))
        width = max(len(k) for k, _ in rows)
        lines = [title] + [f"  {k:<{width}}  {v}" for k, v in rows]
        lines += [f"  FAIL: {f}" for f in self.failures]
        return "\n".join(lines)


def compare_outputs(
    reference: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    *,
    labels: np.ndarray | None = None,
    tolerance: Tolerance = Tolerance(),
) -> ParityReport:
    """Compare `logits`, `probs` and `cam` of two runs on the same inputs (and accuracy when the
    inputs' `labels` are known); the report's failures are the limits of `tolerance` it misses."""
    ref_l, out_l = reference["logits"].astype(np.float64), test["logits"].astype(np.float64)
    if ref_l.shape != out_l.shape:
        raise ValueError(f"logits shapes differ: {ref_l.shape} vs {out_l.shape}")
    dl = np.abs(ref_l - out_l)
    ref_p, out_p = reference["probs"].astype(np.float64), test["probs"].astype(np.float64)
    ref_c, out_c = reference["cam"].astype(np.float64), test["cam"].astype(np.float64)
    norms = np.linalg.norm(ref_l, axis=1) * np.linalg.norm(out_l, axis=1)
    cos = np.sum(ref_l * out_l, axis=1) / np.maximum(norms, 1e-30)
    agree = float(np.mean(ref_l.argmax(1) == out_l.argmax(1)))
    report = ParityReport(
        n=len(out_l),
        logits_max_abs=float(dl.max()),
        logits_mean_abs=float(dl.mean()),
        probs_max_abs=float(np.abs(ref_p - out_p).max()),
        probs_mean_abs=float(np.abs(ref_p - out_p).mean()),
        cosine=float(cos.mean()),
        top1_agreement=agree,
        cam_max_abs=float(np.abs(ref_c - out_c).max()),
        kl_divergence=kl_divergence(ref_p, out_p),
        cam_correlation=cam_correlation(ref_c, out_c),
        cam_iou_top20=cam_top_iou(ref_c, out_c, 0.20),
        max_logit_tolerance=tolerance.max_logit_diff,
        min_top1_agreement=tolerance.min_top1_agreement,
    )
    if labels is not None:
        labels = np.asarray(labels)
        report.accuracy = float(np.mean(out_l.argmax(1) == labels))
        report.reference_accuracy = float(np.mean(ref_l.argmax(1) == labels))
        report.accuracy_delta = report.accuracy - report.reference_accuracy
    report.failures = [r.line for r in tolerance.check(report) if not r.passed]
    return report


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> float:
    """Mean over rows of KL(p || q) in nats; probabilities are clipped at `eps` (an FP16 softmax
    can round a small probability to zero)."""
    p, q = np.clip(p, eps, 1.0), np.clip(q, eps, 1.0)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def cam_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image Pearson correlation; a constant map agrees only with a constant map."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    flat_a, flat_b = na < 1e-12, nb < 1e-12
    r = np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-24)
    r = np.where(flat_a | flat_b, (flat_a & flat_b).astype(np.float64), r)
    return float(r.mean())


def cam_top_iou(a: np.ndarray, b: np.ndarray, share: float = 0.20) -> float:
    """Mean per-image IoU of the `share` of cells with the highest values (ties broken by rank)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    k = max(1, int(round(share * a.shape[1])))
    top_a = np.zeros(a.shape, bool)
    top_b = np.zeros(b.shape, bool)
    np.put_along_axis(top_a, np.argsort(-a, axis=1, kind="stable")[:, :k], True, axis=1)
    np.put_along_axis(top_b, np.argsort(-b, axis=1, kind="stable")[:, :k], True, axis=1)
    return float(np.mean((top_a & top_b).sum(1) / (top_a | top_b).sum(1)))


def parity_inputs(prep: Modality, data: Path | None, n: int, seed: int = 0) -> np.ndarray:
    """Up to `n` preprocessed real inputs from `data` (any depth), or `n` random inputs (audio:
    white noise at -20 dBFS, images: standard normal)."""
    if data is None:
        return prep.random_inputs(n, seed)
    from tldeploy.data.folders import find_files

    paths = find_files(Path(data), media=prep.media)
    step = max(1, len(paths) // n)
    return np.stack([prep.load(p) for p in paths[::step][:n]]).astype(np.float32)
