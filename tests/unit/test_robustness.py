"""Robustness parity (bench --robustness, --disagreement) on the tiny CNN: suites, what the
corruptions do (images and clips), the disagreement search, the report and gate, and compare
across runs and bench schema versions. The real models are in the integration tests."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from PIL import Image

from tldeploy.bench.bench import BenchConfig, load_bench, run_bench
from tldeploy.bench.compare import compare_bench
from tldeploy.bench.latency import LatencyConfig
from tldeploy.bench.robustness import CORRUPTIONS, SEVERITIES, Suite, check_suite_text
from tldeploy.bench.robustness.attacks import Domain, attack
from tldeploy.bench.robustness.disagreement import search_disagreements
from tldeploy.cli import main
from tldeploy.contract import load_onnx, read_contract
from tldeploy.errors import ConfigError, TldeployError
from tldeploy.modalities.audio import AudioPreprocessing
from tldeploy.models.checkpoints import load_checkpoint
from tldeploy.runtime.runners import OrtRunner, run_batches

QUICK = LatencyConfig(warmup=1, iters=5, rounds=1, settle_s=0.0)


def _with_logits(onnx_path, out, op: str, value) -> str:
    """A copy of the export whose logits pass through `op`(logits, value) (Mul by -1, Add a bias)."""
    m = load_onnx(onnx_path)
    node = next(n for n in m.graph.node if "logits" in n.output)
    node.output[0] = "logits_raw"
    for n in m.graph.node:
        for i, t in enumerate(n.input):
            if t == "logits" and n is not node:
                n.input[i] = "logits_raw"
    m.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), "logit_change"))
    m.graph.node.append(helper.make_node(op, ["logits_raw", "logit_change"], ["logits"], name="change_logits"))
    onnx.save(m, str(out))
    return out


@pytest.fixture(scope="module")
def changed(tiny, tmp_path_factory):
    """(negated, biased): the export with its logits negated, and with 0.5 added to class 0's logit."""
    _, onnx_path, _ = tiny
    root = tmp_path_factory.mktemp("changed")
    return (_with_logits(onnx_path, root / "negated.onnx", "Mul", -1.0),
            _with_logits(onnx_path, root / "biased.onnx", "Add", [0.5, 0.0]))


@pytest.fixture(scope="module")
def robust_doc(tiny, changed, tmp_path_factory):
    """One bench --robustness --disagreement run: the export, its negated copy, its biased copy."""
    ckpt, onnx_path, data = tiny
    out = tmp_path_factory.mktemp("robust") / "r.json"
    result = run_bench(BenchConfig((onnx_path, *changed), out, reference=ckpt, data=data / "val", robustness="all", disagreement=8,
                                   max_robustness_flip=0.0, epsilons=(4.0, 32.0), latency=QUICK, batch_sizes=(1,), quiet=True))
    return result


# ------------------------------------------------------------ suites and configuration


def test_suites_pick_the_modality_s_corruptions_and_the_attacks():
    image, audio = CORRUPTIONS["image"], CORRUPTIONS["audio"]
    assert Suite.parse("all", "image") == Suite(tuple(image), ("fgsm", "pgd"))
    assert Suite.parse("corruptions", "audio") == Suite(tuple(audio), ())
    assert Suite.parse("attacks", "audio") == Suite((), ("fgsm", "pgd"))
    assert Suite.parse("pgd, jpeg,jpeg", "image") == Suite(("jpeg",), ("pgd",))  # in the table's order, once each
    assert Suite.parse("none", "image") == Suite((), ())
    with pytest.raises(ConfigError, match="white_noise is an audio corruption and this is an image model; its corruptions are gaussian_noise"):
        Suite.parse("white_noise", "image")
    with pytest.raises(ConfigError, match=r"unknown suite item\(s\) model.onnx \(an artifact right after --robustness"):
        check_suite_text("model.onnx")
    with pytest.raises(ConfigError, match=r"unknown suite item\(s\) blur; choose from all, corruptions, attacks, none"):
        check_suite_text("jpeg,blur")


