import json

import numpy as np
import pytest
import torch
from _images import make_blob_images

from tldeploy.data.folders import load_image
from tldeploy.errors import ConfigError, OutputExistsError
from tldeploy.modalities.preprocessing import AugmentConfig
from tldeploy.models.backbones import create_backbone
from tldeploy.models.checkpoints import load_checkpoint
from tldeploy.train.distributed import Dist
from tldeploy.train.phases import Phase
from tldeploy.train.training import TrainConfig, _Trainer, train


def _cfg(data, out, **kw):
    # Blob images: random crops would cut the coloured square (the label) away, so no augmentation.
    base = dict(backbone="tiny_cnn", epochs=3, batch_size=8, lr=1e-2, backbone_lr=1e-2, quiet=True, augment=AugmentConfig.off())
    return TrainConfig(data=data, out_dir=out, **{**base, **kw})


def test_feature_extract_computes_each_feature_map_once(blob_data, tmp_path, monkeypatch):
    seen = []
    real_forward = type(create_backbone("tiny_cnn")).forward

    def counting_forward(self, x):
        seen.append(len(x))
        return real_forward(self, x)

    monkeypatch.setattr(type(create_backbone("tiny_cnn")), "forward", counting_forward)
    result = train(_cfg(blob_data, tmp_path / "run", epochs=4))
    assert sum(seen) == 48 + 16  # train + val images, once each, across 4 epochs and the final check
    for name in ("model.pt", "metrics.json", "plots/pr_curves.png", "plots/roc_curves.png", "plots/confusion_matrix.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert not (tmp_path / "run" / "last.pt").exists()
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc_ovr", "per_class", "confusion_matrix"):
        assert key in m
    assert np.array(m["confusion_matrix"]).sum() == 16
    assert len(result.history) == 4


def test_finetune_trains_only_the_unfrozen_blocks(blob_data, tmp_path, last_epoch_backbone):
    torch.manual_seed(0)
    init = create_backbone("tiny_cnn").state_dict()
    final = last_epoch_backbone
    train(_cfg(blob_data, tmp_path / "run", mode="finetune", epochs=3, warmup_epochs=1, unfreeze=1))
    for key, before in init.items():
        if "num_batches_tracked" in key:
            continue
        changed = not torch.equal(before, final[key])
        assert changed == key.startswith("features.stages.2."), key
    _, meta = load_checkpoint(tmp_path / "run" / "model.pt")
    assert meta["mode"] == "finetune" and meta["classes"] == ["green", "red"]


def test_layer_wise_learning_rates(blob_data, tmp_path):
    cfg = _cfg(blob_data, tmp_path / "run", mode="finetune", warmup_epochs=1, backbone_lr=1e-3, layer_decay=0.5)
    trainer = _Trainer(cfg, Dist("cpu"))
    opt, _ = trainer._configure(Phase("finetune", 1, True))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-2, 1e-3, 5e-4, 2.5e-4])
    opt, _ = trainer._configure(Phase("warmup", 1, False))
    assert len(opt.param_groups) == 1
    assert not any(p.requires_grad for p in trainer.model.backbone.parameters())


@pytest.mark.parametrize("balance", ["weights", "sampler"])
def test_balance_modes_on_imbalanced_data(tmp_path, balance):
    make_blob_images(tmp_path / "d" / "train", 30, classes=("red",), seed=2)
    make_blob_images(tmp_path / "d" / "train", 6, classes=("green",), seed=3)
    make_blob_images(tmp_path / "d" / "val", 6, classes=("red", "green"), seed=4)
    cfg = _cfg(tmp_path / "d", tmp_path / "run", mode="finetune", warmup_epochs=1, epochs=6, balance=balance)
    trainer = _Trainer(cfg, Dist("cpu"))
    phase = Phase("finetune", 1, True)
    if balance == "weights":  # n / (k * n_c)
        assert trainer._class_weights().tolist() == pytest.approx([36 / 12, 36 / 60])
    else:
        drawn = [int(y) for _, ys in trainer._train_loader(phase) for y in ys]
        assert 0.3 < np.mean(np.array(drawn) == 0) < 0.7  # green drawn about as often as red
    result = trainer.run()
    assert result.metrics["train_counts"] == {"green": 6, "red": 30}
    assert result.metrics["accuracy"] >= 0.75


