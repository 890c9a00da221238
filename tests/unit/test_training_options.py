"""Training options that change what is trained or kept: --select-metric, --bn frozen,
--label-smoothing, each on the tiny backbone and blob images."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tldeploy.data.folders import load_image
from tldeploy.modalities.preprocessing import AugmentConfig, Preprocessing
from tldeploy.models.backbones import create_backbone
from tldeploy.models.checkpoints import load_checkpoint
from tldeploy.train.training import TrainConfig, _Trainer, train


def _cfg(data, out, **kw):
    base = dict(backbone="tiny_cnn", epochs=3, batch_size=8, lr=1e-2, backbone_lr=1e-2, quiet=True, augment=AugmentConfig.off())
    return TrainConfig(data=data, out_dir=out, **{**base, **kw})


# Per epoch (accuracy, f1_macro): accuracy peaks at epoch 2, f1 at epoch 1, the last epoch at neither.
SCRIPT = [(0.5, 0.9), (0.9, 0.5), (0.7, 0.7)]


@pytest.mark.parametrize(("metric", "best_epoch"), [("f1_macro", 1), ("accuracy", 2)])
def test_select_metric_keeps_the_best_epoch_not_the_last(blob_data, tmp_path, monkeypatch, metric, best_epoch):
    real = _Trainer._evaluate
    states = []

    def scripted(self, cached):
        metrics, probs = real(self, cached)
        if len(states) < len(SCRIPT):  # the per-epoch validations; the final one is left as it is
            metrics["accuracy"], metrics["f1_macro"] = SCRIPT[len(states)]
            states.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return metrics, probs

    monkeypatch.setattr(_Trainer, "_evaluate", scripted)
    result = train(_cfg(blob_data, tmp_path / "run", select_metric=metric))
    assert [h["best"] for h in result.history] == [True, best_epoch == 2, False]  # epoch 1 beats "nothing yet"
    model, meta = load_checkpoint(tmp_path / "run" / "model.pt")
    saved = model.state_dict()
    assert any(not torch.equal(a, b) for a, b in zip(states[0].values(), states[1].values(), strict=True))  # epochs differ
    for k, v in states[best_epoch - 1].items():
        assert torch.equal(saved[k], v), k
    assert meta["train_config"]["select_metric"] == metric
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["selected_by"] == metric


def _bn_buffers(state):
    return {k: v for k, v in state.items() if "running_" in k or "num_batches_tracked" in k}


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_bn_frozen_keeps_the_statistics_of_trained_blocks(blob_data, tmp_path, last_epoch_backbone, bn):
    """--bn frozen keeps the running statistics (its help says statistics: the affine parameters
    train with their block); --bn train re-estimates them."""
    final = last_epoch_backbone
    torch.manual_seed(0)  # the run seeds 0 before building its backbone: these are its initial weights
    init = create_backbone("tiny_cnn").state_dict()
    train(_cfg(blob_data, tmp_path / "run", mode="finetune", warmup_epochs=1, epochs=3, bn=bn))
    buffers = _bn_buffers(init)
    assert len(buffers) == 9  # three BatchNorm layers
    conv = [k for k in init if k.endswith(".0.weight")]
    assert conv and all(not torch.equal(init[k], final[k]) for k in conv)  # the backbone was trained
    unchanged = [k for k in buffers if torch.equal(init[k], final[k])]
    assert unchanged == (list(buffers) if bn == "frozen" else []), unchanged


def test_label_smoothing_reaches_the_loss(blob_data, tmp_path):
    """With a learning rate of 1e-12 the head does not move, so the first epoch's mean training
    loss is the cross-entropy of the initial model on the training images, smoothed as asked."""
    eps = 0.3
    result = train(_cfg(blob_data, tmp_path / "run", epochs=1, lr=1e-12, dropout=0.0, label_smoothing=eps))
    model, meta = load_checkpoint(tmp_path / "run" / "model.pt")
    assert meta["train_config"]["label_smoothing"] == eps
    tf = Preprocessing.from_dict(meta["preprocessing"]).eval_transform()
    paths = sorted((blob_data / "train").rglob("*.png"))
    x = torch.stack([tf(load_image(p)) for p in paths])
    y = torch.tensor([meta["classes"].index(p.parent.name) for p in paths])
    with torch.no_grad():
        logits = model.eval()(x)
    smoothed = float(F.cross_entropy(logits, y, label_smoothing=eps))
    plain = float(nn.CrossEntropyLoss()(logits, y))
    # The initial head is nearly uniform, so smoothing moves the loss little, but 100 times more than
    # float32 rounding does to a mean of 48 losses near log 2: the check below tells them apart.
    assert abs(smoothed - plain) > 1e-4
    assert result.history[0]["train_loss"] == pytest.approx(smoothed, abs=1e-6)
