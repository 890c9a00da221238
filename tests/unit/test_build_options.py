"""Build, predict and bench options that were validated but never run: --calib-method entropy and
percentile, --json output of build and predict, predict's CAM overwrite guard, bench --threads."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tldeploy._io import sha256_file
from tldeploy.cli import main
from tldeploy.predict import predict


@pytest.fixture
def model_copy(tiny, tmp_path):
    p = tmp_path / "tiny.onnx"
    p.write_bytes(tiny[1].read_bytes())
    return p


def _cli_json(argv, capsys):
    """Run the CLI with --json; stdout must be one JSON document and nothing else."""
    capsys.readouterr()
    rc = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def _ranges(record) -> dict[str, tuple[float, float]]:
    """{activation tensor: (lowest, highest)} of the Q/DQ artifact: its scale and zero point give
    the range ONNX Runtime quantized with (uint8: [-zp * s, (255 - zp) * s])."""
    model = onnx.load(str(Path(record["path"])))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            s, zp = float(inits[n.input[1]]), int(inits[n.input[2]])
            out[n.input[0]] = (-zp * s, (255 - zp) * s)
    return out


# ------------------------------------------------------------ --calib-method


@pytest.fixture
def calib_builds(model_copy, tiny, capsys):
    """The tiny model built fully INT8 with each calibration method, through the CLI with --json."""
    out = {}
    for method in ("minmax", "entropy", "percentile"):
        out[method] = _cli_json(["build", str(model_copy), "--precision", "int8", "--backend", "ort", "--calib-data",
                                 str(tiny[2] / "train"), "--calib-samples", "32", "--calib-method", method,
                                 "--int8-keep-float", "0", "--reduce-range", "-o", str(model_copy.with_name(f"tiny.{method}.onnx")), "-q"],
                                capsys)
    return out


def test_calib_method_reaches_the_record_and_the_calibrator(calib_builds):
    from tldeploy.engines.artifacts import cache_dir

    ort_names = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
    for method, res in calib_builds.items():
        rec = res["record"]
        assert rec["calibration"]["method"] == method and rec["quantization"]["calibration"]["method"] == method
    # One cache per method (the key covers it), each written by ONNX Runtime's calibrator of that name.
    caches = sorted((cache_dir() / "calibration").glob("calib-*.json"))
    seen = sorted(json.loads(p.read_text())["calibration_method"]["value"] for p in caches)
    assert seen == sorted(f"CalibrationMethod.{v}" for v in ort_names.values())


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_percentile_and_entropy_clip_the_minmax_ranges(calib_builds, method):
    """Percentile (99.999%) and entropy (KL over 2048 bins) ranges lie inside the min/max ones, and
    at least one is narrower (quantize_static's own entropy calibrator, with 128/128 bins, gave
    exactly the min/max ranges)."""
    mm, clipped = _ranges(calib_builds["minmax"]), _ranges(calib_builds[method])
    assert mm.keys() == clipped.keys() and mm
    scale = max(hi - lo for lo, hi in mm.values())
    for name, (lo, hi) in clipped.items():
        assert lo >= mm[name][0] - 1e-6 * scale and hi <= mm[name][1] + 1e-6 * scale, name
    assert any(hi < mm[n][1] - 1e-6 * scale or lo > mm[n][0] + 1e-6 * scale for n, (lo, hi) in clipped.items())


# ------------------------------------------------------------ --json


def test_build_json_is_the_record(model_copy, capsys):
    first = _cli_json(["build", str(model_copy), "--backend", "ort"], capsys)
    path = Path(first["path"])
    assert path == model_copy.with_name("tiny.fp32.ort.onnx") and first["reused"] is False
    assert first["record"] == json.loads(Path(str(path) + ".json").read_text())
    assert first["record"]["artifact_sha256"] == sha256_file(path) and first["record"]["size_bytes"] == path.stat().st_size
    again = _cli_json(["build", str(model_copy), "--backend", "ort"], capsys)
    assert again == {**first, "reused": True}


def test_predict_json_matches_the_library(tiny, tmp_path, capsys):
    ckpt, onnx_path, data = tiny
    images = [sorted((data / "val" / c).iterdir())[0] for c in ("red", "green")]
    cams = tmp_path / "cams"
    got = _cli_json(["predict", str(onnx_path), *map(str, images), "--top-k", "2", "--cam-out", str(cams)], capsys)
    want = predict(onnx_path, images, top_k=2)
    assert [g["image"] for g in got] == [str(p) for p in images]
    assert images[0].name == images[1].name  # red/000.png and green/000.png: the second CAM gets a suffix
    names = [f"{images[0].stem}_cam.png", f"{images[0].stem}_2_cam.png"]
    for g, w, name in zip(got, want, names, strict=True):
        assert [t["class"] for t in g["top"]] == [t["class"] for t in w.top]
        assert [t["index"] for t in g["top"]] == [t["index"] for t in w.top]
        np.testing.assert_allclose([t["prob"] for t in g["top"]], [t["prob"] for t in w.top], atol=1e-6)
        assert g["cam_png"] == str(cams / name)
        assert Path(g["cam_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [g["top"][0]["class"] for g in got] == ["red", "green"]


# ------------------------------------------------------------ predict --cam-out and --force


def test_predict_refuses_to_overwrite_cams_without_force(tiny, tmp_path, capsys):
    _, onnx_path, data = tiny
    a, b = sorted((data / "val" / "red").iterdir())[:2]
    cams = tmp_path / "cams"
    cams.mkdir()
    old = cams / f"{b.stem}_cam.png"
    old.write_bytes(b"old")
    rc = main(["predict", str(onnx_path), str(a), str(b), "--cam-out", str(cams)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: ") and str(old) in err[0] and "--force" in err[0], err
    # Nothing written: not the existing file, not the other image's CAM.
    assert old.read_bytes() == b"old" and sorted(p.name for p in cams.iterdir()) == [old.name]
    assert main(["predict", str(onnx_path), str(a), str(b), "--cam-out", str(cams), "--force"]) == 0
    for img in (a, b):
        assert (cams / f"{img.stem}_cam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(cams.glob(".*.tmp"))


# ------------------------------------------------------------ bench --threads


@pytest.mark.parametrize("threads", [None, 3])
def test_bench_threads_reach_every_onnxruntime_session(tiny, tmp_path, monkeypatch, threads):
    """--threads N sets intra_op_num_threads of each ONNX Runtime session bench opens (0, ORT's own
    choice, without it) and PyTorch's thread count, and the bench document records it."""
    import onnxruntime
    import torch

    sessions = []

    class Spy(onnxruntime.InferenceSession):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            sessions.append(self.get_session_options().intra_op_num_threads)

    torch_threads = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", Spy)
    monkeypatch.setattr(torch, "set_num_threads", torch_threads.append)  # and leave this process's setting alone
    ckpt, onnx_path, data = tiny
    out = tmp_path / "bench.json"
    argv = ["bench", str(onnx_path), "--reference", str(ckpt), "--data", str(data / "val"), "--limit", "4", "-o", str(out),
            "--batch-sizes", "1", "--warmup", "1", "--iters", "2", "--rounds", "1", "--no-reference-latency", "-q"]
    assert main(argv + (["--threads", str(threads)] if threads else [])) == 0
    assert sessions and set(sessions) == {threads or 0}
    assert torch_threads == ([threads] if threads else [])
    doc = json.loads(out.read_text())
    assert doc["config"]["threads"] == threads and doc["environment"]["threads"] == threads