def test_pseudo_labels_join_and_are_reported(blob_data, tmp_path):
    where = make_blob_images(tmp_path / "unlabeled", 10, seed=7)
    result = train(
        _cfg(blob_data, tmp_path / "run", mode="finetune", warmup_epochs=1, epochs=6, unlabeled=tmp_path / "unlabeled",
             pseudo_threshold=0.8, pseudo_rounds=2, pseudo_epochs=1)
    )
    report = result.pseudo_labels
    assert report[0]["round"] == 1 and report[0]["added"] >= 10
    assert sum(report[0]["per_class"].values()) == report[0]["added"]
    assert sum(r["added"] for r in report) <= len(where)
    assert result.metrics["pseudo_labels"] == report
    assert any(h["phase"] == "pseudo-1" for h in result.history)


def test_resume_repeats_the_uninterrupted_run(blob_data, tmp_path, monkeypatch):
    cfg = dict(mode="finetune", warmup_epochs=1, epochs=4, augment=AugmentConfig(crop_scale=0.9))
    train(_cfg(blob_data, tmp_path / "full", **cfg))

    calls = {"n": 0}
    real = _Trainer._run_epoch

    def crash_on_third(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(_Trainer, "_run_epoch", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(blob_data, tmp_path / "cut", **cfg))
    monkeypatch.setattr(_Trainer, "_run_epoch", real)
    assert (tmp_path / "cut" / "last.pt").is_file()
    with pytest.raises(OutputExistsError, match="--resume"):
        train(_cfg(blob_data, tmp_path / "cut", **cfg))
    with pytest.raises(ConfigError, match="--epochs was 4"):
        train(_cfg(blob_data, tmp_path / "cut", resume=True, **{**cfg, "epochs": 5}))
    resumed = train(_cfg(blob_data, tmp_path / "cut", resume=True, **cfg))
    assert [h["epoch"] for h in resumed.history] == [1, 1, 2, 3]
    a, _ = load_checkpoint(tmp_path / "full" / "model.pt")
    b, _ = load_checkpoint(tmp_path / "cut" / "model.pt")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)


def test_resume_without_state_is_an_error(blob_data, tmp_path):
    with pytest.raises(ConfigError, match="start the run without --resume"):
        train(_cfg(blob_data, tmp_path / "run", resume=True))


def test_cam_points_at_the_evidence(tmp_path):
    where = make_blob_images(tmp_path / "d" / "train", 40, seed=0)
    val_where = make_blob_images(tmp_path / "d" / "val", 20, seed=5)
    train(_cfg(tmp_path / "d", tmp_path / "run", mode="finetune", warmup_epochs=1, epochs=8, dropout=0.0))
    assert where
    model, meta = load_checkpoint(tmp_path / "run" / "model.pt")
    from tldeploy.modalities.preprocessing import Preprocessing

    tf = Preprocessing.from_dict(meta["preprocessing"]).eval_transform()
    hits = 0
    for path, (top, left, side) in val_where.items():
        _, _, cam = model.forward_with_cam(tf(load_image(path))[None])
        r, c = divmod(int(cam[0].argmax()), cam.shape[-1])
        cell = 32 // cam.shape[-1]  # each CAM cell covers 4x4 input pixels
        hits += (top - cell <= r * cell <= top + side) and (left - cell <= c * cell <= left + side)
    assert hits / len(val_where) >= 0.9, f"CAM peak on the square in {hits}/{len(val_where)} images"


def test_a_seeded_run_gives_the_same_checkpoint_twice(blob_data, tmp_path):
    """`tldeploy train --seed` twice on one machine: bit-identical weights, history and metrics (the
    augmentation's crops, the shuffle and the head's initialisation all come from the seed); another
    seed gives other weights. Across CPU classes the kernels round differently (README)."""
    from tldeploy.cli import main

    def run(name: str, seed: int):
        out = tmp_path / name
        assert main(["train", str(blob_data), "-o", str(out), "--backbone", "tiny_cnn", "--weights", "none", "--mode", "finetune",
                     "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "8", "--lr", "1e-2", "--crop-scale", "0.8",
                     "--seed", str(seed), "-q"]) == 0
        model, meta = load_checkpoint(out / "model.pt")
        return model.state_dict(), json.loads((out / "metrics.json").read_text())

    (a, ma), (b, mb), (c, _) = run("a", 3), run("b", 3), run("c", 4)
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    def untimed(metrics):  # everything but the clock
        return {k: [{**h, "seconds": None, "images_per_s": None} for h in v] if k == "history" else v
                for k, v in metrics.items() if k != "seconds"}

    assert untimed(ma) == untimed(mb)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
