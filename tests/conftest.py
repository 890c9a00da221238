"""Markers: `integration` is every test under tests/integration/ (the real offline model; deselect
with -m "not integration"); `slow` runs only with --runslow or TLDEPLOY_SLOW=1; `gpu` and `trt`
skip without them. Every test gets its own TLDEPLOY_CACHE."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from _images import make_blob_images


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
    integration = Path(__file__).parent / "integration"
    for item in items:
        if integration in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: pass --runslow or set TLDEPLOY_SLOW=1"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (pip install 'tldeploy[tensorrt]')"))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Builds, calibration ranges and plugins go to a per-test cache, never the user's."""
    monkeypatch.setenv("TLDEPLOY_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def blob_data(tmp_path):
    root = tmp_path / "blobs"
    make_blob_images(root / "train", 24, seed=0)
    make_blob_images(root / "val", 8, seed=1)
    return root
