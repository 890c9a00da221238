"""Markers: `slow` runs only with --runslow or TLDEPLOY_SLOW=1; `gpu` and `trt` skip without them."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or os.environ.get("TLDEPLOY_SLOW") == "1"
    has_gpu = False
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        pass
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: pass --runslow or set TLDEPLOY_SLOW=1"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (pip install 'tldeploy[tensorrt]')"))


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


@pytest.fixture
def blob_data(tmp_path):
    root = tmp_path / "blobs"
    make_blob_images(root / "train", 24, seed=0)
    make_blob_images(root / "val", 8, seed=1)
    return root