def test_bench_config_settles_the_suite_and_refuses_bad_robustness_options(tiny, tmp_path):
    ckpt, onnx_path, data = tiny
    base = {"artifacts": (onnx_path,), "output": tmp_path / "b.json", "reference": ckpt, "data": data / "val"}
    assert BenchConfig(**base, robustness=True).robustness == "all"  # library callers of the first version passed a flag
    assert BenchConfig(**base, max_robustness_flip=0.1).robustness == "all"
    assert BenchConfig(**base, disagreement=5).robustness == "none"  # the search alone
    assert BenchConfig(**base).robustness is None
    for kw, message in (
        ({"disagreement": 0}, "--disagreement is a number of inputs to search and must be at least 1, got 0"),
        ({"robustness": "all", "epsilons": (4.0, 0.0)}, "--epsilon takes positive budgets"),
        ({"epsilons": (-1.0,)}, "--epsilon takes positive budgets"),
        ({"max_robustness_flip": 2.0}, r"--max-robustness-flip is a share in \[0, 1\], got 2.0"),
        ({"robustness": "all", "reference": None}, "pass --reference RUN_DIR/model.pt and --data VAL_DIR"),
        ({"robustness": "jpg"}, r"unknown suite item\(s\) jpg"),
    ):
        with pytest.raises(ConfigError, match=message):
            BenchConfig(**{**base, **kw})


# ------------------------------------------------------------ what the corruptions do


def test_image_corruptions_grow_with_severity_and_repeat_with_the_seed():
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(128, 40, (224, 224, 3)), 0, 255).astype(np.uint8)
    x[60:160, 60:160] = (200, 40, 40)
    img = Image.fromarray(x)
    for name, fn in CORRUPTIONS["image"].items():
        change = [np.abs(np.asarray(fn(img, s, np.random.default_rng(1)), np.float32) - x).mean() for s in SEVERITIES]
        assert 0 < change[0] < change[1] < change[2], (name, change)
        again = fn(img, 3, np.random.default_rng(1))
        assert np.array_equal(np.asarray(again), np.asarray(fn(img, 3, np.random.default_rng(1)))) and again.size == img.size, name


def _db(x) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


def test_audio_corruptions_do_what_they_say():
    prep = AudioPreprocessing()
    rate = prep.logmel.sample_rate
    t = np.arange(rate) / rate
    tone = lambda hz, a=0.5: (a * np.sin(2 * np.pi * hz * t)).astype(np.float32)  # noqa: E731
    fns, rng = CORRUPTIONS["audio"], np.random.default_rng
    for s, snr in zip(SEVERITIES, (30, 20, 10), strict=True):
        noisy = fns["white_noise"](tone(440), s, rng(s), prep)
        assert abs(_db(tone(440)) - _db(noisy - tone(440)) - snr) < 0.3 and noisy.dtype == np.float32
    quiet = tone(440, 0.05)
    for s, db in zip(SEVERITIES, (3.0, 9.0, 18.0), strict=True):  # up or down, by the severity's level
        assert {round(_db(fns["gain"](quiet, s, rng(k), prep)) - _db(quiet), 2) for k in range(8)} == {-db, db}
    assert np.abs(fns["gain"](tone(440, 0.9), 5, rng(0), prep)).max() <= 1.0  # louder clips clip at full scale
    click = np.zeros(rate, np.float32)
    click[8000] = 1.0
    for s, share in zip(SEVERITIES, (0.10, 0.25, 0.40), strict=True):  # earlier or later by the severity's share
        shifted = [fns["time_shift"](click, s, rng(k), prep) for k in range(8)]
        assert {int(np.argmax(x)) for x in shifted} == {8000 - round(share * rate), 8000 + round(share * rate)}
        assert all(np.count_nonzero(x) == 1 for x in shifted)  # the gap is silence


def test_low_pass_cuts_off_at_the_severity_s_frequency():
    """A 4th-order Butterworth run forward and backward takes 3 dB twice at its cut-off (1/2, 1/4, 1/8 of
    Nyquist: 4, 2, 1 kHz at 16 kHz): -6.02 dB there, next to nothing an octave below, much more half an octave above."""
    prep = AudioPreprocessing()
    rate = prep.logmel.sample_rate
    t = np.arange(rate) / rate
    tone = lambda hz: (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)  # noqa: E731
    low_pass = CORRUPTIONS["audio"]["low_pass"]
    loss = lambda hz, s: _db(tone(hz)) - _db(low_pass(tone(hz), s, np.random.default_rng(0), prep))  # noqa: E731
    assert rate == 16000
    for s, cut in zip(SEVERITIES, (4000, 2000, 1000), strict=True):
        assert abs(loss(cut, s) - 6.02) < 0.5  # measured 6.018, 6.020, 6.020
        assert abs(loss(cut / 2, s)) < 0.2  # measured 0.008, 0.025, 0.031
        assert loss(1.5 * cut, s) > 20  # measured 41.6, 32.3, 29.4


