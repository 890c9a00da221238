"""`tldeploy shift`: how far target data is from what the model was trained on.

On pooled backbone features (global average of the feature map the head sees):
- the Fréchet distance between the source and target feature distributions (Gaussians fitted to
  each: |mu_s - mu_t|^2 + tr(S_s + S_t - 2 (S_s S_t)^(1/2)), as FID computes it);
- a domain classifier's cross-validated ROC AUC (scikit-learn: standardised features, logistic
  regression, stratified 5-fold): 0.5 means indistinguishable, 1.0 fully separable;
- the share of target inputs the model's OOD gate calls unknown, and the accuracy when the
  target folder has class folders.

The source side is the feature sample the checkpoint keeps from training (up to 512 training
inputs, float16), so the training images are not needed; `--source-data DIR` uses a folder
instead (and is required for checkpoints from before the sample was kept).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tldeploy._io import check_writable, now, write_json, write_text
from tldeploy.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShiftConfig:
    reference: Path  # RUN_DIR/model.pt
    data: Path  # target inputs: class folders (accuracy too) or a flat folder
    output: Path  # shift.json (shift.md and the plot beside it)
    source_data: Path | None = None
    limit: int | None = None  # at most this many target (and source-folder) inputs
    max_auc: float | None = None  # gate: fail when the domain classifier's AUC is above it
    folds: int = 5
    force: bool = False

    def __post_init__(self) -> None:
        if self.max_auc is not None and not 0.5 <= self.max_auc <= 1.0:
            raise ConfigError(f"--max-auc must be in [0.5, 1], got {self.max_auc}")
        if self.folds < 2:
            raise ConfigError(f"--folds must be at least 2, got {self.folds}")
        if Path(self.output).suffix != ".json":
            raise ConfigError(f"-o {self.output} should end in .json")


@dataclass
class ShiftResult:
    document: dict[str, Any]
    path: Path
    passed: bool


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of `a` and of `b`."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # With fewer samples than features the covariances are singular; a ridge of 1e-6 of their mean
    # variance keeps the square root defined (pytorch-fid adds such an offset when it is not).
    ridge = 1e-6 * float(np.mean(np.diag(s_a)) + np.mean(np.diag(s_b))) / 2 * np.eye(len(mu_a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = np.real(linalg.sqrtm((s_a + ridge) @ (s_b + ridge)))
    return float(max(0.0, np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * root)))


def domain_auc(source: np.ndarray, target: np.ndarray, folds: int = 5, seed: int = 0) -> tuple[float, int]:
    """Cross-validated ROC AUC of a logistic regression telling source rows from target rows, and
    the folds it used (at most the rows of the smaller side)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([source, target]).astype(np.float64)
    y = np.r_[np.zeros(len(source)), np.ones(len(target))]
    k = min(folds, len(source), len(target))
    if k < 2:
        raise ConfigError("the domain classifier needs at least two source and two target inputs")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    p = cross_val_predict(clf, x, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed), method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p)), k


def _features(model, x: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features, logits) of the checkpoint's model on inputs `x`."""
    import torch

    feats, logits = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            fmap = model.embed(torch.from_numpy(x[i : i + batch]))
            feats.append(fmap.float().mean(dim=(2, 3)).numpy())
            logits.append(model.head(fmap).float().numpy())
    return np.concatenate(feats), np.concatenate(logits)


