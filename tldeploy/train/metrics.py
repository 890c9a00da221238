"""Classification metrics (scikit-learn) and their plots (matplotlib)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tldeploy._io import save_png


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, one-vs-rest ROC AUC, per-class scores, confusion matrix."""
    from sklearn import metrics as M

    y_true = np.asarray(y_true)
    y_pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    p, r, f, support = M.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out: dict[str, Any] = {
        "accuracy": float(M.accuracy_score(y_true, y_pred)),
        "precision_macro": float(p.mean()),
        "recall_macro": float(r.mean()),
        "f1_macro": float(f.mean()),
        "roc_auc_ovr": _roc_auc(y_true, probs, labels),
        "log_loss": float(M.log_loss(y_true, np.clip(probs, 1e-7, 1.0), labels=labels)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": M.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
        "n": int(len(y_true)),
    }
    return out


def _roc_auc(y_true: np.ndarray, probs: np.ndarray, labels: list[int]) -> float | None:
    """None when undefined (a class absent from the validation set)."""
    from sklearn.metrics import roc_auc_score

    if len(set(y_true.tolist())) < len(labels):
        return None
    p = probs / probs.sum(axis=1, keepdims=True)
    if len(labels) == 2:
        return float(roc_auc_score(y_true, p[:, 1]))
    return float(roc_auc_score(y_true, p, multi_class="ovr", labels=labels))


def write_plots(out_dir: Path, y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> list[Path]:
    """PR curves, ROC curves (one-vs-rest per class) and the confusion matrix as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y_true = np.asarray(y_true)
    written = []
    for kind, display in (("pr_curves", PrecisionRecallDisplay), ("roc_curves", RocCurveDisplay)):
        fig, ax = plt.subplots(figsize=(7, 6))
        for i, c in enumerate(classes):
            if not (y_true == i).any():
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                display.from_predictions(y_true == i, probs[:, i], name=f"class {c}", ax=ax, plot_chance_level=False)
        ax.set_title("Precision-recall (one vs rest)" if kind == "pr_curves" else "ROC (one vs rest)")
        ax.legend(fontsize="small", loc="lower left" if kind == "pr_curves" else "lower right")
        written.append(_save(fig, out_dir / f"{kind}.png"))
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(classes) + 2),) * 2)
    ConfusionMatrixDisplay.from_predictions(
        y_true, probs.argmax(axis=1), labels=list(range(len(classes))), display_labels=classes, ax=ax, colorbar=False
    )
    ax.set_title("Confusion matrix (validation)")
    written.append(_save(fig, out_dir / "confusion_matrix.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return save_png(fig, path)
