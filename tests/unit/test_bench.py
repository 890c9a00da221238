"""`tldeploy bench` and `tldeploy compare` on the tiny model: the document and its schema, the
report and plots, parity metrics, gates, comparisons and bad input."""

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tldeploy.bench.bench import SCHEMA_PATH, BenchConfig, load_bench, run_bench
from tldeploy.bench.compare import CompareConfig, compare_bench
from tldeploy.bench.latency import LatencyConfig
from tldeploy.cli import main
from tldeploy.engines.builder import BuildConfig, build
from tldeploy.engines.capabilities import PrecisionTarget
from tldeploy.errors import ConfigError, DataError, OutputExistsError, TldeployError
from tldeploy.parity import Tolerance, cam_correlation, cam_top_iou, compare_outputs, kl_divergence
from tldeploy.records import BenchDocument

FAST = LatencyConfig(warmup=2, iters=20, rounds=4)


@pytest.fixture(scope="module")
def artifacts(tiny, tmp_path_factory):
    """FP32 and INT8 ONNX Runtime builds of the tiny model, with their records."""
    ckpt, onnx, data = tiny
    out = tmp_path_factory.mktemp("benchart")
    fp32 = build(BuildConfig(onnx, PrecisionTarget("fp32", "ort"), output=out / "tiny.fp32.ort.onnx")).path
    int8 = build(BuildConfig(onnx, PrecisionTarget("int8", "ort"), calib_data=data / "train", output=out / "tiny.int8.ort.onnx")).path
    return ckpt, fp32, int8, data


def validate(doc):
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)


def test_a_document_off_the_schema_is_refused_with_the_field(bench_doc, tmp_path):
    doc = copy.deepcopy(bench_doc.document.to_json())
    doc["results"][1]["latency"][0]["samples_ms"] = "fast"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(TldeployError, match=r"bad.json does not follow the bench schema at results/1/latency/0/samples_ms"):
        load_bench(bad)


@pytest.fixture(scope="module")
def bench_doc(artifacts, tmp_path_factory):
    ckpt, fp32, int8, data = artifacts
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    return run_bench(BenchConfig((fp32, int8), out, reference=ckpt, data=data / "val", batch_sizes=(1, 4), latency=FAST, quiet=True))


# ------------------------------------------------------------ parity metrics


def test_parity_metrics_against_hand_computed_values():
    p, q = np.array([[0.5, 0.5], [1.0, 0.0]]), np.array([[0.9, 0.1], [1.0, 0.0]])
    assert kl_divergence(p, q) == pytest.approx((0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)) / 2)
    cam = np.random.default_rng(0).random((3, 5, 5))
    assert cam_correlation(cam, 2 * cam + 1) == pytest.approx(1.0) and cam_correlation(cam, -cam) == pytest.approx(-1.0)
    assert cam_correlation(np.zeros((1, 2, 2)), np.zeros((1, 2, 2))) == 1.0 and cam_correlation(np.zeros((1, 2, 2)), cam[:1, :2, :2]) == 0.0
    a = np.zeros((1, 10))
    a[0, :2] = 1  # top 20% = cells 0, 1
    b = np.zeros((1, 10))
    b[0, 1:3] = 1  # top 20% = cells 1, 2
    assert cam_top_iou(a, b) == pytest.approx(1 / 3) and cam_top_iou(cam, cam) == 1.0
    ref = {"logits": np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]), "probs": np.full((3, 2), 0.5), "cam": cam}
    test = {"logits": np.array([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0]]), "probs": np.full((3, 2), 0.5), "cam": cam}
    r = compare_outputs(ref, test, labels=np.array([0, 1, 1]))
    assert r.top1_agreement == pytest.approx(2 / 3) and r.reference_accuracy == pytest.approx(2 / 3)
    assert r.accuracy == pytest.approx(1 / 3) and r.accuracy_delta == pytest.approx(-1 / 3)


# ------------------------------------------------------------ bench


