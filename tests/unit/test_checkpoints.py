import pathlib
import pickle
import zipfile

import pytest
import torch

from tldeploy.errors import CheckpointError
from tldeploy.models.backbones import create_backbone
from tldeploy.models.checkpoints import load_checkpoint, load_train_state, save_checkpoint
from tldeploy.models.heads import create_model


def _meta(model):
    return {
        "backbone": {"name": "tiny_cnn", "weights": "none", "num_features": 32},
        "classes": ["a", "b", "c"],
        "preprocessing": model.backbone.spec.preprocessing.to_dict(),
        "head": model.head.cfg.to_dict(),
        "mode": "finetune",
    }


class _Payload:
    """Unpickling this calls Path.write_text(marker, "ran"): proof that loading ran code."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "ran"))


@pytest.fixture
def old_torch_default(monkeypatch):
    """torch < 2.6 (pyproject allows >= 2.4) loads with weights_only=False unless told otherwise;
    this variable restores that default for calls that leave weights_only unset, so a loader that
    stops passing weights_only=True runs the payload here too."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def _load(loader, path):
    """(error or None) of loader(path), so the marker can be checked before the outcome."""
    try:
        loader(path)
    except CheckpointError as e:
        return e
    return None


def test_roundtrip(tmp_path):
    model = create_model(create_backbone("tiny_cnn"), 3).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, _meta(model))
    loaded, meta = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    assert meta["classes"] == ["a", "b", "c"] and "torch" in meta["versions"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_truncated_foreign_and_missing_files(tmp_path):
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
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.usefixtures("old_torch_default")
@pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
@pytest.mark.parametrize("loader", [load_checkpoint, load_train_state], ids=["checkpoint", "train-state"])
def test_hostile_pickle_is_refused_without_running(tmp_path, loader):
    """A file in torch's own zip format, complete in every other respect, whose pickle holds an
    object that writes a file when unpickled: refused with one line, and the code never ran."""
    model = create_model(create_backbone("tiny_cnn"), 3)
    marker = tmp_path / "payload-ran.txt"
    doc = {"format": "tldeploy.checkpoint" if loader is load_checkpoint else "tldeploy.train-state", "format_version": 1,
           "state_dict": model.state_dict(), "metadata": {**_meta(model), "note": _Payload(marker)}}
    evil = tmp_path / "evil.pt"
    torch.save(doc, evil)
    assert zipfile.is_zipfile(evil)  # torch's format, not a raw pickle its legacy reader rejects up front
    err = _load(loader, evil)
    assert not marker.exists(), "loading the checkpoint ran the pickled payload"
    assert err is not None, "a checkpoint holding a Python object was loaded"
    line = str(err)
    assert "\n" not in line and "\x1b" not in line, line
    assert str(evil) in line and "refusing" in line and "objects" in line, line


@pytest.mark.usefixtures("old_torch_default")
@pytest.mark.filterwarnings("ignore:Detected pickle protocol", "ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
def test_raw_pickle_is_refused_without_running(tmp_path):
    """A raw pickle (not torch's zip format): torch's legacy reader unpickles its first object."""
    marker = tmp_path / "payload-ran.txt"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "tldeploy.checkpoint", "x": _Payload(marker)}))
    err = _load(load_checkpoint, evil)
    assert not marker.exists(), "loading the raw pickle ran its payload"
    assert err is not None and str(evil) in str(err) and "\n" not in str(err), err
