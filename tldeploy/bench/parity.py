"""Parity of a deployed artifact's outputs against the PyTorch reference, as an object.

A `ParityReport` is truthy when it passes its tolerances, serialises to JSON and prints as a
short table, like Polygraphy's comparator results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


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
            ("CAM max |diff|", f"{self.cam_max_abs:.3g}"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [title] + [f"  {k:<{width}}  {v}" for k, v in rows]
        lines += [f"  FAIL: {f}" for f in self.failures]
        return "\n".join(lines)


def compare_outputs(
    reference: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    *,
    max_logit_diff: float | None = None,
    min_top1_agreement: float | None = None,
) -> ParityReport:
    """Compare `logits`, `probs` and `cam` of two runs on the same inputs."""
    ref_l, out_l = reference["logits"].astype(np.float64), test["logits"].astype(np.float64)
    if ref_l.shape != out_l.shape:
        raise ValueError(f"logits shapes differ: {ref_l.shape} vs {out_l.shape}")
    dl = np.abs(ref_l - out_l)
    dp = np.abs(reference["probs"].astype(np.float64) - test["probs"].astype(np.float64))
    dc = np.abs(reference["cam"].astype(np.float64) - test["cam"].astype(np.float64))
    norms = np.linalg.norm(ref_l, axis=1) * np.linalg.norm(out_l, axis=1)
    cos = np.sum(ref_l * out_l, axis=1) / np.maximum(norms, 1e-30)
    agree = float(np.mean(ref_l.argmax(1) == out_l.argmax(1)))
    report = ParityReport(
        n=len(out_l),
        logits_max_abs=float(dl.max()),
        logits_mean_abs=float(dl.mean()),
        probs_max_abs=float(dp.max()),
        probs_mean_abs=float(dp.mean()),
        cosine=float(cos.mean()),
        top1_agreement=agree,
        cam_max_abs=float(dc.max()),
        max_logit_tolerance=max_logit_diff,
        min_top1_agreement=min_top1_agreement,
    )
    if max_logit_diff is not None and report.logits_max_abs > max_logit_diff:
        report.failures.append(f"logits max |diff| {report.logits_max_abs:.3g} exceeds {max_logit_diff:g}")
    if min_top1_agreement is not None and agree < min_top1_agreement:
        report.failures.append(f"top-1 agreement {agree:.2%} is below {min_top1_agreement:.2%}")
    return report
