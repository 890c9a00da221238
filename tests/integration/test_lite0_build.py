"""Build and bench acceptance on the real model: the digits EfficientNet-Lite0 (160 px, conftest.PX) from the train stage."""

import json

import numpy as np
import pytest

from tldeploy.contract import read_contract
from tldeploy.data.folders import find_files, load_image
from tldeploy.engines.builder import BuildConfig, build
from tldeploy.engines.capabilities import PrecisionTarget
from tldeploy.engines.quant_config import Int8Options
from tldeploy.export.onnx_export import ExportConfig, export_onnx
from tldeploy.parity import Tolerance, compare_outputs
from tldeploy.runtime.loader import load_runner
from tldeploy.runtime.runners import OrtRunner, TorchRunner, run_batches


@pytest.fixture(scope="module")
def exported(fe_run, tmp_path_factory):
    return export_onnx(ExportConfig(fe_run.checkpoint, tmp_path_factory.mktemp("build") / "digits.onnx")).path


@pytest.fixture(scope="module")
def labelled_val(exported, digits):
    contract = read_contract(exported)
    paths = find_files(digits / "val")
    tf = contract.preprocessing.eval_transform()
    x = np.stack([tf(load_image(p)).numpy() for p in paths])
    y = np.array([contract.classes.index(p.parent.name) for p in paths])
    return x, y


def _accuracy(artifact, x, y):
    with load_runner(artifact) as r:
        out = run_batches(r, x)
    return float(np.mean(out["logits"].argmax(1) == y)), out


@pytest.fixture(scope="module")
def lite0_cache(tmp_path_factory):
    """One calibration cache for this module's INT8 builds: the same model and images calibrate once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def ort_builds(exported, digits, lite0_cache):
    """The demo's builds: ONNX Runtime FP32 and INT8 (calibrated on the training images)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLDEPLOY_CACHE", str(lite0_cache))
        fp32 = build(BuildConfig(onnx=exported, target=PrecisionTarget(backend="ort")))
        int8 = build(BuildConfig(onnx=exported, target=PrecisionTarget("int8", "ort"), calib_data=digits / "train", check_data=digits / "val"))
    return fp32, int8


def test_ort_int8_keeps_the_guards_promise(ort_builds, labelled_val, fe_run):
    x, y = labelled_val
    assert len(x) == 359
    fp32, int8 = ort_builds
    q = int8.record.quantization
    acc32, out32 = _accuracy(fp32.path, x, y)
    acc8, out8 = _accuracy(int8.path, x, y)
    with TorchRunner(fe_run.checkpoint) as ref_runner:
        ref = run_batches(ref_runner, x)
    vs_fp32 = compare_outputs(out32, out8).top1_agreement
    print(f"\nINT8 build {int8.seconds:.0f} s, float units {[u['short'] for u in q['float_units']]}; "
          f"top-1 FP32 {acc32:.4f} INT8 {acc8:.4f} (drop {100 * (acc32 - acc8):.2f} points); "
          f"INT8 vs FP32 ONNX agreement {vs_fp32:.4f}")
    assert compare_outputs(ref, out32, tolerance=Tolerance(max_logit_diff=1e-4, min_top1_agreement=1.0))
    # The guard's promise, on the validation images it was given: >= 99% agreement; so the accuracy
    # can drop by at most the disagreeing share (0.00 points at 224 px, 0.56 at 160 here; what the
    # default build loses is measured by benchmarks/int8_guard.py, not gated on a trained model).
    assert q["check"]["passed"] and vs_fp32 >= 0.99 and acc32 - acc8 <= 1 - vs_fp32 + 1e-9
    stats = q["qdq"]
    assert stats["activation_zero_point_types"] == ["uint8"] and stats["weight_zero_point_types"] == ["int8"]
    assert stats["per_channel_weights"] == 49 - sum(u["op"].startswith("Conv") for u in q["float_units"])  # every other conv