def test_bench_document_validates_and_holds_every_measurement(bench_doc, artifacts):
    doc = bench_doc.document.to_json()
    validate(doc)
    assert load_bench(bench_doc.path).to_json() == doc
    names = [r["name"] for r in doc["results"]]
    assert names == ["model.pt", "tiny.fp32.ort.onnx", "tiny.int8.ort.onnx"]
    ref, fp32, int8 = doc["results"]
    assert (ref["role"], ref["parity"], fp32["precision"], int8["precision"]) == ("reference", None, "fp32", "int8")
    for r in doc["results"]:
        assert [s["batch"] for s in r["latency"]] == [1, 4]
        for s in r["latency"]:
            assert len(s["samples_ms"]) == 20 and s["round_sizes"] == [5, 5, 5, 5] and s["min"] <= s["p50"] <= s["p99"] <= s["max"]
    assert fp32["parity"]["logits_max_abs"] < 1e-4 and fp32["parity"]["top1_agreement"] == 1.0
    assert fp32["parity"]["cam_correlation"] > 0.999 and fp32["parity"]["cam_iou_top20"] > 0.95
    assert int8["parity"]["kl_divergence"] > fp32["parity"]["kl_divergence"]
    assert doc["data"]["images"] == 16 and doc["data"]["labelled"] and ref["accuracy"] == fp32["accuracy"]
    assert doc["environment"]["cpu"]["logical_cores"] >= 1 and doc["environment"]["versions"]["onnxruntime"]


def test_report_has_a_table_per_artifact_and_readable_plots(bench_doc):
    text = bench_doc.report.read_text()
    for name in ("model.pt", "tiny.fp32.ort.onnx", "tiny.int8.ort.onnx"):
        assert f"## {name}" in text
    assert text.count("| batch | mean ms |") == 3 and "CAM correlation" in text and "## Summary" in text
    assert sorted(p.name for p in bench_doc.plots) == ["accuracy_vs_latency.png", "latency.png"]
    umask = os.umask(0)
    os.umask(umask)
    for p in [bench_doc.path, bench_doc.report, *bench_doc.plots]:  # written atomically, with the usual permissions
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask
    for p in bench_doc.plots:
        assert f"]({bench_doc.plots[0].parent.name}/{p.name})" in text
        with Image.open(p) as im:
            assert im.size[0] > 300 and im.size[1] > 200


def test_gates_fail_after_writing_with_a_line_each(artifacts, tmp_path, capsys):
    ckpt, fp32, int8, data = artifacts
    out = tmp_path / "gated.json"
    rc = main(["bench", str(fp32), str(int8), "--reference", str(ckpt), "--data", str(data / "val"), "-o", str(out),
               "--batch-sizes", "1", "--iters", "10", "--rounds", "2", "-q", "--min-cosine", "0.99999999", "--max-top1-drop", "100"])
    err = capsys.readouterr().err
    assert rc == 1 and out.is_file() and out.with_suffix(".md").is_file()
    failed = [line for line in err.splitlines() if line.startswith("gate failed:")]
    assert len(failed) == 1 and "tiny.int8.ort.onnx: cosine" in failed[0] and "--min-cosine 0.99999999" in failed[0]
    doc = json.loads(out.read_text())
    validate(doc)
    assert not doc["gates"]["passed"] and [g["passed"] for g in doc["results"][2]["gates"]] == [True, False]