# ------------------------------------------------------------ the attacks


def _linear_case(d: int = 64, n: int = 200):
    """(model, domain, raw, labels): a linear two-class model with logits (-v.x, v.x), v of +-1, on rows of d raw
    values in [0, 255] (a quarter of them at 0 or 255), normalised as (raw - 128) / 64 and labelled by the model
    (all correct when clean; logit margins at most 60, so no gradient underflows to 0), with a budget unit of half a
    level."""
    import torch

    rng = np.random.default_rng(0)
    v = rng.choice((-1.0, 1.0), d)
    model = torch.nn.Linear(d, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(np.stack([-v, v]), dtype=torch.float32))
    dom = Domain(0.0, 255.0, 0.5, "half levels", np.full((1, 1), 128, np.float32), np.full((1, 1), 64, np.float32))
    raw = rng.uniform(0, 255, (n, d)).astype(np.float32)
    raw[:, : d // 4] = rng.choice((0.0, 255.0), (n, d // 4))
    with torch.no_grad():
        labels = model(dom.torch_input(torch.from_numpy(raw))).argmax(1).numpy()
    return model, dom, raw, labels


def _accuracy_and_loss(model, dom, x, labels) -> tuple[float, float]:
    import torch

    with torch.no_grad():
        logits = model(dom.torch_input(torch.from_numpy(x)))
    return float(np.mean(logits.argmax(1).numpy() == labels)), float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)))


def test_attacks_climb_the_loss_further_than_random_signs():
    """On a linear model the loss's gradient sign is known: FGSM and PGD lower accuracy far more than random
    +-eps signs of the same size, and raise the cross-entropy loss."""
    model, dom, raw, labels = _linear_case()
    eps = 16.0  # 8 levels
    noise = np.clip(raw + eps * dom.unit * np.random.default_rng(1).choice((-1.0, 1.0), raw.shape), 0, 255).astype(np.float32)
    clean, noisy = _accuracy_and_loss(model, dom, raw, labels), _accuracy_and_loss(model, dom, noise, labels)
    assert clean[0] == 1.0 and noisy[0] > 0.9  # measured loss 0.028 clean, accuracy 0.975 with random signs
    for method in ("fgsm", "pgd"):
        acc, loss = _accuracy_and_loss(model, dom, attack(model, dom, raw, labels, eps, method), labels)
        assert acc < 0.6 and loss > 1.0 > noisy[1]  # measured accuracy 0.465 and loss 4.1 for both


def test_attacks_stay_within_the_budget_and_the_valid_range():
    """Every FGSM and PGD input is within eps budget units (eps * unit raw units, L-inf) of its source and in
    [lo, hi]; FGSM moves every value not at the range's edge by exactly eps * unit; PGD's random start plus 10
    steps of eps/4 would go 3.5 eps out without the projection."""
    model, dom, raw, labels = _linear_case()
    for eps in (4.0, 16.0):
        e = eps * dom.unit
        for method in ("fgsm", "pgd"):
            x = attack(model, dom, raw, labels, eps, method, seed=3)
            moved = np.abs(x - raw)
            inside = (raw > e) & (raw < 255 - e)  # values the range does not stop
            farthest, lowest, highest = float(moved.max()), float(x.min()), float(x.max())
            assert x.shape == raw.shape and x.dtype == np.float32
            assert farthest <= e + 1e-3 and lowest >= 0.0 and highest <= 255.0  # float32 at 255: 1.5e-5 apart
            if method == "fgsm":
                least, most = float(moved[inside].min()), float(moved[inside].max())
                assert e - 1e-3 < least <= most < e + 1e-3
            else:
                assert float(moved[inside].max()) > 0.99 * e  # the budget is used
        assert np.array_equal(attack(model, dom, raw, labels, eps, "pgd", seed=3), attack(model, dom, raw, labels, eps, "pgd", seed=3))


# ------------------------------------------------------------ the disagreement search


