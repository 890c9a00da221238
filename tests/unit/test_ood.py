"""The OOD gate: scores, the threshold fitted at training, carried by checkpoint and ONNX, and
predict's unknown answer (the tiny CNN, for the plumbing)."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import onnx
import pytest

from tldeploy.cli import main
from tldeploy.contract import load_onnx, read_contract, write_contract
from tldeploy.errors import ConfigError
from tldeploy.models.checkpoints import load_checkpoint
from tldeploy.ood import OOD_SCORES, OodGate, ood_scores
from tldeploy.predict import predict
from tldeploy.train.options import OOD_CHOICES


def test_scores_by_hand():
    logits = np.array([[2.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    lse = np.log(np.exp(logits).sum(axis=1))
    assert np.allclose(ood_scores(logits, "energy"), -lse)
    assert np.allclose(ood_scores(logits, "energy", 2.0), -2 * np.log(np.exp(logits / 2).sum(axis=1)))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.allclose(ood_scores(logits, "msp"), -p.max(axis=1))
    # The confident row is the less out-of-distribution one under both scores.
    for kind in OOD_SCORES:
        s = ood_scores(logits, kind)
        assert s[0] < s[1]
    assert OOD_CHOICES == (*OOD_SCORES, "none")


def test_the_threshold_keeps_the_asked_share_and_round_trips():
    logits = np.random.default_rng(0).normal(size=(400, 5)) * 3
    gate = OodGate.fit(logits, "energy", tpr=0.95)
    assert 0.95 <= gate.kept <= 0.955 and gate.n == 400
    assert np.mean(~gate.unknown(logits)) == pytest.approx(gate.kept)
    assert OodGate.from_dict(gate.to_dict()) == gate and OodGate.from_dict(None) is None
    with pytest.raises(ConfigError, match="OOD metadata is incomplete"):
        OodGate.from_dict({"kind": "energy"})
    with pytest.raises(ConfigError, match="--ood-tpr"):
        OodGate.fit(logits, tpr=1.0)


def test_training_fits_the_gate_and_every_artifact_carries_it(tiny, tmp_path, caplog):
    ckpt, onnx_path, data = tiny
    _, meta = load_checkpoint(ckpt)
    gate = OodGate.from_dict(meta["ood"])
    assert gate is not None and gate.kind == "energy" and gate.tpr == 0.95 and gate.n == 16  # the tiny validation set
    assert read_contract(onnx_path).ood == OodGate.from_dict(meta["ood"])
    images = sorted((data / "val").rglob("*.png"))[:4]
    a, b = predict(ckpt, images), predict(onnx_path, images)
    assert [r.unknown for r in a] == [r.unknown for r in b] and all(r.unknown is not None for r in a)
    assert [r.ood_score for r in a] == pytest.approx([r.ood_score for r in b], abs=1e-4)

    # A gate that calls everything unknown, and predict's answer in text and JSON.
    m = load_onnx(onnx_path)
    c = read_contract(m)
    write_contract(m, replace(c, ood=replace(c.ood, threshold=-1e9)))
    strict = tmp_path / "strict.onnx"
    onnx.save(m, str(strict))
    assert all(r.unknown for r in predict(strict, images))
    assert not any(r.unknown for r in predict(strict, images, ood=False)) and predict(strict, images, ood=False)[0].unknown is None


def test_an_artifact_without_a_gate_still_predicts_and_says_so_once(tiny, tmp_path, capsys, caplog):
    ckpt, onnx_path, data = tiny
    m = load_onnx(onnx_path)
    c = read_contract(m)
    write_contract(m, replace(c, ood=None))
    old = tmp_path / "old.onnx"
    onnx.save(m, str(old))
    images = sorted((data / "val").rglob("*.png"))[:3]
    with caplog.at_level(logging.WARNING):
        results = predict(old, images)
    assert [r.unknown for r in results] == [None] * 3 and results[0].top
    assert sum("has no OOD threshold" in r.message for r in caplog.records) == 1
    assert main(["predict", str(old), str(images[0]), "--json"]) == 0
    out = capsys.readouterr()
    assert "unknown" not in out.out and "has no OOD threshold" in out.err
    # A checkpoint from before the gate: the same.
    import torch

    doc = torch.load(ckpt, weights_only=True)
    doc["metadata"].pop("ood")
    old_ckpt = tmp_path / "old.pt"
    torch.save(doc, old_ckpt)
    assert [r.unknown for r in predict(old_ckpt, images)] == [None] * 3


def test_cli_prints_unknown(tiny, tmp_path, capsys):
    ckpt, onnx_path, data = tiny
    m = load_onnx(onnx_path)
    c = read_contract(m)
    write_contract(m, replace(c, ood=replace(c.ood, threshold=-1e9)))
    strict = tmp_path / "strict.onnx"
    onnx.save(m, str(strict))
    image = next((data / "val").rglob("*.png"))
    assert main(["predict", str(strict), str(image)]) == 0
    assert "unknown: OOD score" in capsys.readouterr().out
    assert main(["predict", str(strict), str(image), "--no-ood"]) == 0
    assert "unknown" not in capsys.readouterr().out


def test_bench_ood_data_measures_and_gates_the_decisions(tiny, tmp_path):
    """bench --ood-data on the tiny CNN: ID = its validation blobs, OOD = blue blobs and noise it
    never saw. The ONNX export decides as the checkpoint does; a copy whose logits are scaled down
    (so its energy moves while its top-1 does not) fails --max-ood-disagreement."""
    from _images import make_blob_images

    from tldeploy.bench.bench import BenchConfig, run_bench

    ckpt, onnx_path, data = tiny
    ood = tmp_path / "ood"
    make_blob_images(ood, 12, seed=5, classes=("blue",))
    m = load_onnx(onnx_path)
    logits_node = next(n for n in m.graph.node if "logits" in n.output)
    scaled = tmp_path / "scaled.onnx"
    # logits / 3 under the old name: same top-1, higher energies.
    from onnx import helper, numpy_helper

    logits_node.output[0] = "logits_unscaled"
    for n in m.graph.node:
        for i, t in enumerate(n.input):
            if t == "logits" and n is not logits_node:
                n.input[i] = "logits_unscaled"
    m.graph.initializer.append(numpy_helper.from_array(np.array(1 / 3, np.float32), "third"))
    m.graph.node.append(helper.make_node("Mul", ["logits_unscaled", "third"], ["logits"], name="scale_logits"))
    onnx.save(m, str(scaled))

    doc = run_bench(BenchConfig((onnx_path, scaled), tmp_path / "b.json", reference=ckpt, data=data / "val", ood_data=ood,
                                max_ood_disagreement=0.0, latency=_quick())).document.to_json()
    rows = {r["name"]: r["ood"] for r in doc["results"]}
    assert rows[ckpt.name]["disagreement"] is None and rows[onnx_path.name]["disagreement"] == 0.0
    assert rows[ckpt.name]["images"] == 12 and 0 <= rows[ckpt.name]["auroc"] <= 1
    assert rows[ckpt.name]["tpr"] == pytest.approx(rows[onnx_path.name]["tpr"])
    assert rows["scaled.onnx"]["disagreement"] > 0
    assert not doc["gates"]["passed"] and any("scaled.onnx: unknown/known decisions differ" in f for f in doc["gates"]["failures"])
    assert "unknown inputs (12 OOD)" in (tmp_path / "b.md").read_text()
    with pytest.raises(ConfigError, match="--ood-data is set against in-distribution inputs"):
        BenchConfig((onnx_path,), tmp_path / "c.json", ood_data=ood)


def _quick():
    from tldeploy.bench.latency import LatencyConfig

    return LatencyConfig(warmup=1, iters=2, rounds=1, settle_s=0.0)


def test_shift_plumbing_on_the_tiny_cnn(tiny, tmp_path, capsys):
    """The checkpoint keeps the source sample; shift reports, plots and gates; a checkpoint from
    before the sample needs --source-data, said in one line."""
    import json

    import torch

    from tldeploy.models.checkpoints import checkpoint_tensors

    ckpt, _, data = tiny
    t = checkpoint_tensors(ckpt)
    assert t["source_features"].dtype == torch.float16 and t["source_features"].shape == (80, 32)  # all 80 training blobs
    assert t["val_ood_scores"].shape == (16,)
    out = tmp_path / "s.json"
    assert main(["shift", "--reference", str(ckpt), "--data", str(data / "val"), "-o", str(out), "-q"]) == 0
    doc = json.loads(out.read_text())
    assert doc["features"] == 32 and doc["target_inputs"] == 16 and 0 <= doc["domain_auc"] <= 1 and doc["accuracy"] is not None
    assert (tmp_path / "s_ood_scores.png").is_file() and "domain classifier AUC" in out.with_suffix(".md").read_text()
    # Blue blobs are of no trained class: a shifted target, which a strict gate fails.
    from _images import make_blob_images

    make_blob_images(tmp_path / "blue", 16, seed=3, classes=("blue",))
    assert main(["shift", "--reference", str(ckpt), "--data", str(tmp_path / "blue"), "-o", str(tmp_path / "b.json"),
                 "--max-auc", "0.5", "-q"]) == 1
    assert "error: the target has drifted" in capsys.readouterr().err
    # An older checkpoint: no source sample.
    doc = torch.load(ckpt, weights_only=True)
    doc.pop("tensors")
    old = tmp_path / "old.pt"
    torch.save(doc, old)
    assert main(["shift", "--reference", str(old), "--data", str(data / "val"), "-o", str(tmp_path / "o.json")]) == 1
    assert "keeps no source features" in capsys.readouterr().err
    assert main(["shift", "--reference", str(old), "--data", str(data / "val"), "--source-data", str(data / "train"),
                 "-o", str(tmp_path / "o.json"), "-q"]) == 0