def test_demo_bench_on_the_real_model_validates_against_the_schema(ort_builds, fe_run, digits, tmp_path, capsys):
    """The demo's bench stage (`tldeploy bench` with the demo's artifacts and data), on half the
    validation images and fewer iterations."""
    import jsonschema

    from tldeploy.bench.bench import SCHEMA_PATH
    from tldeploy.cli import main

    fp32, int8 = ort_builds
    out = tmp_path / "bench.json"
    rc = main(["bench", str(fp32.path), str(int8.path), "--reference", str(fe_run.checkpoint), "--data", str(digits / "val"),
               "-o", str(out), "--batch-sizes", "1,8", "--iters", "10", "--rounds", "2", "--limit", "180", "-q",
               "--max-top1-drop", "2", "--min-top1-agreement", "0.98"])
    print("\n" + capsys.readouterr().out)
    assert rc == 0
    doc = json.loads(out.read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(doc)
    ref, a32, a8 = doc["results"]
    assert doc["data"]["images"] == 180 and a32["parity"]["top1_agreement"] == 1.0 and a32["accuracy"] == ref["accuracy"]
    # The guard kept >= 99% agreement on all 359 (at most 3 disagreements), so on these 180: agreement
    # >= 177/180 > 0.98 and a drop of at most 3/180 < 2 points (measured 98.89% and -0.56 here).
    assert a8["parity"]["accuracy_delta"] >= -0.02 and all(g["passed"] for g in a8["gates"])
    assert (out.parent / "bench_plots" / "latency.png").is_file() and "## digits.int8.ort.onnx" in out.with_suffix(".md").read_text()


@pytest.mark.slow  # a minute; tests/unit/test_diagnose.py checks both widths are evaluated as the target computes, and
# benchmarks/int8_guard.py records both on this model
def test_int8_with_the_other_weight_width_keeps_its_promise(exported, digits, labelled_val, tmp_path, lite0_cache, monkeypatch):
    """The setting this CPU's preset does not choose (8-bit weights on AVX2, 7-bit on VNNI),
    evaluated as the target computes it: as written where this CPU's kernels would saturate."""
    import onnx

    from tldeploy.engines.quant_config import QuantConfig
    from tldeploy.engines.sensitivity import Evaluator, task_metrics

    monkeypatch.setenv("TLDEPLOY_CACHE", str(lite0_cache))
    other = not QuantConfig.ort_x86().reduce_range
    cfg = QuantConfig.ort_x86(reduce_range=other)
    result = build(BuildConfig(onnx=exported, target=PrecisionTarget("int8", "ort"), calib_data=digits / "train",
                               check_data=digits / "val", int8=Int8Options(reduce_range=other), output=tmp_path / "other.int8.ort.onnx"))
    x, y = labelled_val
    ev = Evaluator(x, "images", onnx.load(str(exported)), as_written=cfg.evaluated_as_written)
    logits = ev.outputs(onnx.load(str(result.path)), ["logits"])["logits"]
    m = task_metrics(ev.reference, logits)
    drop = float(np.mean(ev.reference.argmax(1) == y) - np.mean(logits.argmax(1) == y))
    q = result.record.quantization
    print(f"\nreduce_range={other}: {len(q['float_units'])} float unit(s), agreement {m.top1_agreement:.4f}, drop {100 * drop:.2f} points")
    assert q["weights"].endswith("(reduce_range)") is other
    assert m.top1_agreement >= 0.99 and drop <= 1 - m.top1_agreement + 1e-9  # as above


@pytest.mark.slow  # the same round trip runs on the tiny CNN in tests/unit/test_diagnose.py (seconds); this one takes a minute
def test_diagnose_plan_build_bench_round_trip(exported, digits, fe_run, tmp_path, lite0_cache, monkeypatch):
    """diagnose -> plan -> build --precision-plan -> bench: the bench sees at least the agreement
    the plan promised on the same images."""
    import shutil

    from tldeploy.bench.bench import BenchConfig, run_bench
    from tldeploy.bench.latency import LatencyConfig
    from tldeploy.engines.diagnose import DiagnoseConfig, diagnose

    monkeypatch.setenv("TLDEPLOY_CACHE", str(lite0_cache))
    val = tmp_path / "val"  # 12 images of each class keep the round trip short; the plan promises on these
    for d in sorted((digits / "val").iterdir()):
        (val / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:12]:
            shutil.copy(f, val / d.name / f.name)
    d = diagnose(DiagnoseConfig(onnx=exported, target=PrecisionTarget("int8", "ort"), calib_data=digits / "train", data=val,
                                output=tmp_path / "diag", rank_images=32))
    ranking = d.ranking
    assert ranking[0]["module"].startswith("backbone.features.model.") and ranking[0]["short"]
    plan = json.loads(d.plan_path.read_text())
    assert plan["promised"]["n"] == 120
    artifact = build(BuildConfig(onnx=exported, target=PrecisionTarget("int8", "ort"), calib_data=digits / "train",
                                 precision_plan=d.plan_path, check_data=val, output=tmp_path / "planned.int8.ort.onnx"))
    assert artifact.record.check["top1_agreement"] >= plan["promised"]["top1_agreement"]
    bench = run_bench(BenchConfig(artifacts=(artifact.path,), output=tmp_path / "bench.json", reference=fe_run.checkpoint,
                                  data=val, batch_sizes=(1,), latency=LatencyConfig(warmup=1, iters=2, rounds=1),
                                  time_reference=False, quiet=True))
    entry = bench.document.to_json()["results"][1]
    assert entry["build"]["kept_high_precision"] == [u["short"] for u in plan["units"]]
    assert entry["parity"]["top1_agreement"] >= plan["promised"]["top1_agreement"]


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_engines_match_pytorch(exported, digits, labelled_val, fe_run, precision):
    x, y = labelled_val
    cfg = BuildConfig(onnx=exported, target=PrecisionTarget(precision, "tensorrt"),
                      calib_data=digits / "train" if precision == "int8" else None)
    engine = build(cfg)
    acc, out = _accuracy(engine.path, x, y)
    with TorchRunner(fe_run.checkpoint) as ref_runner:
        ref = run_batches(ref_runner, x)
    report = compare_outputs(ref, out, tolerance=Tolerance(min_top1_agreement={"fp32": 0.995, "fp16": 0.99, "int8": 0.97}[precision]))
    assert report, report.table(f"TensorRT {precision}")


def test_digits_bundle_verifies_elsewhere_and_deepstream_geometry_agrees(ort_builds, exported, fe_run, digits, tmp_path):
    """The digits model's bundle (FP32 export + ORT FP32 + INT8) verifies in another folder; and
    nvinfer's path (the whole frame scaled bilinear to infer-dims, the config's formula, the raw
    graph's crop) agrees with the contract's path (bicubic shorter-side resize, crop, normalise)
    on the top-1 of the validation files."""
    import tarfile

    import numpy as np
    from PIL import Image

    from tldeploy.contract import read_contract
    from tldeploy.deploy.bundle import BundleConfig, bundle
    from tldeploy.deploy.serving import normalisation_from_config, parse_deepstream
    from tldeploy.deploy.verify import VerifyConfig, verify

    fp32, int8 = ort_builds
    result = bundle(BundleConfig((exported, fp32.path, int8.path), fe_run.checkpoint, digits / "val", tmp_path / "b", tar=True))
    with tarfile.open(result.tar) as tf:
        tf.extractall(tmp_path / "device", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    checked = verify(VerifyConfig(tmp_path / "device" / "b", device="cpu"))
    assert checked.passed, checked.failures()
    assert {c.artifact for c in checked.checks} == {"model.onnx", "model_raw.onnx", "artifacts/digits.fp32.ort.onnx", "artifacts/digits.int8.ort.onnx"}

    root = result.path
    props = parse_deepstream((root / "deepstream" / "config_infer_primary.txt").read_text())
    norm = normalisation_from_config(props)
    prep = read_contract(root / "model.onnx").preprocessing
    side = prep.resize_size  # the raw graph takes the resized frame and crops it itself
    assert props["onnx-file"] == "../model_raw.onnx" and props["infer-dims"] == f"3;{side};{side}" and props["scaling-filter"] == "1"
    files = sorted((digits / "val").rglob("*.png"))
    frames = np.stack([norm.apply(np.asarray(Image.open(f).convert("RGB").resize((side, side), Image.Resampling.BILINEAR)))
                       for f in files])
    with OrtRunner(root / "model_raw.onnx") as raw, OrtRunner(root / "model.onnx") as normal:
        served = run_batches(raw, frames)["logits"].argmax(1)
        contract = run_batches(normal, np.stack([prep.load(f) for f in files]))["logits"].argmax(1)
    agreement = float(np.mean(served == contract))
    print(f"\nDeepStream geometry (bilinear whole-frame scale) vs contract (bicubic resize + crop): top-1 agreement {agreement:.4f} on {len(files)}")
    assert agreement >= 0.99  # measured 0.9972 at 160 px, 0.9944 at 224 (AMD EPYC and Xeon)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Inputs of no digit class: random crops of the photographs scikit-image ships (offline)."""
    import skimage.data as skd
    from PIL import Image
    from skimage.util import img_as_ubyte

    out = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    names = ["astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "horse", "text", "clock",
             "grass", "gravel", "brick", "immunohistochemistry", "cat"]
    for name in names:
        img = img_as_ubyte(getattr(skd, name)())  # some are boolean or float
        img = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]
        for i in range(8):
            side = int(rng.integers(48, min(img.shape[:2]) + 1))
            top, left = (int(rng.integers(0, img.shape[k] - side + 1)) for k in (0, 1))
            Image.fromarray(img[top : top + side, left : left + side]).save(out / f"{name}_{i:02d}.png")
    return out


def test_ood_gate_on_the_digits_model(ort_builds, fe_run, digits, photos, tmp_path):
    """The stored threshold keeps 95% +- 2% of the validation set; on photographs the energy score
    separates (AUROC >= 0.95); the ORT FP32 artifact decides unknown/known as the reference does
    on >= 99.5% of inputs; the INT8 artifact's figure is reported."""
    from tldeploy.bench.bench import BenchConfig, run_bench
    from tldeploy.bench.latency import LatencyConfig
    from tldeploy.models.checkpoints import load_checkpoint

    _, meta = load_checkpoint(fe_run.checkpoint)
    assert meta["ood"]["kind"] == "energy" and abs(meta["ood"]["kept"] - 0.95) <= 0.02
    fp32, int8 = ort_builds
    doc = run_bench(BenchConfig((fp32.path, int8.path), tmp_path / "b.json", reference=fe_run.checkpoint, data=digits / "val",
                                ood_data=photos, latency=LatencyConfig(warmup=1, iters=2, rounds=1, settle_s=0.0))).document.to_json()
    rows = {r["name"]: r["ood"] for r in doc["results"]}
    ref = rows[fe_run.checkpoint.name]
    print(f"\nOOD (energy) on {ref['images']} photo crops vs {doc['data']['images']} digits: reference AUROC {ref['auroc']:.4f}, "
          f"TPR {ref['tpr']:.4f}, FPR {ref['fpr_at_tpr']:.4f}; decisions unlike the reference's: "
          f"FP32 {rows['digits.fp32.ort.onnx']['disagreement']:.4f}, INT8 {rows['digits.int8.ort.onnx']['disagreement']:.4f}, "
          f"INT8 AUROC {rows['digits.int8.ort.onnx']['auroc']:.4f}")
    assert ref["auroc"] >= 0.95 and rows["digits.fp32.ort.onnx"]["auroc"] >= 0.95  # 0.9981 here at 160 px, 0.9956 at 224 (Xeon)
    # Parity of the decision: 0 of 487 here, 1 of 599 on the Xeon (the threshold is a validation score,
    # so one input can sit on it and float noise decides it).
    assert rows["digits.fp32.ort.onnx"]["disagreement"] <= 0.005


def test_shift_tells_a_shifted_target_from_the_training_data(fe_run, digits, tmp_path, capsys):
    """Digits train (the checkpoint's feature sample) vs val: AUC <= 0.6; vs a blurred,
    contrast-reduced copy of val: AUC >= 0.9 and a higher Fréchet distance; --max-auc 0.75 fails
    only the shifted one."""
    from PIL import Image, ImageEnhance, ImageFilter

    from tldeploy.cli import main

    shifted = tmp_path / "shifted"
    for p in sorted((digits / "val").rglob("*.png")):
        target = shifted / p.parent.name / p.name
        target.parent.mkdir(parents=True, exist_ok=True)
        img = Image.open(p).convert("RGB").filter(ImageFilter.GaussianBlur(2))
        ImageEnhance.Contrast(img).enhance(0.4).save(target)
    import time

    t0 = time.perf_counter()
    assert main(["shift", "--reference", str(fe_run.checkpoint), "--data", str(digits / "val"), "-o", str(tmp_path / "same.json"),
                 "--max-auc", "0.75", "-q"]) == 0
    seconds = time.perf_counter() - t0
    assert main(["shift", "--reference", str(fe_run.checkpoint), "--data", str(shifted), "-o", str(tmp_path / "shifted.json"),
                 "--max-auc", "0.75", "-q"]) == 1
    same, moved = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("same", "shifted"))
    with capsys.disabled():
        print(f"\nshift: val AUC {same['domain_auc']:.4f} FD {same['frechet_distance']:.4g}; shifted AUC {moved['domain_auc']:.4f} "
              f"FD {moved['frechet_distance']:.4g}, unknown {moved['unknown_share']:.2%}, accuracy {moved['accuracy']:.4f}; "
              f"one shift run over {same['target_inputs']} images: {seconds:.1f} s")
    # Frozen ImageNet features, little training in them: val AUC 0.480 (160 px here; 0.465 at 224 on
    # the AMD EPYC and the Xeon), shifted 0.998-1.000.
    assert same["domain_auc"] <= 0.6 and moved["domain_auc"] >= 0.9 and moved["frechet_distance"] > same["frechet_distance"]
    assert "the target has drifted" in capsys.readouterr().err


