"""Unknown inputs: an out-of-distribution score from the logits and the threshold that keeps a
chosen share of in-distribution inputs, calibrated at the end of training and carried in the
checkpoint's metadata and the ONNX contract (plain data, never evaluated).

Scores grow with how out-of-distribution an input looks:
- `energy` (Liu et al., 2020): E(x) = -T * logsumexp(logits / T);
- `msp` (Hendrycks & Gimpel, 2017): the negated maximum softmax probability.

The threshold is the `tpr` quantile of the validation set's scores, so that share of
in-distribution inputs stays known; an input scoring above it is `unknown`. Every backend decides
from its own logits with the same function, so a deployed artifact and its reference decide alike
unless their logits differ (bench measures how often they do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tldeploy.errors import ConfigError

OOD_SCORES = ("energy", "msp")


def ood_scores(logits: np.ndarray, kind: str, temperature: float = 1.0) -> np.ndarray:
    """(N,) scores, higher = more out-of-distribution."""
    from scipy.special import logsumexp, softmax

    z = np.asarray(logits, dtype=np.float64)
    if kind == "energy":
        return -float(temperature) * logsumexp(z / float(temperature), axis=1)
    if kind == "msp":
        return -softmax(z, axis=1).max(axis=1)
    raise ConfigError(f"--ood-score must be one of {', '.join(OOD_SCORES)}, got {kind!r}")


@dataclass(frozen=True)
class OodGate:
    kind: str
    temperature: float
    threshold: float  # scores above it are unknown
    tpr: float  # the share of in-distribution validation inputs the threshold keeps (asked for)
    kept: float  # the share it kept on the validation set it was fitted on
    n: int  # validation inputs it was fitted on

    @staticmethod
    def check(tpr: float, temperature: float) -> None:
        """A one-line ConfigError for settings no gate can be fitted with (also checked before training)."""
        if not 0.5 <= tpr < 1.0:
            raise ConfigError(f"--ood-tpr must be in [0.5, 1), got {tpr}")
        if temperature <= 0:
            raise ConfigError(f"--ood-temperature must be positive, got {temperature}")

    @classmethod
    def fit(cls, logits: np.ndarray, kind: str = "energy", tpr: float = 0.95, temperature: float = 1.0) -> OodGate:
        cls.check(tpr, temperature)
        s = ood_scores(logits, kind, temperature)
        if len(s) < 2:
            raise ConfigError("an OOD threshold needs at least two validation inputs")
        threshold = float(np.quantile(s, tpr, method="higher"))
        return cls(kind, float(temperature), threshold, float(tpr), float(np.mean(s <= threshold)), int(len(s)))

    def scores(self, logits: np.ndarray) -> np.ndarray:
        return ood_scores(logits, self.kind, self.temperature)

    def unknown(self, logits: np.ndarray) -> np.ndarray:
        """(N,) bool: inputs beyond the threshold."""
        return self.scores(logits) > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "temperature": self.temperature, "threshold": self.threshold, "tpr": self.tpr,
                "kept": self.kept, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> OodGate | None:
        """The gate a checkpoint or contract carries; None for artifacts made before OOD fields."""
        if not d:
            return None
        try:
            gate = cls(str(d["kind"]), float(d["temperature"]), float(d["threshold"]), float(d["tpr"]), float(d["kept"]), int(d["n"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"the OOD metadata is incomplete ({type(e).__name__}: {e}); re-train or re-export") from None
        if gate.kind not in OOD_SCORES:
            raise ConfigError(f"unknown OOD score {gate.kind!r} in the metadata; this tldeploy knows {', '.join(OOD_SCORES)}")
        return gate

    def describe(self) -> str:
        return (f"{self.kind} score (T={self.temperature:g}) > {self.threshold:.4g} is unknown; "
                f"keeps {self.kept:.1%} of {self.n} validation inputs (asked {self.tpr:.0%})")
