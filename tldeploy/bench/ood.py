"""bench --ood-data: does the deployed artifact still tell unknown inputs from known ones, and
decide as its reference does? Per entry, on --data (in-distribution) and the OOD folder: AUROC of
the artifact's OOD score, the share of in-distribution inputs its stored threshold keeps (TPR) and
of OOD inputs it lets through as known (FPR at that TPR), and the share of all those inputs on
which its unknown/known decision differs from the reference's (INT8 moves logits; the threshold
must still mean the same)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from tldeploy.errors import ConfigError
from tldeploy.records import OodRow


def measure_ood(entries: list[Any], base_contract, logits_in: dict[str, np.ndarray], x_out: np.ndarray,
                max_disagreement: float | None) -> tuple[dict[str, OodRow], list[str]]:
    """(per-entry rows, gate failure lines). `entries[0]` is the reference, whose decisions the
    others are compared with; `logits_in` holds each entry's logits on --data."""
    from sklearn.metrics import roc_auc_score

    from tldeploy.runtime.runners import run_batches

    base = base_contract.ood
    if base is None:
        raise ConfigError("--ood-data needs artifacts with an OOD threshold; retrain with tldeploy train (it fits one unless --ood-score none)")
    rows: dict[str, OodRow] = {}
    decisions: dict[str, np.ndarray] = {}
    failures: list[str] = []
    for e in entries:
        gate = e.contract.ood or base
        s_in = gate.scores(logits_in[e.name])
        s_out = gate.scores(run_batches(e.runner, x_out)["logits"])
        truth = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
        decisions[e.name] = np.r_[s_in, s_out] > gate.threshold
        rows[e.name] = OodRow(images=len(s_out), score=gate.kind, threshold=gate.threshold,
                              auroc=float(roc_auc_score(truth, np.r_[s_in, s_out])), tpr=float(np.mean(s_in <= gate.threshold)),
                              fpr_at_tpr=float(np.mean(s_out <= gate.threshold)))
    ref = entries[0].name
    for e in entries[1:]:
        d = float(np.mean(decisions[e.name] != decisions[ref]))
        rows[e.name] = replace(rows[e.name], disagreement=d)
        if max_disagreement is not None and d > max_disagreement:
            failures.append(f"{e.name}: unknown/known decisions differ from {ref}'s on {d:.2%} of inputs "
                            f"(--max-ood-disagreement {max_disagreement:.2%})")
    return rows, failures
