"""Robustness parity: does the deployed artifact break where its reference does?

Corruptions (images) follow ImageNet-C's definitions (Hendrycks & Dietterich, 2019) at three of
its five severities (1, 3, 5), written here in NumPy and Pillow; spatial parameters are given for
224 px and scaled to the image's shorter side. They act on the raw image, before the contract's
preprocessing, seeded per image. Per corruption and severity: each entry's accuracy, and the share
of inputs whose top-1 differs from the reference's on the same corrupted input (the artifact's
own flips, apart from the corruption's effect on the reference).

Adversarial examples are crafted white-box on the PyTorch reference (FGSM and PGD, L-infinity,
epsilon in pixel levels of 255, in the raw-pixel domain of the image as the network sees it, then
normalised): the reference's accuracy under attack, and each artifact's accuracy on the same
adversarial inputs (transfer to the deployed precision). A few lines of our own rather than
torchattacks: the attack must run through the contract's normalisation in pixel units, and the
two methods are ten lines.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

SEVERITIES = (1, 3, 5)


def _scale(img: Image.Image) -> float:
    return min(img.size) / 224.0


def gaussian_noise(img: Image.Image, s: int, rng: np.random.Generator) -> Image.Image:
    c = {1: 0.08, 3: 0.18, 5: 0.38}[s]
    x = np.asarray(img, np.float32) / 255
    return _image(x + rng.normal(0, c, x.shape))


def impulse_noise(img: Image.Image, s: int, rng: np.random.Generator) -> Image.Image:
    amount = {1: 0.03, 3: 0.09, 5: 0.27}[s]
    x = np.asarray(img, np.float32) / 255
    m = rng.random(x.shape)
    x = np.where(m < amount / 2, 0.0, np.where(m > 1 - amount / 2, 1.0, x))
    return _image(x)


def gaussian_blur(img: Image.Image, s: int, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur({1: 1, 3: 3, 5: 6}[s] * _scale(img)))


def motion_blur(img: Image.Image, s: int, rng: np.random.Generator) -> Image.Image:
    """A line kernel of ImageNet-C's radius at a random angle."""
    radius = max(1, int(round({1: 10, 3: 15, 5: 20}[s] * _scale(img) / 2)))
    k = np.zeros((2 * radius + 1, 2 * radius + 1), np.float32)
    angle = rng.uniform(-45, 45) * np.pi / 180
    for t in np.linspace(-radius, radius, 4 * radius + 1):
        k[int(round(radius + t * np.sin(angle))), int(round(radius + t * np.cos(angle)))] = 1
    k /= k.sum()
    x = np.asarray(img, np.float32) / 255
    from scipy.ndimage import convolve

    return _image(np.stack([convolve(x[..., c], k, mode="nearest") for c in range(3)], axis=-1))


def jpeg(img: Image.Image, s: int, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality={1: 25, 3: 15, 5: 7}[s])
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def brightness(img: Image.Image, s: int, rng: np.random.Generator) -> Image.Image:
    hsv = np.asarray(img.convert("HSV"), np.float32) / 255
    hsv[..., 2] = np.clip(hsv[..., 2] + {1: 0.1, 3: 0.3, 5: 0.5}[s], 0, 1)
    return Image.fromarray((hsv * 255).astype(np.uint8), "HSV").convert("RGB")


def contrast(img: Image.Image, s: int, rng: np.random.Generator) -> Image.Image:
    c = {1: 0.4, 3: 0.2, 5: 0.05}[s]
    x = np.asarray(img, np.float32) / 255
    m = x.mean(axis=(0, 1), keepdims=True)
    return _image((x - m) * c + m)


def pixelate(img: Image.Image, s: int, rng: np.random.Generator) -> Image.Image:
    c = {1: 0.6, 3: 0.4, 5: 0.25}[s]
    w, h = img.size
    return img.resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX).resize((w, h), Image.Resampling.BOX)


def _image(x: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))


CORRUPTIONS: dict[str, Callable[[Image.Image, int, np.random.Generator], Image.Image]] = {
    "gaussian_noise": gaussian_noise, "impulse_noise": impulse_noise, "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur, "jpeg": jpeg, "brightness": brightness, "contrast": contrast, "pixelate": pixelate,
}


