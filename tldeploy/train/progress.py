"""What a run has reached so far: the epochs' history, the best score and weights, and the
pseudo-labels; saved in RUN_DIR/last.pt after every epoch so that `--resume` picks it up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tldeploy.models.checkpoints import plain


@dataclass
class Progress:
    history: list[dict[str, Any]] = field(default_factory=list)
    # (selection metric, -log loss): ties on the metric go to the lower log loss.
    best_score: tuple[float, float] = (-1.0, 0.0)
    # The best weights, in memory; last.pt does not hold them (model.pt does).
    best_state: dict[str, torch.Tensor] | None = None
    pseudo_paths: list[Path] = field(default_factory=list)
    pseudo_labels: list[int] = field(default_factory=list)
    pseudo_report: list[dict[str, Any]] = field(default_factory=list)
    pseudo_done: bool = False  # a round added nothing: later rounds would add nothing either

    def to_state(self) -> dict[str, Any]:
        """The plain-data part of last.pt (loadable with weights_only=True)."""
        return {
            "best_score": list(self.best_score),
            "history": plain(self.history),
            "pseudo_paths": [str(p) for p in self.pseudo_paths],
            "pseudo_labels": self.pseudo_labels,
            "pseudo_report": plain(self.pseudo_report),
            "pseudo_done": self.pseudo_done,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], best_state: dict[str, torch.Tensor] | None) -> Progress:
        return cls(
            history=list(state["history"]),
            best_score=tuple(state["best_score"]),  # type: ignore[arg-type]
            best_state=best_state,
            pseudo_paths=[Path(p) for p in state["pseudo_paths"]],
            pseudo_labels=list(state["pseudo_labels"]),
            pseudo_report=list(state["pseudo_report"]),
            pseudo_done=bool(state["pseudo_done"]),
        )
