"""White-box attacks on the PyTorch reference, in the space the input is made from.

Adversarial examples are crafted on the reference with its gradients (FGSM, and PGD from a random
start) under an L-infinity budget counted where a user counts: pixel levels of 255 for images (the
image as the network sees it, resized and cropped, then normalised by the contract), 1/255 of full
scale for audio clips (the front end is in the graph). Our own few lines rather than torchattacks:
the attack must run through the contract's normalisation in these units, which torchattacks'
[0, 1] inputs do not, and the two methods are a loop each.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tldeploy.modalities.base import PerturbationDomain

if TYPE_CHECKING:
    from tldeploy.modalities.base import Modality

ATTACKS = ("fgsm", "pgd")
PGD_STEPS = 10


class Domain(PerturbationDomain):
    """Where attacks act (the modality's `PerturbationDomain`), with the arithmetic they need."""

    @classmethod
    def of(cls, prep: Modality) -> Domain:
        d = prep.perturbation_domain()
        return cls(**{f.name: getattr(d, f.name) for f in fields(d)})

    def raw(self, paths: list[Path], prep: Modality) -> np.ndarray:
        """The raw inputs: images as the network sees them (N, 3, S, S) in 0-255, or fitted clips (N, samples)."""
        return prep.perturbation_inputs(paths)

    def to_input(self, raw: np.ndarray) -> np.ndarray:
        return ((raw - self.shift) / self.scale).astype(np.float32)

    def torch_input(self, raw):
        import torch

        return (raw - torch.from_numpy(self.shift).to(raw.device)) / torch.from_numpy(self.scale).to(raw.device)

    def project(self, x, x0, eps: float):
        """`x` back into the eps-ball around `x0` and the valid range (torch tensors)."""
        import torch

        return torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(self.lo, self.hi)


def attack(model, dom: Domain, raw: np.ndarray, labels: np.ndarray, eps: float, method: str = "pgd", steps: int = PGD_STEPS,
           seed: int = 0, batch: int = 32) -> np.ndarray:
    """Adversarial raw inputs within `eps` budget units of `raw`, crafted on `model` (the PyTorch
    reference): FGSM (one signed-gradient step of eps) or PGD (`steps` steps of eps/4 from a
    uniform random start, each projected back to the eps-ball and the valid range)."""
    import torch

    e = eps * dom.unit
    dev = next(model.parameters()).device  # where the reference runs
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(raw), batch):
        x0 = torch.from_numpy(raw[i : i + batch]).to(dev)
        y = torch.from_numpy(labels[i : i + batch]).long().to(dev)
        x = x0.clone()
        if method == "pgd":  # the start is drawn on the CPU: the same on any device
            x = dom.project(x0 + (torch.rand(x0.shape, generator=g) * 2 - 1).to(dev) * e, x0, e)
        for _ in range(1 if method == "fgsm" else steps):
            x.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(dom.torch_input(x)), y)
            (grad,) = torch.autograd.grad(loss, x)
            x = dom.project(x.detach() + (e if method == "fgsm" else e / 4) * grad.sign(), x0, e)
        out.append(x.detach().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def against_reference(logits: np.ndarray, reference: np.ndarray, is_reference: bool) -> dict[str, float | None]:
    """An entry's top-1 flip rate and largest logit difference against the reference's on the
    same inputs (None for the reference itself): the flips say what a user sees, the logit
    difference whether the artifact computes the reference's function at all."""
    if is_reference:
        return {"flip_rate": None, "logits_max_abs": None}
    return {"flip_rate": float(np.mean(logits.argmax(1) != reference.argmax(1))),
            "logits_max_abs": float(np.abs(logits.astype(np.float64) - reference).max())}


def attack_rows(entries: list[Any], model, dom: Domain, raw: np.ndarray, labels: np.ndarray, methods: tuple[str, ...],
                epsilons: tuple[float, ...], seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Per entry (entries[0] the reference), its accuracy on the reference's adversarial inputs for
    each method and budget, and its flips and logit difference against the reference there."""
    from tldeploy.runtime.runners import run_batches

    rows: dict[str, list[dict[str, Any]]] = {e.name: [] for e in entries}
    for method in methods:
        for eps in epsilons:
            x = dom.to_input(attack(model, dom, raw, labels, eps, method, seed=seed))
            logits = {e.name: run_batches(e.runner, x)["logits"] for e in entries}
            ref = logits[entries[0].name]
            for e in entries:
                rows[e.name].append({"method": method, "epsilon": eps, "accuracy": float(np.mean(logits[e.name].argmax(1) == labels)),
                                     **against_reference(logits[e.name], ref, e is entries[0])})
    return rows
