import pickle

import pytest
import torch

from tldeploy.errors import CheckpointError
from tldeploy.pipeline.backbones import create_backbone
from tldeploy.pipeline.checkpoints import load_checkpoint, save_checkpoint
from tldeploy.pipeline.heads import create_model


def _meta(model):
    return {
        "backbone": {"name": "tiny_cnn", "weights": "none", "num_features": 32},
        "classes": ["a", "b", "c"],
        "preprocessing": model.backbone.spec.preprocessing.to_dict(),
        "head": model.head.cfg.to_dict(),
        "mode": "finetune",
    }


def test_roundtrip(tmp_path):
    model = create_model(create_backbone("tiny_cnn"), 3).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, _meta(model))
    loaded, meta = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    assert meta["classes"] == ["a", "b", "c"] and "torch" in meta["versions"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_truncated_foreign_and_malicious_files(tmp_path):
    model = create_model(create_backbone("tiny_cnn"), 3)
    good = tmp_path / "model.pt"
    save_checkpoint(good, model, _meta(model))
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(trunc)
    foreign = tmp_path / "foreign.pt"
    torch.save(model.state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint written by tldeploy"):
        load_checkpoint(foreign)

    class Evil:
        def __reduce__(self):
            return (print, ("evaluated!",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "tldeploy.checkpoint", "x": Evil()}))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
