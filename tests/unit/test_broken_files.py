"""Every command that reads a user's file turns a broken or hostile one into one line naming the
file and the fix, a non-zero exit, no traceback, and nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
import torch

from tldeploy.cli import main


@pytest.fixture(scope="module")
def broken(tiny, tmp_path_factory):
    ckpt, onnx_path, data = tiny
    d = tmp_path_factory.mktemp("broken")
    image = next((data / "val").rglob("*.png"))
    (d / "truncated.png").write_bytes(image.read_bytes()[:60])
    (d / "text.png").write_text("not an image")
    (d / "truncated.onnx").write_bytes(onnx_path.read_bytes()[:500])
    (d / "text.onnx").write_text("not an onnx file")
    m = onnx.load(str(onnx_path))
    m.graph.node[0].input[0] = "no_such_tensor"  # loads, but onnx.checker and ONNX Runtime reject the graph
    onnx.save(m, str(d / "dangling.onnx"))
    (d / "truncated.pt").write_bytes(ckpt.read_bytes()[:1000])
    torch.save({"weights": torch.zeros(2)}, d / "foreign.pt")
    bundle = d / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{not json")
    return {"ckpt": ckpt, "onnx": onnx_path, "image": image, "val": data / "val", "dir": d}


CASES = [
    ("predict", ["predict", "{onnx}", "{dir}/truncated.png"], "{dir}/truncated.png"),
    ("predict", ["predict", "{onnx}", "{dir}/text.png"], "{dir}/text.png"),
    ("predict", ["predict", "{dir}/truncated.onnx", "{image}"], "{dir}/truncated.onnx"),
    ("predict", ["predict", "{dir}/text.onnx", "{image}"], "{dir}/text.onnx"),
    ("predict", ["predict", "{dir}/dangling.onnx", "{image}"], "{dir}/dangling.onnx"),
    ("bench", ["bench", "{dir}/dangling.onnx", "--data", "{val}", "-o", "{dir}/out/bench.json"], "{dir}/dangling.onnx"),
    ("build", ["build", "{dir}/dangling.onnx", "--precision", "fp32", "--backend", "ort", "-o", "{dir}/out/m.onnx"], "{dir}/dangling.onnx"),
    ("export", ["export", "{dir}/truncated.pt", "-o", "{dir}/out/m.onnx"], "{dir}/truncated.pt"),
    ("export", ["export", "{dir}/foreign.pt", "-o", "{dir}/out/m.onnx"], "{dir}/foreign.pt"),
    ("bundle", ["bundle", "{dir}/dangling.onnx", "--reference", "{ckpt}", "--data", "{val}", "-o", "{dir}/out/b"], "dangling.onnx"),
    ("verify", ["verify", "{dir}/bundle"], "manifest.json"),
]


@pytest.mark.parametrize("command,argv,named", CASES, ids=[f"{c}-{Path(n).name}" for c, _, n in CASES])
def test_broken_file_gives_one_line_and_leaves_nothing(broken, command, argv, named, capsys):
    subs = {k: str(v) for k, v in broken.items()}
    out = broken["dir"] / "out"
    shutil.rmtree(out, ignore_errors=True)
    assert main([a.format(**subs) for a in argv]) == 1
    captured = capsys.readouterr()
    err = [line for line in captured.err.strip().splitlines() if line.startswith("error")]  # progress lines aside
    assert len(err) == 1 and err[0].startswith("error: "), captured.err
    assert named.format(**subs) in err[0], err[0]
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))
