"""Synthetic test images with known evidence locations."""

from pathlib import Path

import numpy as np
from PIL import Image


def make_blob_images(root: Path, n_per_class: int, size: int = 32, seed: int = 0, classes=("red", "green")) -> dict:
    """Gray-noise images with one coloured square at a random place; the colour is the class.

    Returns {path: (top, left, side)} so tests know where the evidence is.
    """
    colours = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}
    rng = np.random.default_rng(seed)
    where = {}
    for name in classes:
        d = Path(root) / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.integers(90, 140, size=(size, size, 3)).astype(np.uint8)
            side = size // 4
            top, left = rng.integers(0, size - side, size=2)
            img[top : top + side, left : left + side] = colours[name]
            p = d / f"{i:03d}.png"
            Image.fromarray(img).save(p)
            where[p] = (int(top), int(left), side)
    return where


def train_tiny(root: Path, n_train: int = 24, n_val: int = 8) -> tuple[Path, Path]:
    """A few seconds of fine-tuning the registered `tiny_cnn` on blob images.

    Returns (checkpoint, data folder with train/ and val/)."""
    from tldeploy.modalities.preprocessing import AugmentConfig
    from tldeploy.train.training import TrainConfig, train

    data = Path(root) / "data"
    make_blob_images(data / "train", n_train, seed=0)
    make_blob_images(data / "val", n_val, seed=1)
    cfg = TrainConfig(data=data, out_dir=Path(root) / "run", backbone="tiny_cnn", mode="finetune", epochs=3,
                      warmup_epochs=1, batch_size=8, lr=1e-2, quiet=True, augment=AugmentConfig.off())
    return train(cfg).checkpoint, data
