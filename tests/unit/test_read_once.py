"""An INT8 build and a bundle parse each input ONNX file once (`contract.OnnxFile`), and a bundle
does not read back the files it writes. Counted by patching `onnx.load`; ONNX Runtime's own
quantization pre-processing reads the INT8 build's input once more by itself (given the parsed graph
instead, its optimizer fails on the initializers it moves out) and is counted apart.

Before the handle (bfae8cb, same tiny model): the INT8 build parsed its input 5 times (4 of them
tldeploy's), the FP32 build 3; the bundle parsed the export 2 times, each other artifact 2, and
read back its own model.onnx 6 times and each bundled artifact 2."""

from __future__ import annotations

import collections
import shutil
import traceback

import onnx
import pytest

from tldeploy.deploy.bundle import BundleConfig, bundle
from tldeploy.engines.builder import BuildConfig, build
from tldeploy.engines.capabilities import PrecisionTarget


@pytest.fixture
def parses(monkeypatch):
    """{(who, path): onnx.load calls}: who is "ort" for loads ONNX Runtime makes, else "ours"."""
    counts: collections.Counter = collections.Counter()
    real = onnx.load

    def counting(f, *args, **kwargs):
        who = "ort" if any("onnxruntime" in frame.filename for frame in traceback.extract_stack()[:-1]) else "ours"
        counts[(who, str(f))] += 1
        return real(f, *args, **kwargs)

    monkeypatch.setattr(onnx, "load", counting)
    monkeypatch.setattr(onnx, "load_model", counting)
    return counts


def test_build_and_bundle_parse_each_input_once(tiny, tmp_path, parses):
    ckpt, onnx_path, data = tiny
    src = tmp_path / "tiny.onnx"
    shutil.copyfile(onnx_path, src)
    fp32 = build(BuildConfig(onnx=src, target=PrecisionTarget("fp32", "ort"))).path
    assert parses[("ours", str(src))] == 1, dict(parses)
    parses.clear()
    int8 = build(BuildConfig(onnx=src, target=PrecisionTarget("int8", "ort"), calib_data=data / "train")).path
    assert parses[("ours", str(src))] == 1 and parses[("ort", str(src))] <= 1, dict(parses)
    parses.clear()
    bundle(BundleConfig((src, fp32, int8), ckpt, data / "val", tmp_path / "bundle"))
    inputs = {str(p) for p in (src, fp32, int8)}
    assert {path: n for (_, path), n in parses.items() if path in inputs} == dict.fromkeys(inputs, 1), dict(parses)
    assert not [path for (_, path), n in parses.items() if path not in inputs], dict(parses)  # nothing it wrote read back
