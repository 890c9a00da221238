"""Disagreement search: inputs within a small budget of a validation input on which a deployed
artifact's top-1 differs from its reference's.

An artifact agrees with its reference wherever the reference is sure; it can disagree only where
the reference's margin (top-1 logit minus the runner-up) is smaller than the artifact's numeric
error. So the search walks each input towards the reference's nearest decision boundary and looks
there: projected signed-gradient descent on the reference's margin (`steps` steps of eps/4, within
the L-infinity ball, in the units of `attacks.Domain`); once a step crosses the boundary, `bisect`
halvings of that step close in on it. Every point visited is put to every artifact, and an input
counts as found for an artifact at the first point where the two top-1s differ.

The gradient is the reference's, not the artifact's (an ONNX Runtime or TensorRT artifact has
none): the path is the same for every artifact and costs `steps` forward/backward passes of the
reference and `steps + bisect` forward passes of each artifact per input. An artifact that is the
reference's function to float precision is found only at margins of that order; one that is
not shows how far "agrees on clean data" carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tldeploy.bench.robustness.attacks import Domain

STEPS = 10
BISECT = 10
EXAMPLES = 10  # found inputs described per artifact and budget in the report


@dataclass
class Found:
    """Per artifact and budget: how many of the searched inputs it disagreed on, and where."""

    epsilon: float
    searched: int = 0
    clean_disagreements: int = 0  # already unlike the reference before any nudge (not searched)
    examples: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[np.ndarray] = field(default_factory=list)  # the raw disagreeing inputs (not in the bench document)
    rows: list[int] = field(default_factory=list)  # their indices in the searched inputs

    def add(self, row: int, example: dict[str, Any], x: np.ndarray) -> None:
        self.rows.append(row)
        self.examples.append(example)
        self.inputs.append(x)

    @property
    def found(self) -> int:
        return len(self.inputs)

    def to_dict(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "searched": self.searched, "clean_disagreements": self.clean_disagreements,
                "found": self.found, "examples": self.examples[:EXAMPLES]}


def search_disagreements(model, dom: Domain, raw: np.ndarray, artifacts: list[Any], epsilons: tuple[float, ...],
                         paths: list[Path] | None = None, steps: int = STEPS, bisect: int = BISECT,
                         batch: int = 16) -> dict[str, list[Found]]:
    """Per artifact (objects with .name and .runner), one `Found` per budget in `epsilons`.

    Budgets are searched smallest first, and what one finds counts for every larger one without
    a new search: within eps is within any larger eps, so the counts never fall as eps grows."""
    out = {a.name: [Found(eps) for eps in epsilons] for a in artifacts}
    known: dict[str, dict[int, tuple[dict[str, Any], np.ndarray]]] = {a.name: {} for a in artifacts}
    for k in sorted(range(len(epsilons)), key=lambda k: epsilons[k]):
        for i in range(0, len(raw), batch):
            _search_batch(model, dom, raw[i : i + batch], i, epsilons[k], artifacts, {a.name: out[a.name][k] for a in artifacts},
                          known, paths, steps, bisect)
        for a in artifacts:
            f = out[a.name][k]
            known[a.name].update({r: (ex, x) for r, ex, x in zip(f.rows, f.examples, f.inputs, strict=True)})
    return out


def _search_batch(model, dom: Domain, x0_np: np.ndarray, offset: int, eps: float, artifacts: list[Any], found: dict[str, Found],
                  known: dict[str, dict[int, tuple[dict[str, Any], np.ndarray]]], paths: list[Path] | None, steps: int,
                  bisect: int) -> None:
    import torch

    e = eps * dom.unit
    dev = next(model.parameters()).device  # where the reference runs
    x0 = torch.from_numpy(x0_np).to(dev)
    with torch.no_grad():
        y = model(dom.torch_input(x0)).argmax(1)
    open_ = {a.name: _top1(a, dom, x0_np) == y.cpu().numpy() for a in artifacts}  # clean disagreements are not searched
    for a in artifacts:
        found[a.name].searched += int(open_[a.name].sum())
        found[a.name].clean_disagreements += int((~open_[a.name]).sum())
        for r in np.flatnonzero(open_[a.name]):
            if offset + r in known[a.name]:  # found within a smaller budget
                found[a.name].add(offset + r, *known[a.name][offset + r])
                open_[a.name][r] = False

    def visit(x: torch.Tensor, rows: np.ndarray) -> np.ndarray:
        """Put points `x` (of batch rows `rows`) to every artifact; returns the reference's top-1 there."""
        with torch.no_grad():
            logits = model(dom.torch_input(x))
        ref = logits.argmax(1).cpu().numpy()
        p = torch.softmax(logits, 1).topk(2, dim=1).values.cpu().numpy()
        points = x.cpu().numpy()
        for a in artifacts:
            mine = _top1(a, dom, points)
            for j in np.flatnonzero((mine != ref) & open_[a.name][rows]):
                r = rows[j]
                open_[a.name][r] = False
                found[a.name].add(offset + r, {
                    "input": _name(paths[offset + r]) if paths else offset + r, "linf": float((x[j] - x0[r]).abs().max() / dom.unit),
                    "reference_class": int(ref[j]), "artifact_class": int(mine[j]), "reference_margin": float(p[j, 0] - p[j, 1])},
                    points[j].copy())
        return ref

    x = x0.clone()
    walking = np.ones(len(x0), bool)
    for _ in range(steps):
        rows = np.flatnonzero(walking & np.any([open_[a.name] for a in artifacts], axis=0))
        if not len(rows):
            break
        at = torch.from_numpy(rows).to(dev)
        xs, ys = x[at].clone().requires_grad_(True), y[at]
        logits = model(dom.torch_input(xs))
        top = logits.gather(1, ys[:, None])[:, 0]
        rival = logits.scatter(1, ys[:, None], float("-inf")).max(1).values
        (grad,) = torch.autograd.grad((top - rival).sum(), xs)
        prev = xs.detach()
        nxt = dom.project(prev - e / 4 * grad.sign(), x0[at], e)
        x[at] = nxt
        crossed = visit(nxt, rows) != ys.cpu().numpy()
        if crossed.any():  # the boundary lies between prev and nxt: close in on it
            sel = torch.from_numpy(crossed).to(dev)
            _bisect(prev[sel], nxt[sel], rows[crossed], ys[sel].cpu().numpy(), visit, bisect)
            walking[rows[crossed]] = False


def _bisect(lo, hi, rows: np.ndarray, y: np.ndarray, visit, times: int) -> None:
    """Halve [lo, hi] (the reference says y at lo, something else at hi) `times` times, visiting each midpoint."""
    import torch

    for _ in range(times):
        mid = (lo + hi) / 2
        same = torch.from_numpy(visit(mid, rows) == y).to(mid.device).reshape(-1, *[1] * (mid.dim() - 1))
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)


def _top1(artifact, dom: Domain, raw: np.ndarray) -> np.ndarray:
    from tldeploy.runtime.runners import run_batches

    return run_batches(artifact.runner, dom.to_input(raw))["logits"].argmax(1)


def _name(path: Path) -> str:
    """The file as a report names it: its class folder and name."""
    return f"{path.parent.name}/{path.name}"
