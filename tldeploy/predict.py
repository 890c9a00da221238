"""`tldeploy predict`: top-k classes and CAM overlays from a checkpoint, an ONNX file or an engine.

Images get the CAM blended over the image as the network saw it; audio clips get it drawn over
their log-mel spectrogram (a time-frequency map: mel bands up, time across).

Preprocessing always comes from the artifact itself (checkpoint metadata, ONNX contract, or an
engine's build record); inference goes through the common runner interface.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tldeploy._io import atomic_path, probe_output
from tldeploy.errors import ConfigError, DataError, TldeployError
from tldeploy.modalities.base import Modality
from tldeploy.ood import OodGate

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class Prediction:
    image: str
    top: list[dict]  # [{"class", "index", "prob"}], best first
    cam_png: str | None = None
    cam: np.ndarray | None = field(default=None, repr=False)
    unknown: bool | None = None  # beyond the artifact's OOD threshold; None without a gate (or with --no-ood)
    ood_score: float | None = None
    ood_threshold: float | None = None

    def to_dict(self) -> dict:
        d = {"image": self.image, "top": self.top, "cam_png": self.cam_png}
        if self.unknown is not None:
            d.update({"unknown": self.unknown, "ood_score": self.ood_score, "ood_threshold": self.ood_threshold})
        return d


def load_artifact(path: Path, device: str = "cpu") -> tuple[list[str], Modality, Runner, OodGate | None]:
    """(classes, preprocessing, run, OOD gate) for any artifact: checkpoint, ONNX file or TensorRT engine."""
    from tldeploy.contract import OUTPUT_NAMES
    from tldeploy.runtime.loader import load_runner
    from tldeploy.runtime.runners import artifact_contract, run_batches

    path = Path(path)
    if not path.exists():
        raise TldeployError(f"artifact {path} does not exist; pass a model.pt from 'tldeploy train', an .onnx from 'tldeploy export' or an artifact from 'tldeploy build'")
    contract = artifact_contract(path)
    runner = load_runner(path, device=device)

    def run(x: np.ndarray):
        with runner:
            outs = run_batches(runner, x)
        return tuple(outs[k] for k in OUTPUT_NAMES)

    return contract.classes, contract.preprocessing, run, contract.ood


def predict(artifact: Path, images: list[Path], top_k: int = 5, cam_out: Path | None = None, force: bool = False,
            ood: bool = True) -> list[Prediction]:
    """Top-k classes per input; with the artifact's OOD gate (unless `ood=False`) each is also
    marked unknown or known. An artifact made before OOD gates says so once and answers as before."""

    if not images:
        raise ConfigError("no inputs given; pass one or more image or audio files after the artifact")
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    if cam_out is not None:
        probe_output(Path(cam_out) / "cam.png")  # an unwritable --cam-out is found before any work
    classes, prep, run, gate = load_artifact(artifact)
    if ood and gate is None:
        log.warning("%s has no OOD threshold (made before tldeploy fitted one, or trained with --ood-score none); "
                    "every input gets one of its classes", artifact)
    sources = []  # what the overlays are drawn on: PIL images, or fitted clips
    for p in images:
        p = Path(p)
        if not p.is_file():
            raise DataError(f"input {p} does not exist")
        sources.append(prep.read_source(p))
    x = np.stack([prep.source_input(src) for src in sources]).astype(np.float32)
    logits, probs, cam = run(x)
    scores = gate.scores(logits) if ood and gate is not None else None
    results = []
    for i, p in enumerate(images):
        order = np.argsort(-probs[i])[: min(top_k, len(classes))]
        top = [{"class": classes[j], "index": int(j), "prob": float(probs[i, j])} for j in order]
        r = Prediction(str(p), top, cam=cam[i])
        if scores is not None and gate is not None:
            r.unknown, r.ood_score, r.ood_threshold = bool(scores[i] > gate.threshold), float(scores[i]), gate.threshold
        results.append(r)
    if cam_out is not None:
        _write_overlays(Path(cam_out), images, sources, results, prep, force)
    return results


def _write_overlays(out: Path, paths, sources, results: list[Prediction], prep: Modality, force: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    targets = []
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        target = out / (f"{stem}_cam.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}_cam.png")
        if target.exists() and not force:
            raise TldeployError(f"{target} already exists; pass --force to overwrite it")
        targets.append(target)
    for target, src, r in zip(targets, sources, results, strict=True):
        best = r.top[0]
        with atomic_path(target) as tmp:
            prep.write_overlay(tmp, src, r.cam, f"{Path(r.image).name}: {best['class']} ({best['prob']:.2f})")
        r.cam_png = str(target)
