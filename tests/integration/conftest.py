"""Shared real-model fixtures: the digits data and one EfficientNet-Lite0 feature-extract run."""

import time

import pytest

from tldeploy.data.folders import write_digits
from tldeploy.train.training import TrainConfig, train


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits") / "digits"
    write_digits(root, size=64, val_fraction=0.2, seed=0)
    return root


@pytest.fixture(scope="session")
def fe_run(digits, tmp_path_factory):
    """EfficientNet-Lite0, feature-extract at its default 224 px, on the digits."""
    t0 = time.perf_counter()
    result = train(TrainConfig(data=digits, out_dir=tmp_path_factory.mktemp("fe") / "run", epochs=10, quiet=True))
    print(f"\nfeature-extract 224 px: accuracy {result.metrics['accuracy']:.4f} in {time.perf_counter() - t0:.0f} s")
    return result
