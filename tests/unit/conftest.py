"""Fixtures shared by the unit tests of the build and bench stages."""

import pytest
import torch
from _images import train_tiny

from tldeploy.export.onnx_export import ExportConfig, export_onnx


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(checkpoint, exported ONNX, data folder) of the tiny CNN trained on blob images."""
    root = tmp_path_factory.mktemp("tinybuild")
    ckpt, data = train_tiny(root, n_train=40)
    return ckpt, export_onnx(ExportConfig(ckpt, root / "tiny.onnx")).path, data


@pytest.fixture(scope="session")
def outlier_onnx(tiny, tmp_path_factory):
    """(ONNX, data folder) of the tiny CNN with one channel of stage 1's output scaled 1000x
    (BatchNorm weight and bias, before the ReLU) and stage 2's weights for it scaled back: the same
    function in float, but stage 2's per-tensor input range is wrecked for every other channel."""
    ckpt, _, data = tiny
    root = tmp_path_factory.mktemp("outlier")
    doc = torch.load(ckpt, weights_only=True)
    sd = doc["state_dict"]
    sd["backbone.features.stages.1.1.weight"][3] *= 1000
    sd["backbone.features.stages.1.1.bias"][3] *= 1000
    sd["backbone.features.stages.2.0.weight"][:, 3] /= 1000
    torch.save(doc, root / "outlier.pt")
    return export_onnx(ExportConfig(root / "outlier.pt", root / "outlier.onnx")).path, data


@pytest.fixture
def last_epoch_backbone(monkeypatch):
    """A dict that the next training run fills with its backbone's state after the last epoch,
    before the best epoch's weights are restored."""
    from tldeploy.train.training import _Trainer

    final = {}
    real_finish = _Trainer._finish

    def capture(self):
        final.update({k: v.clone() for k, v in self.model.backbone.state_dict().items()})
        return real_finish(self)

    monkeypatch.setattr(_Trainer, "_finish", capture)
    return final
