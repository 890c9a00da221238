"""Shared real-model fixtures: the digits data and one EfficientNet-Lite0 feature-extract run."""

import time

import pytest

from tldeploy.data.folders import write_digits
from tldeploy.train.training import TrainConfig, train

PX = 160


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits") / "digits"
    write_digits(root, size=64, val_fraction=0.2, seed=0)
    return root


@pytest.fixture(scope="session")
def fe_run(digits, tmp_path_factory):
    """EfficientNet-Lite0, feature-extract at 160 px on the digits: the smallest size at which it
    is as accurate as at its default 224 (0.9638 at both, 0.9499 at 128; AMD EPYC avx512-vnni), at
    half the pixels of every real-model test. The demo and the benchmarks run it at 224."""
    t0 = time.perf_counter()
    result = train(TrainConfig(data=digits, out_dir=tmp_path_factory.mktemp("fe") / "run", epochs=10, image_size=PX, quiet=True))
    print(f"\nfeature-extract {PX} px: accuracy {result.metrics['accuracy']:.4f} in {time.perf_counter() - t0:.0f} s")
    return result