def test_unlabelled_folder_gives_parity_without_accuracy(artifacts, tmp_path):
    ckpt, fp32, _, data = artifacts
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((data / "val").rglob("*.png"))[:6]:
        (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    res = run_bench(BenchConfig((fp32,), tmp_path / "b.json", reference=ckpt, data=flat, batch_sizes=(2,), latency=FAST,
                                time_reference=False, quiet=True))
    validate(res.document.to_json())
    ref, art = res.document.to_json()["results"]
    assert art["accuracy"] is None and art["parity"]["accuracy"] is None and art["parity"]["n"] == 6
    assert ref["latency"] == [] and not res.document.to_json()["data"]["labelled"]


def test_bench_bad_input(artifacts, tmp_path, capsys):
    ckpt, fp32, int8, data = artifacts
    out = tmp_path / "b.json"
    with pytest.raises(TldeployError, match="does not exist"):
        run_bench(BenchConfig((tmp_path / "missing.onnx",), out))
    with pytest.raises(ConfigError, match="--reference .* must be a tldeploy checkpoint"):
        BenchConfig((fp32,), out, reference=fp32)
    with pytest.raises(ConfigError, match="pass --reference"):
        BenchConfig((fp32,), out, gates=Tolerance(min_cosine=0.9))
    with pytest.raises(ConfigError, match="--min-top1-agreement"):
        Tolerance(min_top1_agreement=99)
    foreign = tmp_path / "foreign"
    (foreign / "cat").mkdir(parents=True)
    (foreign / "red").mkdir()
    with pytest.raises(DataError, match="not the model's classes: cat"):
        run_bench(BenchConfig((fp32,), out, reference=ckpt, data=foreign, latency=FAST))
    out.write_text("{}")
    with pytest.raises(OutputExistsError, match="--force"):
        run_bench(BenchConfig((fp32,), out, latency=FAST))
    # one line, no traceback, from the command line
    for argv, needle in (
        (["bench", str(fp32), "-o", str(tmp_path / "x.json"), "--batch-sizes", "1,a"], "--batch-sizes"),
        (["bench", str(fp32), "-o", str(tmp_path / "x.json"), "--iters", "3", "--rounds", "5"], "--rounds"),
        (["compare", str(out), str(out)], "not a tldeploy bench result"),
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error:") and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _recontracted(src: Path, dst: Path, **changes) -> Path:
    """A copy of the ONNX file `src` whose contract differs by `changes` (same graph)."""
    import dataclasses

    import onnx

    from tldeploy.contract import read_contract, write_contract

    model = onnx.load(str(src))
    write_contract(model, dataclasses.replace(read_contract(model), **changes))
    onnx.save(model, str(dst))
    return dst


def test_bench_refuses_artifacts_of_other_classes_or_preprocessing(artifacts, tmp_path, capsys):
    import dataclasses

    from tldeploy.contract import read_contract

    ckpt, fp32, _, data = artifacts
    prep = read_contract(fp32).preprocessing
    blue = _recontracted(fp32, tmp_path / "blue.onnx", classes=["green", "blue"])
    swapped = _recontracted(fp32, tmp_path / "swapped.onnx", classes=["red", "green"])  # same names, other order
    mean = _recontracted(fp32, tmp_path / "mean.onnx", preprocessing=dataclasses.replace(prep, mean=(0.485, 0.456, 0.406)))
    size = _recontracted(fp32, tmp_path / "size.onnx", preprocessing=dataclasses.replace(prep, resize_size=prep.resize_size + 4))
    assert read_contract(fp32).classes == ["green", "red"] and prep.mean == (0.5, 0.5, 0.5)
    out = tmp_path / "refused.json"
    for argv, needle in (
        ([fp32, blue, "--reference", ckpt], "blue.onnx has other classes than the reference"),
        ([fp32, swapped, "--reference", ckpt], "swapped.onnx has other classes than the reference"),
        ([fp32, mean, "--reference", ckpt], "mean.onnx has other preprocessing than the reference"),
        ([fp32, size, "--reference", ckpt], "size.onnx has other preprocessing than the reference"),
        ([fp32, blue], "blue.onnx has other classes than tiny.fp32.ort.onnx"),
        ([mean, fp32], "tiny.fp32.ort.onnx has other preprocessing than mean.onnx"),
    ):
        rc = main(["bench", *map(str, argv), "--data", str(data / "val"), "-o", str(out), "--batch-sizes", "1",
                   "--iters", "4", "--rounds", "2", "-q"])
        err = capsys.readouterr().err
        assert rc == 1 and err.startswith("error: ") and needle in err and "benchmark artifacts built from the same model" in err, (needle, rc, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not out.exists() and not out.with_suffix(".md").exists() and not (tmp_path / "refused_plots").exists()


def test_static_batch_artifacts_skip_other_batch_sizes_and_record_why(artifacts, tmp_path):
    from tldeploy.export.onnx_export import ExportConfig, export_onnx

    ckpt, fp32, _, data = artifacts
    one = export_onnx(ExportConfig(ckpt, tmp_path / "b1.onnx", static_batch=1)).path
    four = export_onnx(ExportConfig(ckpt, tmp_path / "b4.onnx", static_batch=4)).path
    res = run_bench(BenchConfig((fp32, one, four), tmp_path / "b.json", reference=ckpt, data=data / "val", batch_sizes=(1, 4, 8),
                                latency=FAST, time_reference=False, quiet=True))
    validate(res.document.to_json())
    by = {r["name"]: r for r in res.document.to_json()["results"]}
    timed = {name: [s["batch"] for s in r["latency"]] for name, r in by.items()}
    skipped = {name: r["skipped_batches"] for name, r in by.items()}
    assert timed == {"model.pt": [], "tiny.fp32.ort.onnx": [1, 4, 8], "b1.onnx": [1], "b4.onnx": [4]}
    assert skipped["model.pt"] == [] and skipped["tiny.fp32.ort.onnx"] == []
    assert skipped["b1.onnx"] == [{"batch": 4, "why": "the artifact's batch is fixed at 1"}, {"batch": 8, "why": "the artifact's batch is fixed at 1"}]
    assert skipped["b4.onnx"] == [{"batch": 1, "why": "the artifact's batch is fixed at 4"}, {"batch": 8, "why": "the artifact's batch is fixed at 4"}]
    for r in by.values():
        assert all(len(s["samples_ms"]) == 20 for s in r["latency"])
    for name in ("b1.onnx", "b4.onnx"):  # 16 images through a fixed batch: padded, then cut back
        assert by[name]["parity"]["n"] == 16 and by[name]["parity"]["top1_agreement"] == 1.0
    text = res.report.read_text()
    assert "- batch 1 not timed: the artifact's batch is fixed at 4" in text and "- batch 8 not timed: the artifact's batch is fixed at 1" in text


def test_bench_threads_reach_onnx_runtime_pytorch_and_the_record(artifacts, tmp_path, monkeypatch, capsys):
    import torch

    from tldeploy.runtime.runners import OrtRunner

    ckpt, fp32, _, data = artifacts
    seen = []
    activate = OrtRunner._activate

    def spy(self):
        activate(self)
        seen.append(self.session.get_session_options().intra_op_num_threads)

    monkeypatch.setattr(OrtRunner, "_activate", spy)
    out = tmp_path / "threads.json"
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        rc = main(["bench", str(fp32), "--reference", str(ckpt), "--data", str(data / "val"), "-o", str(out), "--threads", "1",
                   "--batch-sizes", "1", "--iters", "4", "--rounds", "2", "-q"])
        torch_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert rc == 0 and seen == [1] and torch_threads == 1
    doc = json.loads(out.read_text())
    assert doc["config"]["threads"] == 1 and doc["environment"]["threads"] == 1
    assert "threads: 1" in out.with_suffix(".md").read_text()
    seen.clear()
    run_bench(BenchConfig((fp32,), tmp_path / "default.json", batch_sizes=(1,), latency=FAST, quiet=True))
    assert seen == [0]  # no --threads: ONNX Runtime's own default
    capsys.readouterr()
    assert main(["bench", str(fp32), "-o", str(tmp_path / "t0.json"), "--threads", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --threads must be at least 1, got 0") and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------ compare


def _synthetic(doc, factor, run_id):
    """`doc` with every latency series replaced by a fixed one (1 ms, 2% noise) times `factor`,
    as if benched in the run `run_id`: comparisons of these test the plumbing; the statistics
    on real measurements are tested in test_bench_latency.py."""
    other = copy.deepcopy(doc)
    other["run_id"] = run_id
    series = 1.0 + 0.02 * np.random.default_rng(0).standard_normal(20)
    for r in other["results"]:
        for s in r["latency"]:
            s["samples_ms"] = [float(v) * factor for v in series]
            s["round_sizes"] = [5, 5, 5, 5]
            s["p50"] = float(np.median(series)) * factor
    return other


def _read(doc):
    """A bench document (JSON) as compare reads it."""
    return BenchDocument.from_json(doc, "bench.json")


def _slowed(doc, factor):
    return _synthetic(doc, factor, "f" * 32)


def test_compare_flags_slowdown_accuracy_and_agreement(bench_doc):
    doc = _synthetic(bench_doc.document.to_json(), 1.0, "e" * 32)
    same = compare_bench(_read(doc), _read(copy.deepcopy(doc)))
    assert not same.regressions and len(same.checks) == 3 * 2 + 3 + 2  # latency x batch, accuracy x3, agreement x2
    slow = compare_bench(_read(doc), _read(_slowed(doc, 1.5)))
    assert {c.what for c in slow.regressions} == {"p50 ms, batch 1", "p50 ms, batch 4"} and len(slow.regressions) == 6
    assert all(c.verdict.ratio == pytest.approx(1.5) and c.verdict.resampled == "rounds" for c in slow.regressions)
    assert not compare_bench(_read(doc), _read(_slowed(doc, 1.05))).regressions  # below the 10% limit
    worse = copy.deepcopy(doc)
    worse["results"][2]["accuracy"] -= 0.0625
    worse["results"][2]["parity"]["top1_agreement"] -= 0.0625
    found = {(c.name, c.what) for c in compare_bench(_read(doc), _read(worse)).regressions}
    assert found == {("tiny.int8.ort.onnx", "accuracy"), ("tiny.int8.ort.onnx", "top-1 agreement")}


def test_compare_refuses_other_environments_and_other_data(bench_doc):
    doc = bench_doc.document.to_json()
    moved = copy.deepcopy(doc)
    moved["environment"]["cpu"]["model"] = "Other CPU"
    with pytest.raises(TldeployError, match=r"different environments \(cpu.model: .* -> Other CPU\).*--allow-env-mismatch"):
        compare_bench(_read(doc), _read(moved))
    assert compare_bench(_read(doc), _read(moved), CompareConfig(allow_env_mismatch=True)).environment_differences
    other_data = copy.deepcopy(doc)
    other_data["data"]["sha256"] = "0" * 64
    result = compare_bench(_read(doc), _read(other_data))
    assert all(c.what.startswith("p50") for c in result.checks) and "different images" in result.notes[0]


def test_compare_cli_table_json_junit_and_picked_entries(bench_doc, tmp_path, capsys):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_synthetic(bench_doc.document.to_json(), 1.0, "e" * 32)))
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(_slowed(bench_doc.document.to_json(), 1.5)))
    junit = tmp_path / "compare.xml"
    assert main(["compare", str(base), str(slow), "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION: ratio 1.500" in out and "6 regression(s) in 11 check(s)" in out
    import xml.etree.ElementTree as ET

    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "11" and suite.get("failures") == "6" and len(suite.findall("testcase/failure")) == 6
    assert main(["compare", str(base), str(base), "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["regression"] is False and len(parsed["checks"]) == 11
    # two entries of one run are compared round by round
    assert main(["compare", f"{base}#tiny.fp32.ort.onnx", f"{base}#tiny.int8.ort.onnx", "--json", "--max-slowdown", "10"]) == 0
    checks = json.loads(capsys.readouterr().out)["checks"]
    assert checks[0]["name"] == "tiny.fp32.ort.onnx -> tiny.int8.ort.onnx" and checks[0]["verdict"]["resampled"] == "paired rounds"


def test_compare_picked_entries_that_do_not_exist_are_one_error_line(bench_doc, tmp_path, capsys):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(bench_doc.document.to_json()))
    junit = tmp_path / "compare.xml"
    for argv, needle in (
        ([f"{base}#nope", str(base)], "the baseline has no entry 'nope'; it has model.pt, tiny.fp32.ort.onnx, tiny.int8.ort.onnx"),
        ([str(base), f"{base}#tiny.int8"], "the current has no entry 'tiny.int8'; it has model.pt, "),
        ([f"{base}#tiny.fp32.ort.onnx", str(base)], "name an entry on both sides (FILE.json#NAME) or on neither"),
    ):
        rc = main(["compare", *argv, "--junit", str(junit)])
        captured = capsys.readouterr()
        assert not junit.exists()  # nothing written for a comparison that never ran
        assert rc == 1 and captured.out == ""
        err = captured.err
        assert err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_compare_warns_of_entries_on_one_side_only_and_compares_the_rest(bench_doc, tmp_path, capsys):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_synthetic(bench_doc.document.to_json(), 1.0, "e" * 32)))
    renamed = _synthetic(bench_doc.document.to_json(), 1.0, "f" * 32)
    renamed["results"][2]["name"] = "tiny.int8.v2.ort.onnx"
    cur = tmp_path / "cur.json"
    cur.write_text(json.dumps(renamed))
    assert main(["compare", str(base), str(cur), "--json"]) == 0
    captured = capsys.readouterr()
    checks = json.loads(captured.out)["checks"]
    assert {c["name"] for c in checks} == {"model.pt", "tiny.fp32.ort.onnx"} and len(checks) == 2 * 2 + 2 + 1
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: only in baseline: tiny.int8.ort.onnx", "warning: only in current: tiny.int8.v2.ort.onnx"]
    for r in renamed["results"]:
        r["name"] = "other-" + r["name"]
    cur.write_text(json.dumps(renamed))
    assert main(["compare", str(base), str(cur)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the two bench results share no entry names") and "FILE.json#NAME" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.gpu
def test_cuda_runner_is_timed_with_events_stage_by_stage(tiny, tmp_path):
    """PyTorch on CUDA exposes its copy-in, compute and copy-out steps; bench times each with CUDA
    events on the runner's stream. Checked where the timing could go wrong: every stage takes time;
    the copy-in grows with what it copies (batch 256 is 3 MB of float32 32x32 images, batch 1 is
    12 KB: events on the wrong stream, or stages attributed to the wrong step, lose that); and the
    event-timed calls take no longer than the host clock saw them take (a unit slip breaks that)."""
    import time

    from tldeploy.bench.latency import measure_latency
    from tldeploy.runtime.runners import TorchRunner

    ckpt, _, data = tiny
    res = run_bench(BenchConfig((ckpt,), tmp_path / "gpu.json", reference=ckpt, data=data / "val", batch_sizes=(1, 256),
                                latency=LatencyConfig(warmup=5, iters=40, rounds=4), device="cuda", quiet=True))
    validate(res.document.to_json())
    ref, art = res.document.to_json()["results"]
    assert art["device"] == "cuda" and art["parity"]["top1_agreement"] == 1.0 and art["parity"]["logits_max_abs"] < 1e-4
    for r in (ref, art):
        small, large = r["latency"]
        assert (small["batch"], large["batch"]) == (1, 256)
        for s in (small, large):
            assert s["clock"] == "cuda_events" and set(s["stages"]) == {"h2d", "compute", "d2h"}
            assert all(s["stages"][k]["min"] > 0 for k in ("h2d", "compute", "d2h"))
        assert large["stages"]["h2d"]["p50"] > 2 * small["stages"]["h2d"]["p50"], (small["stages"], large["stages"])
    assert res.document.to_json()["environment"]["gpu"]["name"]

    with TorchRunner(ckpt, device="cuda") as runner:
        size = runner.input_spec()["images"].shape[-1]
        feed = {"images": np.zeros((256, 3, size, size), np.float32)}
        measure_latency(runner, feed, LatencyConfig(warmup=5, iters=8, rounds=4))  # CUDA and cuDNN set up
        start = time.perf_counter()
        s = measure_latency(runner, feed, LatencyConfig(warmup=0, iters=40, rounds=4))
        wall_ms = (time.perf_counter() - start) * 1000  # 40 timed calls, 4 untimed ones and the set-up
    assert s.clock == "cuda_events" and len(s.samples_ms) == 40
    assert 0 < sum(s.samples_ms) <= wall_ms, (sum(s.samples_ms), wall_ms)
