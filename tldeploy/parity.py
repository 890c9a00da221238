"""Parity of a deployed artifact's outputs against the PyTorch reference, as an object.

A `ParityReport` is truthy when it passes its tolerances, serialises to JSON and prints as a
short table, like Polygraphy's comparator results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tldeploy.modalities.base import Modality


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
    max_logit_diff: float | None = None,
    min_top1_agreement: float | None = None,
) -> ParityReport:
    """Compare `logits`, `probs` and `cam` of two runs on the same inputs (and accuracy when the
    inputs' `labels` are known)."""
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
        max_logit_tolerance=max_logit_diff,
        min_top1_agreement=min_top1_agreement,
    )
    if labels is not None:
        labels = np.asarray(labels)
        report.accuracy = float(np.mean(out_l.argmax(1) == labels))
        report.reference_accuracy = float(np.mean(ref_l.argmax(1) == labels))
        report.accuracy_delta = report.accuracy - report.reference_accuracy
    if max_logit_diff is not None and report.logits_max_abs > max_logit_diff:
        report.failures.append(f"logits max |diff| {report.logits_max_abs:.3g} exceeds {max_logit_diff:g}")
    if min_top1_agreement is not None and agree < min_top1_agreement:
        report.failures.append(f"top-1 agreement {agree:.2%} is below {min_top1_agreement:.2%}")
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
