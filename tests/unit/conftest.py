"""Fixtures shared by the unit tests of the build and bench stages."""

import pytest
from _images import train_tiny

from tldeploy.export.onnx_export import ExportConfig, export_onnx


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(checkpoint, exported ONNX, data folder) of the tiny CNN trained on blob images."""
    root = tmp_path_factory.mktemp("tinybuild")
    ckpt, data = train_tiny(root, n_train=40)
    return ckpt, export_onnx(ExportConfig(ckpt, root / "tiny.onnx")).path, data
