"""bundle and verify on the tiny CNN: the bundle is self-contained and names nothing of this
machine, verify in another folder passes and refuses tampering before loading, the serving
configs parse with Triton's own ModelConfig and replay to the contract's outputs."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from PIL import Image

from tldeploy._io import sha256_file
from tldeploy.cli import main
from tldeploy.contract import load_onnx, read_contract, write_contract
from tldeploy.deploy import verify as verify_mod
from tldeploy.deploy.bundle import BundleConfig, bundle
from tldeploy.deploy.manifest import (
    MANIFEST,
    TOLERANCES,
    check_files,
    file_digests,
    read_tolerance,
    tolerance_failures,
)
from tldeploy.deploy.serving import NvinferNormalisation, normalisation_from_config, parse_deepstream
from tldeploy.deploy.verify import VerifyConfig, verify
from tldeploy.engines.builder import BuildConfig, build
from tldeploy.engines.capabilities import PrecisionTarget
from tldeploy.errors import ConfigError, TldeployError
from tldeploy.records import BuildRecord, Manifest
from tldeploy.runtime import host
from tldeploy.runtime.runners import OrtRunner, run_batches


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    """The tiny export, its ORT FP32 and INT8 builds, and a stand-in engine with a record from
    another machine (TensorRT 10.8 on a Jetson Orin), all in one build folder."""
    ckpt, onnx_path, data = tiny
    work = tmp_path_factory.mktemp("bundle-build")
    src = work / "tiny.onnx"
    shutil.copyfile(onnx_path, src)
    fp32 = build(BuildConfig(onnx=src, target=PrecisionTarget("fp32", "ort"))).path
    int8 = build(BuildConfig(onnx=src, target=PrecisionTarget("int8", "ort"), calib_data=data / "train")).path
    engine = work / "tiny.fp16.orin.engine"
    engine.write_bytes(b"not an engine this machine could load")
    record = json.loads(Path(str(fp32) + ".json").read_text())
    record.update({"artifact": engine.name, "artifact_sha256": sha256_file(engine), "precision": "fp16", "backend": "tensorrt",
                   "device": "cuda", "tools": {**record["tools"], "tensorrt": "10.8.0.43"},
                   "gpu": {"gpu": "Orin", "compute_capability": "8.7", "cuda": "12.6"},
                   "options": {"batch": "1,8,16", "plugins": []}})
    Path(str(engine) + ".json").write_text(json.dumps(record))
    return ckpt, data, work, [src, fp32, int8, engine]


@pytest.fixture(scope="module")
def bundled(built, tmp_path_factory):
    ckpt, data, work, artifacts = built
    out = work / "tiny-bundle"
    result = bundle(BundleConfig(tuple(artifacts), ckpt, data / "val", out, tar=True))
    return result, work


def _moved(bundled, tmp_path) -> Path:
    """The bundle unpacked from its tar in another folder, as on the device."""
    import tarfile

    result, _ = bundled
    with tarfile.open(result.tar) as tf:
        tf.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # filter: Python >= 3.11.4
    return tmp_path / result.path.name


def test_bundle_is_self_contained_and_names_nothing_of_this_machine(bundled):
    result, work = bundled
    root = result.path
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {"model.onnx", "labels.txt", MANIFEST, "golden/inputs.npz", "golden/reference.npz", "golden/inputs.json",
            "golden/reference.json", "deepstream/config_infer_primary.txt", "deepstream/config_infer_secondary.txt",
            "artifacts/tiny.fp32.ort.onnx.json", "artifacts/tiny.int8.ort.onnx", "triton/model/config.pbtxt",
            "triton/model/1/model.onnx", "triton/tiny_fp16_orin/1/model.plan"} <= files
    assert result.manifest.files == file_digests(root)
    assert (root / "labels.txt").read_text().split() == ["green", "red"]
    assert (root / "deepstream" / "labels.txt").read_text().strip() == "green;red"
    golden = np.load(root / "golden" / "inputs.npz")
    assert len(golden["inputs"]) == 16 and len(list((root / "golden" / "files").iterdir())) == 16
    for p in root.rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            assert str(work).encode() not in blob and str(Path.cwd()).encode() not in blob, p
            assert b"stack_trace" not in blob, p


def test_verify_in_another_folder_passes_then_names_a_changed_byte(bundled, tmp_path, monkeypatch):
    root = _moved(bundled, tmp_path)
    release = tmp_path / "nv_tegra_release"  # verify as on a Jetson flashed with JetPack 6.0
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024\n")
    monkeypatch.setattr(host, "NV_TEGRA_RELEASE", release)
    result = verify(VerifyConfig(root, device="cpu"))
    by = {c.artifact: c for c in result.checks}
    assert by["model.onnx"].passed and by["artifacts/tiny.fp32.ort.onnx"].passed and by["artifacts/tiny.int8.ort.onnx"].passed
    assert by["model.onnx"].parity["logits_max_abs"] <= 1e-4
    # The engine from the Orin is refused from its record, before anything tries to deserialize it.
    engine = by["artifacts/tiny.fp16.orin.engine"]
    assert not engine.passed and "built with TensorRT 10.8.0.43 on Orin (sm 8.7)" in engine.detail and "--build" in engine.detail
    assert "under JetPack 6.0 (L4T 36.3.0)" in engine.detail
    assert not result.passed and (root / "verify" / "verify.json").is_file() and (root / "verify" / "verify.md").is_file()
    assert ", JetPack 6.0 (L4T 36.3.0)" in (root / "verify" / "verify.md").read_text().splitlines()[2]
    assert json.loads((root / "verify" / "verify.json").read_text())["device"]["jetson"]["release"] == {"l4t": "36.3.0", "jetpack": "6.0"}

    # One flipped byte: named, and nothing runs.
    loaded = []
    real = verify_mod._verify_one
    monkeypatch.setattr(verify_mod, "_verify_one", lambda root_, e, *a: loaded.append(e["file"]) or real(root_, e, *a))
    target = root / "artifacts" / "tiny.int8.ort.onnx"
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 1
    target.write_bytes(bytes(blob))
    bad = verify(VerifyConfig(root, device="cpu"))
    assert not bad.passed and loaded == []  # nothing ran
    assert [c.detail for c in bad.checks] == ["artifacts/tiny.int8.ort.onnx changed: its SHA-256 differs from the manifest's (copy the bundle again)"]


def test_another_models_record_is_refused_before_loading(bundled, built, tmp_path, monkeypatch, outlier_onnx):
    root = _moved(bundled, tmp_path)
    # A record swapped for another model's, with the manifest made to match (a hand-edited bundle).
    rec_path = root / "artifacts" / "tiny.int8.ort.onnx.json"
    record = json.loads(rec_path.read_text())
    record["input_onnx_sha256"] = sha256_file(outlier_onnx[0])
    rec_path.write_text(json.dumps(record))
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"] = file_digests(root)
    (root / MANIFEST).write_text(json.dumps(manifest))
    opened = []
    import tldeploy.runtime.loader as loader

    real = loader.load_runner
    monkeypatch.setattr(loader, "load_runner", lambda path, **kw: opened.append(Path(path).name) or real(path, **kw))
    result = verify(VerifyConfig(root, device="cpu"))
    check = next(c for c in result.checks if c.artifact == "artifacts/tiny.int8.ort.onnx")
    assert not check.passed and "made from another model's ONNX; refused before loading" in check.detail
    assert "tiny.int8.ort.onnx" not in opened and "model.onnx" in opened
    # bundle itself refuses an artifact built from an ONNX it was not given.
    ckpt, data, work, artifacts = built
    with pytest.raises(ConfigError, match="built from an ONNX file not in the bundle"):
        bundle(BundleConfig((_other_export(tmp_path, artifacts[0]), artifacts[2]), ckpt, data / "val", tmp_path / "b2"))


def test_engine_refusal_names_the_jetpack_of_the_build_and_of_this_device(tmp_path, monkeypatch):
    """The one line that refuses an engine built by another TensorRT says under which JetPack it
    was built and which this device runs, where each is known."""
    import tldeploy.engines.tensorrt as trt_engines
    import tldeploy.runtime.trt as trt_runtime

    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024\n")
    monkeypatch.setattr(host, "NV_TEGRA_RELEASE", release)
    monkeypatch.setattr(trt_engines, "trt_version", lambda: "8.6.2.3")
    monkeypatch.setattr(trt_runtime, "gpu_info", lambda: {"gpu": "Orin", "compute_capability": "8.7"})
    record = BuildRecord("m.engine", "m.onnx", "0n", "fp16", "tensorrt", "cuda", tools={"tensorrt": "10.3.0.30"},
                         gpu={"gpu": "Orin", "compute_capability": "8.7"}, jetson={"l4t": "36.4.3", "jetpack": "6.2"})
    assert verify_mod._engine_mismatch(record) == ("built with TensorRT 10.3.0.30 on Orin (sm 8.7) under JetPack 6.2 (L4T 36.4.3); "
                                                   "this machine has TensorRT 8.6.2.3 under JetPack 6.0 (L4T 36.3.0)")
    # A record from a non-Jetson, read on a non-Jetson: the message names neither.
    monkeypatch.setattr(host, "NV_TEGRA_RELEASE", tmp_path / "absent")
    record = replace(record, jetson=None)
    assert verify_mod._engine_mismatch(record) == "built with TensorRT 10.3.0.30 on Orin (sm 8.7); this machine has TensorRT 8.6.2.3"


def _other_export(tmp_path: Path, onnx_path: Path) -> Path:
    """The same export saved again with a changed doc string: another file, another SHA-256."""
    m = load_onnx(onnx_path)
    m.doc_string = "another export"
    p = tmp_path / "other.onnx"
    onnx.save(m, str(p))
    return p


def test_verify_cli_fails_with_one_line_per_failed_check(bundled, tmp_path, capsys):
    root = _moved(bundled, tmp_path)
    assert main(["verify", str(root), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: artifacts/tiny.fp16.orin.engine: built with TensorRT 10.8.0.43")
    (root / "artifacts" / "tiny.fp16.orin.engine").unlink()
    assert main(["verify", str(root), "--device", "cpu"]) == 1
    assert "error: bundle: artifacts/tiny.fp16.orin.engine is missing from the bundle" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nothing")]) == 1
    assert "is not a tldeploy bundle (no manifest.json)" in capsys.readouterr().err


def _model_config():
    spec = importlib.util.find_spec("tritonclient")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    # The message module alone: importing tritonclient.grpc would need grpcio, which the check does not.
    mspec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module


def test_triton_configs_parse_with_tritons_model_config(bundled):
    from google.protobuf import text_format

    mc = _model_config()
    root = bundled[0].path
    configs = {p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig()) for p in (root / "triton").glob("*/config.pbtxt")}
    assert set(configs) == {"model", "tiny_fp32_ort", "tiny_int8_ort", "tiny_fp16_orin"}
    m = configs["model"]
    assert m.platform == "onnxruntime_onnx" and m.max_batch_size == 32 and m.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in m.input] == [("images", [3, 32, 32])]  # no batch dimension
    outs = {o.name: o for o in m.output}
    assert list(outs["logits"].dims) == [2] and outs["probs"].label_filename == "labels.txt" and list(outs["cam"].dims) == [8, 8]
    assert configs["tiny_fp16_orin"].platform == "tensorrt_plan" and configs["tiny_fp16_orin"].max_batch_size == 16
    for name, c in configs.items():
        assert (root / "triton" / name / "1" / c.default_model_filename).is_file()


def _frames(files: list[Path], size: int) -> list[np.ndarray]:
    """Frames as a serving scaler gives them: the whole image scaled to `size` (bilinear), RGB uint8."""
    return [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)) for f in files]


def test_deepstream_formula_gives_the_contracts_outputs_and_a_wrong_config_does_not(bundled, tiny, tmp_path):
    """nvinfer's y = net-scale-factor * (x - offsets), replayed from the written config on real
    images brought to the network's size, gives the contract's outputs; BGR or an averaged std
    does not. Two contracts: one nvinfer expresses as it is (one std, no crop), and one with
    ImageNet's per-channel std and a crop, which is served through the raw-input graph."""
    root = bundled[0].path
    props = parse_deepstream((root / "deepstream" / "config_infer_primary.txt").read_text())
    assert props["onnx-file"] == "../model.onnx" and props["network-type"] == "1" and props["output-blob-names"] == "probs"
    norm = normalisation_from_config(props)
    contract = read_contract(root / "model.onnx")
    prep = contract.preprocessing
    files = sorted((root / "golden" / "files").iterdir())
    seen = [np.asarray(prep.geometry()(Image.open(f).convert("RGB"))) for f in files]  # the contract's own geometry
    with OrtRunner(root / "model.onnx") as r:
        want = run_batches(r, np.stack([prep.load(f) for f in files]))
        got = run_batches(r, np.stack([norm.apply(s) for s in seen]))
    assert (got["logits"].argmax(1) == want["logits"].argmax(1)).all() and np.abs(got["logits"] - want["logits"]).max() <= 1e-4

    # A contract nvinfer cannot say: per-channel std, resize 40 then crop 32.
    ckpt, onnx_path, data = tiny
    imagenet = load_onnx(onnx_path)
    c = read_contract(imagenet)
    c2 = replace(c, preprocessing=replace(c.preprocessing, resize_size=40, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    write_contract(imagenet, c2)
    src = tmp_path / "imagenet.onnx"
    onnx.save(imagenet, str(src))
    b = bundle(BundleConfig((src,), ckpt, data / "val", tmp_path / "ib")).path
    props = parse_deepstream((b / "deepstream" / "config_infer_primary.txt").read_text())
    assert props["onnx-file"] == "../model_raw.onnx" and props["net-scale-factor"] == "1.0" and props["offsets"] == "0.0;0.0;0.0"
    assert props["infer-dims"] == "3;40;40"
    norm = normalisation_from_config(props)
    files = sorted((b / "golden" / "files").iterdir())
    prep2 = c2.preprocessing
    with OrtRunner(b / "model.onnx") as normal, OrtRunner(b / "model_raw.onnx") as raw:
        want = run_batches(normal, np.stack([prep2.load(f) for f in files]))
        got = run_batches(raw, np.stack([norm.apply(fr) for fr in _frames(files, 40)]))
        assert (got["logits"].argmax(1) == want["logits"].argmax(1)).all() and np.abs(got["logits"] - want["logits"]).max() <= 1e-4
        # Wrong configs: BGR, or the normalised model with ImageNet's std averaged into one scale.
        bgr = replace(norm, model_color_format=1)
        flipped = run_batches(raw, np.stack([bgr.apply(fr) for fr in _frames(files, 40)]))
        assert np.abs(flipped["logits"] - want["logits"]).max() > 1e-2
        # Triton's raw input: the client sends the frame as the scaler gives it (RGB 0-255 at the
        # config's dims) to the raw model, and gets the contract's outputs.
        from google.protobuf import text_format

        tc = text_format.Parse((b / "triton" / "model_raw" / "config.pbtxt").read_text(), _model_config().ModelConfig())
        assert list(tc.input[0].dims) == [3, 40, 40]
        with OrtRunner(b / "triton" / "model_raw" / "1" / tc.default_model_filename) as served:
            sent = np.stack([fr.transpose(2, 0, 1).astype(np.float32) for fr in _frames(files, 40)])
            triton = run_batches(served, sent)
        assert (triton["logits"].argmax(1) == want["logits"].argmax(1)).all() and np.abs(triton["logits"] - want["logits"]).max() <= 1e-4
        averaged = NvinferNormalisation(1.0 / (255 * float(np.mean(prep2.std))), tuple(255 * m for m in prep2.mean), 32)
        crops = [np.asarray(prep2.geometry()(Image.open(f).convert("RGB"))) for f in files]
        approx = run_batches(normal, np.stack([averaged.apply(s) for s in crops]))
        assert np.abs(approx["logits"] - want["logits"]).max() > 1e-2


def test_bundle_refuses_bad_input_in_one_line(built, tmp_path, capsys):
    ckpt, data, work, artifacts = built
    assert main(["bundle", str(artifacts[1]), "--reference", str(ckpt), "--data", str(data / "val"), "-o", str(tmp_path / "b")]) == 1
    assert "needs the FP32 ONNX export" in capsys.readouterr().err
    assert main(["bundle", str(artifacts[0]), "--reference", str(artifacts[0]), "--data", str(data / "val"), "-o", str(tmp_path / "b")]) == 1
    assert "is not the checkpoint" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert main(["bundle", str(artifacts[0]), "--reference", str(ckpt), "--data", str(data / "val"), "-o", str(tmp_path / "taken")]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def plugin_bundle(tiny, tmp_path_factory):
    """A bundle of the tiny export and its ChannelAttention plugin graph, with a plugin library."""
    from tldeploy.export.onnx_export import ExportConfig, export_onnx

    ckpt, onnx_path, data = tiny
    work = tmp_path_factory.mktemp("plugin-bundle")
    plugin = export_onnx(ExportConfig(ckpt, work / "tiny_trt.onnx", attention_plugin=True)).path
    lib = work / "libtldeploy_trt_plugin.so"
    lib.write_bytes(b"a library built on the device")
    return bundle(BundleConfig((onnx_path, plugin), ckpt, data / "val", work / "pb", plugins=lib)), lib


def test_a_plugin_graph_travels_with_the_plugin_sources_and_library(plugin_bundle, tiny, tmp_path):
    """An export with ChannelAttention plugin nodes is bundled with cpp_plugins' sources (and the
    library built for the device, when given); verify skips it on a machine without TensorRT,
    saying so, and checks the rest."""
    ckpt, onnx_path, data = tiny
    b, lib = plugin_bundle
    root = _copy(b.path, tmp_path)
    assert (root / "plugins" / "src" / "CMakeLists.txt").is_file() and (root / "plugins" / "lib" / lib.name).read_bytes() == lib.read_bytes()
    entry = next(e.to_json() for e in b.manifest.artifacts if e.file == "artifacts/tiny_trt.onnx")
    assert entry["attention"] == "plugin" and "TensorRT" in entry["measured_here"]["not_run"]
    assert not (root / "triton" / "tiny_trt").exists()  # ONNX Runtime cannot serve it
    result = verify(VerifyConfig(root, device="cpu"))
    by = {c.artifact: c for c in result.checks}
    assert result.passed and by["artifacts/tiny_trt.onnx"].skipped and by["model.onnx"].passed and not by["model.onnx"].skipped
    with pytest.raises(ConfigError, match="--plugins is for graphs with ChannelAttention plugin nodes"):
        bundle(BundleConfig((onnx_path,), ckpt, data / "val", tmp_path / "pb2", plugins=lib))


def test_an_export_with_build_machine_metadata_bundles_and_verifies(tiny, tmp_path):
    """An export from before exports were stripped (node doc strings: stack traces) and a build
    of it: the bundle strips both, and the build's record still names its (stripped) source."""
    ckpt, onnx_path, data = tiny
    old = load_onnx(onnx_path)
    old.graph.node[0].doc_string = "File \"/home/someone/train.py\", line 1"
    src = tmp_path / "old.onnx"
    onnx.save(old, str(src))
    fp32 = build(BuildConfig(onnx=src, target=PrecisionTarget("fp32", "ort"))).path
    result = bundle(BundleConfig((src, fp32), ckpt, data / "val", tmp_path / "b"))
    record = json.loads((result.path / "artifacts" / (fp32.name + ".json")).read_text())
    assert record["input_onnx_sha256"] == sha256_file(result.path / "model.onnx") != sha256_file(src)
    checks = verify(VerifyConfig(result.path, device="cpu")).checks
    assert all(c.passed for c in checks), [c.detail for c in checks]


# ------------------------------------------------------------ the manifest and the tolerances


def test_check_files_names_each_missing_changed_and_added_file(tmp_path):
    """A folder checked against its own digests passes; a removed, an edited and an added file are each named once,
    while the manifest itself and what verify writes (verify/, device/) are not bundle files."""
    (tmp_path / "sub").mkdir()
    for rel in ("a.txt", "b.txt", "sub/c.bin"):
        (tmp_path / rel).write_bytes(rel.encode())
    manifest = {"files": file_digests(tmp_path)}
    assert sorted(manifest["files"]) == ["a.txt", "b.txt", "sub/c.bin"] and check_files(tmp_path, manifest["files"]) == []
    for rel in (MANIFEST, "verify/verify.json", "device/model.engine"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text("{}")
    assert check_files(tmp_path, manifest["files"]) == []
    (tmp_path / "sub" / "new.txt").write_text("added after bundling")
    assert check_files(tmp_path, manifest["files"]) == ["sub/new.txt is not in the manifest (added after bundling?)"]
    (tmp_path / "sub" / "new.txt").unlink()
    (tmp_path / "a.txt").write_bytes(b"a.txT")
    (tmp_path / "sub" / "c.bin").unlink()
    assert check_files(tmp_path, manifest["files"]) == ["a.txt changed: its SHA-256 differs from the manifest's (copy the bundle again)",
                                               "sub/c.bin is missing from the bundle"]


def test_tolerance_failures_name_each_violated_check_alone():
    """At the FP32 limits nothing fails; each of top-1 agreement, cosine and logits max |diff| past its limit,
    the others within, fails exactly that check; a limit of None is not checked."""
    tol = TOLERANCES["fp32"]
    at_limits = {"top1_agreement": 1.0, "cosine": 0.9999, "logits_max_abs": 1e-2}
    assert tolerance_failures(SimpleNamespace(**at_limits), tol) == []
    for key, bad, message in (("top1_agreement", 31 / 32, "top-1 agreement 96.88% < 100.00%"),
                              ("cosine", 0.9998, "cosine 0.999800 < 0.9999"),
                              ("logits_max_abs", 0.02, "logits max |diff| 0.02 > 0.01")):
        assert tolerance_failures(SimpleNamespace(**{**at_limits, key: bad}), tol) == [message]
    assert tolerance_failures(SimpleNamespace(top1_agreement=0.96, cosine=0.999, logits_max_abs=100.0), TOLERANCES["fp16"]) == []
    assert len(tolerance_failures(SimpleNamespace(top1_agreement=0.5, cosine=0.5, logits_max_abs=1.0), tol)) == 3


def test_manifest_tolerances_are_written_and_read_as_bundles_always_held_them():
    """The manifest's per-precision tolerances serialise as in a bundle made before they were
    Tolerances; verify reads a manifest's own, today's for a precision it does not state; the
    failure lines keep verify.json's order (agreement, cosine, logits) and NaN passes no limit."""
    fixture = json.loads((Path(__file__).parents[1] / "fixtures" / "records" / "manifest.json").read_text())
    manifest = Manifest.from_json(fixture, "manifest.json")
    assert json.dumps(replace(manifest, tolerances=dict(TOLERANCES)).to_json()["tolerances"], indent=2) == json.dumps(fixture["tolerances"], indent=2)
    assert read_tolerance(manifest, "fp16") == TOLERANCES["fp16"] and read_tolerance(replace(manifest, tolerances={}), "int8") is TOLERANCES["int8"]
    stricter = {"fp16": {"min_top1_agreement": 1.0, "min_cosine": None, "max_logit_diff": 0.5}}
    stated = read_tolerance(Manifest.from_json({**fixture, "tolerances": stricter}, "manifest.json"), "fp16")
    assert tolerance_failures(SimpleNamespace(top1_agreement=0.5, cosine=0.5, logits_max_abs=1.0), stated) == [
        "top-1 agreement 50.00% < 100.00%", "logits max |diff| 1 > 0.5"]
    assert tolerance_failures(SimpleNamespace(top1_agreement=0.5, cosine=0.5, logits_max_abs=1.0), TOLERANCES["fp32"]) == [
        "top-1 agreement 50.00% < 100.00%", "cosine 0.500000 < 0.9999", "logits max |diff| 1 > 0.01"]
    assert tolerance_failures(SimpleNamespace(top1_agreement=1.0, cosine=float("nan"), logits_max_abs=float("nan")), TOLERANCES["fp32"]) == [
        "cosine nan < 0.9999", "logits max |diff| nan > 0.01"]
    with pytest.raises(TldeployError, match="manifest.json: a tolerance is malformed .*unknown tolerance limit.*'min_cosin'"):
        Manifest.from_json({**fixture, "tolerances": {"fp32": {"min_cosin": 0.9}}}, "manifest.json")


def test_record_mismatch_names_the_hash_that_does_not_hold():
    """Both hashes holding give None; a record of another file is named first, then one built from an ONNX not at hand."""
    record = BuildRecord("m.onnx", "in.onnx", "0n", "fp32", "ort", "cpu", artifact_sha256="aa")
    assert record.mismatch("aa", {"0n", "1n"}) is None
    assert record.mismatch("bb", {"0n"}) == "artifact_sha256"
    assert record.mismatch("bb", {"1n"}) == "artifact_sha256"
    assert record.mismatch("aa", {"1n"}) == "input_onnx_sha256"
    assert record.mismatch("aa", set()) == "input_onnx_sha256"
    assert replace(record, artifact_sha256=None).mismatch("aa", {"0n"}) == "artifact_sha256"
    assert replace(record, input_onnx_sha256="zz").mismatch("aa", {"0n"}) == "input_onnx_sha256"


# ---------------------------------------------------------------- a bundle the device can trust


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    assert main(["keygen", str(d / "release")]) == 0 and main(["keygen", str(d / "other")]) == 0
    assert (d / "release.pem").stat().st_mode & 0o777 == 0o600
    return d


@pytest.fixture(scope="module")
def signed(built, keys, tmp_path_factory):
    """`tldeploy bundle --sign` of the tiny export and its two ONNX Runtime builds."""
    ckpt, data, work, artifacts = built
    out = tmp_path_factory.mktemp("signed") / "b"
    assert main(["bundle", *map(str, artifacts[:3]), "--reference", str(ckpt), "--data", str(data / "val"), "-o", str(out),
                 "--sign", str(keys / "release.pem"), "--quiet"]) == 0
    return out


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / root.name))


def _nothing_runs(monkeypatch) -> list[str]:
    """The files any runner is asked to load during the test."""
    import tldeploy.runtime.loader as loader

    loaded: list[str] = []
    monkeypatch.setattr(loader, "load_runner", lambda path, **kw: loaded.append(str(path)) or pytest.fail(f"{path} was run"))
    return loaded


def test_a_signed_bundle_verifies_with_its_key_and_the_report_names_the_signer(signed, keys, tmp_path, capsys):
    from tldeploy.deploy.signing import key_id, load_public_key

    root = _copy(signed, tmp_path)
    assert (root / "bundle.sig").is_file() and "bundle.sig" not in json.loads((root / MANIFEST).read_text())["files"]
    assert main(["verify", str(root), "--device", "cpu", "--public-key", str(keys / "release.pub")]) == 0
    signer = key_id(load_public_key(keys / "release.pub"))
    assert f"pass  signature verified: signed by {signer}" in capsys.readouterr().out
    report = json.loads((root / "verify" / "verify.json").read_text())
    assert report["passed"] and report["signature"]["verified"] and report["signature"]["key_id"] == signer
    # verify's own output inside the bundle is outside the signature: a second verify passes too,
    # and so does model-signing's own CLI, as the README gives it (no tldeploy needed on the device).
    assert verify(VerifyConfig(root, device="cpu", public_key=keys / "release.pub")).passed
    cli = subprocess.run([str(Path(sys.executable).with_name("model_signing")), "verify", "key", str(root), "--signature",
                          str(root / "bundle.sig"), "--public_key", str(keys / "release.pub")], capture_output=True, text=True)
    assert cli.returncode == 0 and "Verification succeeded" in cli.stdout + cli.stderr, cli.stdout + cli.stderr
    # Without the key: integrity as before, and a warning that the signer was not checked.
    assert main(["verify", str(root), "--device", "cpu"]) == 0
    assert "signed, but the signer was not checked (pass --public-key KEY.pub)" in capsys.readouterr().err
    assert json.loads((root / "verify" / "verify.json").read_text())["signature"] == {
        "present": True, "checked": False, "verified": False, "key_id": None, "detail": ""}


def test_a_changed_artifact_with_its_manifest_hash_rewritten_is_refused_by_the_signature(signed, keys, tmp_path, monkeypatch, capsys):
    root = _copy(signed, tmp_path)
    target = root / "artifacts" / "tiny.int8.ort.onnx"
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 1
    target.write_bytes(bytes(blob))
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"]["artifacts/tiny.int8.ort.onnx"] = sha256_file(target)  # what a manifest alone cannot catch
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    loaded = _nothing_runs(monkeypatch)
    assert main(["verify", str(root), "--device", "cpu", "--public-key", str(keys / "release.pub")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: signature: the bundle differs from what was signed: artifacts/tiny.int8.ort.onnx, manifest.json changed"]
    assert loaded == []
    report = json.loads((root / "verify" / "verify.json").read_text())
    assert not report["passed"] and report["signature"]["checked"] and not report["signature"]["verified"]


def test_a_bundle_resigned_with_another_key_or_unsigned_is_refused(signed, keys, tmp_path, monkeypatch, capsys):
    from tldeploy.deploy.signing import sign_bundle

    root = _copy(signed, tmp_path)
    sign_bundle(root, keys / "other.pem")
    loaded = _nothing_runs(monkeypatch)
    assert main(["verify", str(root), "--public-key", str(keys / "release.pub")]) == 1
    assert capsys.readouterr().err.strip() == ("error: signature: bundle.sig does not verify with release.pub (Key mismatch: The public key "
                                               "hash in the signature's verification material does not match the provided public key.)")
    (root / "bundle.sig").write_text("{")
    assert main(["verify", str(root), "--public-key", str(keys / "release.pub")]) == 1
    assert "error: signature: bundle.sig does not verify with release.pub" in capsys.readouterr().err
    (root / "bundle.sig").unlink()
    assert main(["verify", str(root), "--public-key", str(keys / "release.pub")]) == 1
    assert "error: signature: bundle.sig is missing: the bundle is not signed" in capsys.readouterr().err
    assert main(["verify", str(root), "--public-key", str(keys / "release.pem")]) == 1  # the private half by mistake
    assert "is not a PEM public key (that is the private key: give the .pub beside it)" in capsys.readouterr().err
    assert loaded == []
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        bundle(BundleConfig((signed / "model.onnx",), signed, signed, tmp_path / "b2", sign=keys / "release.pub"))
    assert not (tmp_path / "b2").exists()


@pytest.fixture
def opened():
    """Every path Python opens while the test runs (the `open` audit event: open() and os.open())."""
    seen: list[str] = []
    _AUDIT.append(seen)
    yield seen
    _AUDIT.remove(seen)


_AUDIT: list[list[str]] = []


def _audit(event: str, args) -> None:
    if event == "open" and _AUDIT and isinstance(args[0], (str, bytes, os.PathLike)):
        _AUDIT[-1].append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # hooks cannot be removed; this one records only while a test holds `opened`


def _escape(root: Path, name: str, outside: Path) -> None:
    """The manifest's INT8 entry renamed to `name` (meant to reach `outside`), its hash made to match."""
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"][name] = sha256_file(outside)
    del manifest["files"]["artifacts/tiny.int8.ort.onnx"]
    for e in manifest["artifacts"]:
        if e["file"] == "artifacts/tiny.int8.ort.onnx":
            e["file"] = name
    (root / MANIFEST).write_text(json.dumps(manifest))
    (root / "artifacts" / "tiny.int8.ort.onnx").unlink()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink-out", "symlink-in", "symlink-folder"])
def test_verify_reads_nothing_outside_the_bundle(how, signed, tmp_path, opened, monkeypatch, capsys):
    root = _copy(signed, tmp_path / "device")
    sentinel = tmp_path / "outside.onnx"
    shutil.copyfile(signed / "artifacts" / "tiny.int8.ort.onnx", sentinel)  # a valid artifact: only the refusal keeps it out
    if how == "dotdot":
        _escape(root, "../../outside.onnx", sentinel)
        want = "names '../../outside.onnx', which is outside the bundle (it climbs out with '..')"
    elif how == "absolute":
        _escape(root, str(sentinel), sentinel)
        want = f"names '{sentinel}', which is outside the bundle (an absolute path)"
    elif how == "symlink-out":
        _escape(root, "artifacts/linked.onnx", sentinel)
        (root / "artifacts" / "linked.onnx").symlink_to(sentinel)
        want = "artifacts/linked.onnx is a symbolic link"
    elif how == "symlink-in":  # even a link to a file of the bundle: a bundle holds only files
        (root / "labels.txt").unlink()
        (root / "labels.txt").symlink_to(root / "model.onnx")
        want = "labels.txt is a symbolic link"
    else:
        (root / "verify").symlink_to(tmp_path, target_is_directory=True)  # verify's own report would be written through it
        want = "verify is a symbolic link"
    loaded = _nothing_runs(monkeypatch)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    opened.clear()  # what the test itself read to set this up
    assert main(["verify", str(root), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and want in errors[0] and "Traceback" not in err, err
    assert str(sentinel.resolve()) not in opened and loaded == []
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before  # nothing written outside either


def test_a_plugin_library_loads_only_from_a_verified_bundle_or_with_trust_plugins(plugin_bundle, keys, tmp_path, monkeypatch):
    """`verify --build` of a plugin graph compiles and loads the bundle's library: refused unless
    the signature verified or --trust-plugins says so (which the report records)."""
    from tldeploy.deploy.signing import sign_bundle

    b, lib = plugin_bundle
    root = _copy(b.path, tmp_path)
    built_with = []
    monkeypatch.setattr(verify_mod, "_plugin_library", lambda root_, out: built_with.append(root_) or lib)
    import tldeploy.engines.builder as builder

    monkeypatch.setattr(builder, "build", lambda cfg: _stop())  # the TensorRT build: past the gate
    with pytest.raises(ConfigError, match="carries the ChannelAttention plugin .native code. and its signature was not verified"):
        verify(VerifyConfig(root, build=True, device="cpu"))
    assert built_with == []
    with pytest.raises(_Stop):
        verify(VerifyConfig(root, build=True, device="cpu", trust_plugins=True))
    sign_bundle(root, keys / "release.pem")
    with pytest.raises(_Stop):
        verify(VerifyConfig(root, build=True, device="cpu", public_key=keys / "release.pub"))
    assert len(built_with) == 2
    shutil.rmtree(root / "device")
    assert verify(VerifyConfig(root, device="cpu", trust_plugins=True)).passed
    assert json.loads((root / "verify" / "verify.json").read_text())["trust_plugins"] is True


class _Stop(Exception):
    pass


def _stop():
    raise _Stop


def test_the_golden_readme_command_passes_as_written(bundled):
    """golden/README.md gives the Polygraphy command with verify's FP32 tolerance; run exactly it."""
    import shlex

    root = bundled[0].path
    text = (root / "golden" / "README.md").read_text()
    cmds = [ln.strip() for ln in text.splitlines() if ln.startswith("    polygraphy run ")]
    assert cmds and all(f"--atol {TOLERANCES['fp32'].max_logit_diff:g} --rtol 0" in c for c in cmds)
    exe = Path(sys.executable).with_name("polygraphy")
    for cmd in cmds:
        run = subprocess.run([str(exe), *shlex.split(cmd)[1:]], cwd=root, capture_output=True, text=True)
        assert run.returncode == 0 and "PASSED" in run.stdout + run.stderr, (cmd, (run.stdout + run.stderr)[-2000:])