def corrupted_inputs(paths: list[Path], prep, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """The contract's inputs for `paths` after corruption `name` at `severity` (seeded per file)."""
    from tldeploy.data.folders import load_image

    fn = CORRUPTIONS[name]
    out = []
    for i, p in enumerate(paths):
        rng = np.random.default_rng([seed, i, severity, list(CORRUPTIONS).index(name)])
        out.append(prep.source_input(fn(load_image(p), severity, rng)))
    return np.stack(out).astype(np.float32)


# ---------------------------------------------------------------- adversarial


def seen_pixels(paths: list[Path], prep) -> np.ndarray:
    """(N, 3, S, S) float32 RGB 0-255: each image as the network sees it, before normalising."""
    from tldeploy.data.folders import load_image

    return np.stack([np.asarray(prep.geometry()(load_image(p)), np.float32).transpose(2, 0, 1) for p in paths])


def attack(model, prep, pixels: np.ndarray, labels: np.ndarray, eps: float, method: str = "pgd", steps: int = 10,
           seed: int = 0, batch: int = 32) -> np.ndarray:
    """Adversarial raw pixels within `eps` (pixel levels) of `pixels`, crafted on `model` (the
    PyTorch reference) through the contract's normalisation: FGSM (one signed-gradient step) or PGD
    (`steps` steps of eps/4 from a random start, projected back to the eps-ball and [0, 255])."""
    import torch

    mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1) * 255
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(pixels), batch):
        x0 = torch.from_numpy(pixels[i : i + batch])
        y = torch.from_numpy(labels[i : i + batch]).long()
        x = x0.clone()
        if method == "pgd":
            x = (x0 + (torch.rand(x0.shape, generator=g) * 2 - 1) * eps).clamp(0, 255)
        for _ in range(1 if method == "fgsm" else steps):
            x.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model((x - mean) / std), y)
            (grad,) = torch.autograd.grad(loss, x)
            step = eps if method == "fgsm" else eps / 4
            x = torch.min(torch.max(x.detach() + step * grad.sign(), x0 - eps), x0 + eps).clamp(0, 255)
        out.append(x.detach().numpy())
    return np.concatenate(out).astype(np.float32)


def normalise(pixels: np.ndarray, prep) -> np.ndarray:
    mean = np.reshape(prep.mean, (1, 3, 1, 1)).astype(np.float32)
    std = np.reshape(prep.std, (1, 3, 1, 1)).astype(np.float32)
    return ((pixels / 255.0 - mean) / std).astype(np.float32)


def measure_robustness(entries: list[Any], prep, paths: list[Path], labels: np.ndarray, reference_model,
                       epsilons: tuple[float, ...] = (1.0, 4.0), corruptions: tuple[str, ...] = tuple(CORRUPTIONS),
                       seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per entry (entries[0] the reference): corruption rows (accuracy, flip rate against the
    reference on the same input) and attack rows (accuracy on the reference's adversarial inputs),
    and the mean corruption error relative to the reference."""
    from tldeploy.runtime.runners import run_batches

    ref = entries[0]
    rows: dict[str, dict[str, Any]] = {e.name: {"corruptions": [], "attacks": []} for e in entries}
    for name in corruptions:
        for s in SEVERITIES:
            x = corrupted_inputs(paths, prep, name, s, seed)
            top = {e.name: run_batches(e.runner, x)["logits"].argmax(1) for e in entries}
            for e in entries:
                rows[e.name]["corruptions"].append({
                    "corruption": name, "severity": s, "accuracy": float(np.mean(top[e.name] == labels)),
                    "flip_rate": None if e is ref else float(np.mean(top[e.name] != top[ref.name]))})
    pixels = seen_pixels(paths, prep)
    for method in ("fgsm", "pgd"):
        for eps in epsilons:
            x = normalise(attack(reference_model, prep, pixels, labels, eps, method, seed=seed), prep)
            for e in entries:
                pred = run_batches(e.runner, x)["logits"].argmax(1)
                rows[e.name]["attacks"].append({"method": method, "epsilon": eps, "accuracy": float(np.mean(pred == labels))})
    ref_err = {(r["corruption"], r["severity"]): 1 - r["accuracy"] for r in rows[ref.name]["corruptions"]}
    for e in entries:
        ratios = []
        for name in corruptions:
            mine = sum(1 - r["accuracy"] for r in rows[e.name]["corruptions"] if r["corruption"] == name)
            theirs = sum(ref_err[(name, s)] for s in SEVERITIES)
            ratios.append(mine / theirs if theirs > 0 else 1.0)
        rows[e.name]["mce_vs_reference"] = float(np.mean(ratios))
        flips = [r["flip_rate"] for r in rows[e.name]["corruptions"] if r["flip_rate"] is not None]
        rows[e.name]["max_flip_rate"] = max(flips) if flips else None
    return rows
