"""Image corruptions after ImageNet-C (Hendrycks & Dietterich, 2019), at three of its five
severities (1, 3, 5), in NumPy and Pillow: spatial parameters are ImageNet-C's for 224 px, scaled
to the image's shorter side. Each takes (PIL image, severity, generator, contract) and returns a
PIL image; the contract's preprocessing follows."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageFilter


def _scale(img: Image.Image) -> float:
    return min(img.size) / 224.0


def gaussian_noise(img: Image.Image, s: int, rng: np.random.Generator, prep: Any = None) -> Image.Image:
    c = {1: 0.08, 3: 0.18, 5: 0.38}[s]
    x = np.asarray(img, np.float32) / 255
    return _image(x + rng.normal(0, c, x.shape))


def impulse_noise(img: Image.Image, s: int, rng: np.random.Generator, prep: Any = None) -> Image.Image:
    amount = {1: 0.03, 3: 0.09, 5: 0.27}[s]
    x = np.asarray(img, np.float32) / 255
    m = rng.random(x.shape)
    x = np.where(m < amount / 2, 0.0, np.where(m > 1 - amount / 2, 1.0, x))
    return _image(x)


def gaussian_blur(img: Image.Image, s: int, rng: np.random.Generator, prep: Any = None) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur({1: 1, 3: 3, 5: 6}[s] * _scale(img)))


def motion_blur(img: Image.Image, s: int, rng: np.random.Generator, prep: Any = None) -> Image.Image:
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


def jpeg(img: Image.Image, s: int, rng: np.random.Generator, prep: Any = None) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality={1: 25, 3: 15, 5: 7}[s])
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def brightness(img: Image.Image, s: int, rng: np.random.Generator, prep: Any = None) -> Image.Image:
    hsv = np.asarray(img.convert("HSV"), np.float32) / 255
    hsv[..., 2] = np.clip(hsv[..., 2] + {1: 0.1, 3: 0.3, 5: 0.5}[s], 0, 1)
    return Image.fromarray((hsv * 255).astype(np.uint8), "HSV").convert("RGB")


def contrast(img: Image.Image, s: int, rng: np.random.Generator, prep: Any = None) -> Image.Image:
    c = {1: 0.4, 3: 0.2, 5: 0.05}[s]
    x = np.asarray(img, np.float32) / 255
    m = x.mean(axis=(0, 1), keepdims=True)
    return _image((x - m) * c + m)


def pixelate(img: Image.Image, s: int, rng: np.random.Generator, prep: Any = None) -> Image.Image:
    c = {1: 0.6, 3: 0.4, 5: 0.25}[s]
    w, h = img.size
    return img.resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX).resize((w, h), Image.Resampling.BOX)


def _image(x: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))


IMAGE_CORRUPTIONS: dict[str, Callable[..., Image.Image]] = {
    "gaussian_noise": gaussian_noise, "impulse_noise": impulse_noise, "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur, "jpeg": jpeg, "brightness": brightness, "contrast": contrast, "pixelate": pixelate,
}