def test_disagreement_search_finds_real_disagreements_only_where_the_artifact_differs(tiny, changed):
    ckpt, onnx_path, data = tiny
    prep = read_contract(onnx_path).preprocessing
    paths = sorted((data / "val").rglob("*.png"))
    model, _ = load_checkpoint(ckpt)
    dom = Domain.of(prep)
    raw = dom.raw(paths, prep)
    same, biased = SimpleNamespace(name="same", runner=OrtRunner(onnx_path)), SimpleNamespace(name="biased", runner=OrtRunner(changed[1]))
    with same.runner, biased.runner:
        found = search_disagreements(model.eval(), dom, raw, [same, biased], (32.0, 2.0), paths)
        _check_found(found, same.runner, biased.runner, model, dom, raw, paths)
    assert found["biased"][0].found >= 1
    assert all(ex["reference_margin"] < 1e-3 for f in found["same"] for ex in f.examples)  # the same function differs only at the boundary
    for wide, narrow in found.values():  # what is found within 2 levels is found within 32
        assert set(narrow.rows) <= set(wide.rows) and wide.found >= narrow.found


def _check_found(found, same, biased, model, dom, raw, paths) -> None:
    import torch

    for name, f in ((name, f) for name, per_eps in found.items() for f in per_eps):
        assert f.searched + f.clean_disagreements == len(paths) and f.found == len(f.examples) <= f.searched
        runner = same if name == "same" else biased
        for x, ex in zip(f.inputs, f.examples, strict=True):
            source = raw[[f"{p.parent.name}/{p.name}" for p in paths].index(ex["input"])]
            assert np.abs(x - source).max() <= f.epsilon + 1e-3 and ex["linf"] <= f.epsilon + 1e-3
            mine = run_batches(runner, dom.to_input(x[None]))["logits"].argmax(1)[0]
            with torch.no_grad():
                theirs = model(dom.torch_input(torch.from_numpy(x[None]))).argmax(1)[0].item()
            assert mine == ex["artifact_class"] != theirs == ex["reference_class"]  # a real disagreement


# ------------------------------------------------------------ bench, report, gates


def test_bench_robustness_rows_report_and_flip_gate(tiny, robust_doc):
    """Every corruption and severity and both attacks have a row per entry; the export flips
    nothing against its checkpoint, the negated copy flips and fails --max-robustness-flip."""
    ckpt, onnx_path, _ = tiny
    doc = robust_doc.document.to_json()
    rows = {r["name"]: r["robustness"] for r in doc["results"]}
    assert len(rows[ckpt.name]["corruptions"]) == len(CORRUPTIONS["image"]) * len(SEVERITIES) and len(rows[ckpt.name]["attacks"]) == 4
    assert rows[onnx_path.name]["max_flip_rate"] == 0.0 and rows["negated.onnx"]["max_flip_rate"] > 0.5
    # Logit parity on every corrupted and adversarial input: the export is its checkpoint's function,
    # the biased copy is off by exactly the 0.5 added to class 0's logit.
    for name, diff, tol in ((onnx_path.name, 0.0, 1e-4), ("biased.onnx", 0.5, 1e-4)):
        mine = rows[name]["corruptions"] + rows[name]["attacks"]
        assert all(abs(r["logits_max_abs"] - diff) < tol for r in mine), (name, [r["logits_max_abs"] for r in mine])
    assert all(r["flip_rate"] is None and r["logits_max_abs"] is None for r in rows[ckpt.name]["corruptions"] + rows[ckpt.name]["attacks"])
    assert rows[ckpt.name]["disagreement"] is None and [d["epsilon"] for d in rows["biased.onnx"]["disagreement"]] == [4.0, 32.0]
    assert doc["config"]["robustness"] == {"suite": "all", "epsilons": [4.0, 32.0], "disagreement": 8, "budget_unit": "pixel levels of 255"}
    failures = [f for f in doc["gates"]["failures"] if "corruption flips" in f]
    assert failures and all(onnx_path.name not in f for f in failures) and any("negated.onnx" in f for f in failures)
    report = robust_doc.report.read_text()
    assert "robustness (mCE vs reference" in report and "| disagreement search | searched | found |" in report
    assert "| flips vs reference | logits max abs diff |" in report
    assert "pgd eps 32/255" in report and (robust_doc.path.parent / "r_plots" / "robustness.png").is_file()


