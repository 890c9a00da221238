"""`tldeploy demo` end to end: the real orchestration (digits, train, export, ORT FP32 and INT8
builds, bench, report) with the training's backbone swapped for tiny_cnn, the one stage that would
take minutes (EfficientNet-Lite0); everything else runs as the demo runs it."""

import dataclasses
import json

import pytest

import tldeploy.train.training as training
from tldeploy.cli import main
from tldeploy.demo import DEMO_MARKER


@pytest.fixture
def tiny_demo(monkeypatch):
    seen = []
    real = training.train

    def tiny_train(cfg):
        seen.append(cfg)
        return real(dataclasses.replace(cfg, backbone="tiny_cnn", lr=1e-2))

    monkeypatch.setattr(training, "train", tiny_train)
    return seen


def test_demo_runs_every_stage_and_reports(tiny_demo, tmp_path, capsys):
    work = tmp_path / "demo"
    rc = main(["demo", "--workdir", str(work), "--epochs", "1", "--batch-sizes", "1", "--iters", "5", "-q"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    [cfg] = tiny_demo
    assert cfg.backbone == "efficientnet_lite0" and cfg.mode == "feature-extract" and cfg.epochs == 1
    assert (work / DEMO_MARKER).is_file()
    n_val = sum(1 for _ in (work / "digits" / "val").rglob("*.png"))
    assert sum(1 for _ in (work / "digits" / "train").rglob("*.png")) + n_val == 1797  # all of scikit-learn's digits
    doc = json.loads((work / "bench.json").read_text())
    names = [r["name"] for r in doc["results"]]
    assert names[1:3] == ["digits.fp32.ort.onnx", "digits.int8.ort.onnx"], names
    for r in doc["results"][1:]:
        assert r["parity"]["n"] == n_val and [lat["batch"] for lat in r["latency"]] == [1]
    assert "report: " in out and "bench:  " in out and "stage seconds: data" in out
    # A second run into the same folder needs --force; with it, it starts again.
    assert main(["demo", "--workdir", str(work), "--epochs", "1"]) == 1
    assert "already holds a previous demo; pass --force" in capsys.readouterr().err