def test_robustness_parity_on_the_digits_model(ort_builds, fe_run, digits, tmp_path):
    """What the code guarantees on the real model: every corruption grows with its severity on these
    images (measured on the inputs, not read from the tables); the ORT FP32 artifact is the
    reference's function under every corruption and attack (logits within 1e-3 on the same inputs),
    and disagrees with it only where the reference is undecided; PGD crafted on the reference
    breaks it. The INT8 artifact's flip rates and disagreement search are reported."""
    import time

    from _robustness import corruption_strengths

    from tldeploy.bench.bench import BenchConfig, run_bench
    from tldeploy.bench.latency import LatencyConfig
    from tldeploy.data.folders import even_spread

    fp32, int8 = ort_builds
    t0 = time.perf_counter()
    doc = run_bench(BenchConfig((fp32.path, int8.path), tmp_path / "r.json", reference=fe_run.checkpoint, data=digits / "val",
                                limit=16, robustness="all", epsilons=(8.0,), disagreement=8, time_reference=False,
                                latency=LatencyConfig(warmup=1, iters=2, rounds=1, settle_s=0.0), batch_sizes=(1,))).document.to_json()
    seconds = time.perf_counter() - t0
    rows = {r["name"]: r["robustness"] for r in doc["results"]}
    ref, f32, i8 = rows[fe_run.checkpoint.name], rows["digits.fp32.ort.onnx"], rows["digits.int8.ort.onnx"]
    prep = read_contract(fp32.path).preprocessing
    paths = find_files(digits / "val")
    paths = [paths[i] for i in even_spread(len(paths), 8)]
    for name in dict.fromkeys(c["corruption"] for c in ref["corruptions"]):
        strength = corruption_strengths(paths, prep, name)
        assert strength[0] < strength[1] < strength[2], (name, strength)
    for group in (f32["corruptions"], f32["attacks"]):
        worst = max(group, key=lambda r: r["logits_max_abs"])
        assert worst["logits_max_abs"] <= 1e-3, worst  # ONNX Runtime vs PyTorch float noise is ~1e-5 here
    attacks = {(a["method"], a["epsilon"]): a["accuracy"] for a in ref["attacks"]}
    # The attack works through the contract's normalisation: PGD 8/255 left the reference 0.00 (80
    # images, avx512-vnni Xeon; 32, AMD EPYC), far below the 0.2 asserted; clean accuracy is 0.96.
    assert attacks[("pgd", 8.0)] < 0.2
    assert f32["max_flip_rate"] <= 1 / 16 and all(a["flip_rate"] <= 1 / 16 for a in f32["attacks"])  # a tie: one image at most
    (s32,), (s8,) = f32["disagreement"], i8["disagreement"]
    assert s32["searched"] + s32["clean_disagreements"] == s8["searched"] + s8["clean_disagreements"] == 8
    assert all(ex["reference_margin"] < 1e-3 for ex in s32["examples"])  # float noise decides only at the boundary
    flips = {f"{c['corruption']} {c['severity']}": c["flip_rate"] for c in i8["corruptions"]}
    print(f"\nrobustness on 16 digits, {seconds:.0f} s: reference PGD 8/255 accuracy {attacks[('pgd', 8.0)]:.2f}, "
          f"FGSM 8/255 {attacks[('fgsm', 8.0)]:.2f}; FP32 max flip {f32['max_flip_rate']:.3f}, largest logit difference "
          f"{max(r['logits_max_abs'] for r in f32['corruptions'] + f32['attacks']):.2g}, mCE {f32['mce_vs_reference']:.3f}; "
          f"INT8 mCE {i8['mce_vs_reference']:.3f}, flips {flips}; INT8 attacks {[(a['method'], a['epsilon'], a['accuracy']) for a in i8['attacks']]}; "
          f"search at 8/255: FP32 {s32['found']} of {s32['searched']}, INT8 {s8['found']} of {s8['searched']}")