def test_cli_robustness_takes_an_optional_suite_and_the_search_runs_alone(tiny, changed, tmp_path, capsys):
    ckpt, onnx_path, data = tiny
    common = ["--reference", str(ckpt), "--data", str(data / "val"), "--batch-sizes", "1", "--iters", "5", "--rounds", "1", "-q"]
    assert main(["bench", str(onnx_path), *common, "--robustness", "--epsilon", "2", "-o", str(tmp_path / "a.json")]) == 0
    a = load_bench(tmp_path / "a.json").to_json()
    assert a["config"]["robustness"]["suite"] == "all" and len(a["results"][1]["robustness"]["corruptions"]) == 24
    assert main(["bench", str(changed[1]), *common, "--disagreement", "4", "--epsilon", "32", "-o", str(tmp_path / "b.json")]) == 0
    row = load_bench(tmp_path / "b.json").to_json()["results"][1]["robustness"]
    assert row["suite"] == {"corruptions": [], "attacks": []} and row["corruptions"] == [] and row["mce_vs_reference"] is None
    assert row["disagreement"][0]["searched"] + row["disagreement"][0]["clean_disagreements"] == 4
    out = capsys.readouterr().out
    assert f"biased.onnx: disagreements within eps 32: {row['disagreement'][0]['found']} of" in out
    assert main(["bench", str(onnx_path), *common, "--robustness", "jpeg,white_noise", "-o", str(tmp_path / "c.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "white_noise is an audio corruption and this is an image model" in err
    assert not (tmp_path / "c.json").exists()
    flat = tmp_path / "flat"  # unlabelled: the search needs no labels, the suite does
    flat.mkdir()
    for i, f in enumerate(sorted((data / "val").rglob("*.png"))[:4]):
        (flat / f"{i}.png").write_bytes(f.read_bytes())
    common[3] = str(flat)
    assert main(["bench", str(onnx_path), *common, "--disagreement", "2", "-o", str(tmp_path / "d.json")]) == 0
    assert main(["bench", str(onnx_path), *common, "--robustness", "all", "-o", str(tmp_path / "e.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--robustness measures accuracy and needs labelled --data (class folders)" in err
    assert not (tmp_path / "e.json").exists()


# ------------------------------------------------------------ compare


def test_compare_gates_robustness_between_runs(robust_doc):
    doc = robust_doc.document
    same = compare_bench(doc, doc, base_pick="tiny.onnx", cur_pick="tiny.onnx")
    robust = [c for c in same.checks if "corruption" in c.what or "attack" in c.what or "disagree" in c.what]
    assert [c.what for c in robust][:3] == ["corruption accuracy, mean of 24", "largest corruption flip rate", "attack accuracy, mean of 4"]
    assert not any(c.regression for c in robust)
    worse = compare_bench(doc, doc, base_pick="tiny.onnx", cur_pick="negated.onnx")
    bad = {c.what for c in worse.regressions}
    assert {"corruption accuracy, mean of 24", "largest corruption flip rate"} <= bad
    flips = next(c for c in worse.checks if c.what == "largest corruption flip rate")
    assert flips.baseline == 0.0 and flips.current > 0.5 and flips.detail.endswith("limit +1")
    search = [c for c in compare_bench(doc, doc, base_pick="tiny.onnx", cur_pick="biased.onnx").checks if "disagree" in c.what]
    assert [c.what for c in search] == ["share found to disagree, eps 4", "share found to disagree, eps 32"]
    lost = replace(doc, rows=tuple(replace(r, robustness=None) if r.name == "tiny.onnx" else r for r in doc.rows))
    r = compare_bench(lost, doc)
    assert "tiny.onnx: robustness was measured in the current result only; not compared" in r.notes


def test_version_1_documents_are_read_and_compared(robust_doc, tmp_path):
    old = json.loads(robust_doc.path.read_text())
    old["schema_version"] = 1
    del old["config"]["robustness"], old["config"]["gates"]["max_robustness_flip"]
    for r in old["results"]:
        if r.get("robustness"):
            del r["robustness"]["suite"], r["robustness"]["disagreement"]
    (tmp_path / "v1.json").write_text(json.dumps(old))
    record = load_bench(tmp_path / "v1.json")
    read = record.to_json()
    assert read["schema_version"] == 2 and read["config"]["robustness"]["epsilons"] == [4.0, 32.0]
    assert read["results"][1]["robustness"]["suite"] is None and read["results"][1]["robustness"]["disagreement"] is None
    checks = compare_bench(record, robust_doc.document).checks
    assert any(c.what == "corruption accuracy, mean of 24" and not c.regression for c in checks)
    old["schema_version"] = 3
    (tmp_path / "v3.json").write_text(json.dumps(old))
    with pytest.raises(TldeployError, match="has bench schema version 3; this tldeploy reads versions 1, 2; upgrade tldeploy"):
        load_bench(tmp_path / "v3.json")