def shift(cfg: ShiftConfig) -> ShiftResult:
    from tldeploy.data.folders import load_inputs
    from tldeploy.models.checkpoints import load_checkpoint_and_tensors
    from tldeploy.records import CheckpointMeta

    out = Path(cfg.output)
    check_writable(out, force=cfg.force)
    model, raw_meta, tensors = load_checkpoint_and_tensors(cfg.reference)
    if cfg.source_data is None and "source_features" not in tensors:
        raise ConfigError(f"{cfg.reference} keeps no source features (trained before tldeploy saved them); pass --source-data TRAIN_DIR")
    meta = CheckpointMeta.from_json(raw_meta, str(cfg.reference))
    prep, classes, gate = meta.preprocessing, list(meta.classes), meta.ood
    x, labels, _ = load_inputs(Path(cfg.data), classes, prep, cfg.limit)
    target, logits = _features(model, x)
    from_checkpoint = cfg.source_data is None
    if from_checkpoint:
        source = tensors["source_features"].float().numpy()
        source_what = f"the checkpoint's sample of {len(source)} training inputs"
        source_scores = tensors["val_ood_scores"].numpy() if "val_ood_scores" in tensors else None
    else:
        xs, _, _ = load_inputs(Path(cfg.source_data), classes, prep, cfg.limit, flag="--source-data")
        source, source_logits = _features(model, xs)
        source_what = f"{len(source)} inputs from {cfg.source_data}"
        source_scores = gate.scores(source_logits) if gate else None
    log.info("source: %s; target: %d inputs from %s", source_what, len(target), cfg.data)
    auc, folds = domain_auc(source, target, cfg.folds)
    fd = frechet_distance(source, target)
    target_scores = gate.scores(logits) if gate else None
    unknown = float(np.mean(target_scores > gate.threshold)) if gate else None
    accuracy = float(np.mean(logits.argmax(1) == labels)) if labels is not None else None
    passed = cfg.max_auc is None or auc <= cfg.max_auc
    doc = {
        "format": "tldeploy.shift", "created": now(), "reference": str(cfg.reference), "target": str(cfg.data),
        "source": source_what, "target_inputs": len(target), "features": int(target.shape[1]),
        "frechet_distance": fd, "domain_auc": auc, "domain_classifier": f"standardised logistic regression (C=0.1), {folds}-fold CV",
        "unknown_share": unknown, "ood": gate.to_dict() if gate else None, "accuracy": accuracy,
        "gate": {"max_auc": cfg.max_auc, "passed": passed},
    }
    plot = out.with_name(out.stem + "_ood_scores.png")
    if gate is not None and source_scores is not None:
        _plot(plot, source_scores, target_scores, gate, "validation" if from_checkpoint else "folder", str(cfg.data))
        doc["plot"] = plot.name
    write_json(out, doc)
    write_text(out.with_suffix(".md"), _markdown(doc))
    return ShiftResult(doc, out, passed)


def _plot(path: Path, source: np.ndarray, target: np.ndarray, gate, source_label: str, target_what: str) -> None:
    from matplotlib.figure import Figure

    from tldeploy._io import save_png

    fig = Figure(figsize=(6, 3.4), dpi=120)
    ax = fig.add_subplot()
    bins = np.linspace(min(source.min(), target.min()), max(source.max(), target.max()), 40)
    ax.hist(source, bins=bins, alpha=0.6, density=True, label=f"source ({source_label})")
    ax.hist(target, bins=bins, alpha=0.6, density=True, label=f"target ({Path(target_what).name})")
    ax.axvline(gate.threshold, color="k", linestyle="--", label="unknown beyond")
    ax.set_xlabel(f"{gate.kind} score (higher: less like the training data)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def _markdown(doc: dict[str, Any]) -> str:
    rows = [("source", doc["source"]), ("target", f"{doc['target_inputs']} inputs from {doc['target']}"),
            ("Fréchet distance (pooled features)", f"{doc['frechet_distance']:.4g}"),
            ("domain classifier AUC (0.5 = indistinguishable)", f"{doc['domain_auc']:.4f}"),
            ("unknown share (OOD gate)", "no gate" if doc["unknown_share"] is None else f"{doc['unknown_share']:.2%}"),
            ("accuracy", "no class folders" if doc["accuracy"] is None else f"{doc['accuracy']:.4f}")]
    g = doc["gate"]
    lines = [f"# shift: {doc['target']}", "", "| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    if g["max_auc"] is not None:
        lines.append(f"gate --max-auc {g['max_auc']}: {'passed' if g['passed'] else 'FAILED'}")
    if doc.get("plot"):
        lines += ["", f"![OOD scores]({doc['plot']})"]
    return "\n".join(lines) + "\n"
