import subprocess
import sys

import click
import pytest
import torch

from tldeploy.cli import cli, main


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", [p for p, _ in _commands(cli)], ids=" ".join)
def test_every_help_shows_an_example(path, capsys):
    assert main([*path, "--help"]) == 0
    assert "Example" in capsys.readouterr().out


def _one_line_error(argv, capsys, code=None):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and (code is None or rc == code)
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_data_folder(tmp_path, capsys):
    line = _one_line_error(["train", str(tmp_path / "nope"), "-o", str(tmp_path / "run")], capsys)
    assert "nope does not exist" in line


def test_bad_flag_value_names_the_flag(tmp_path, capsys):
    line = _one_line_error(["train", str(tmp_path), "-o", str(tmp_path / "r"), "--mode", "bogus"], capsys, code=2)
    assert "--mode" in line and "tldeploy train --help" in line


def test_impossible_combination(blob_data, tmp_path, capsys):
    line = _one_line_error(
        ["train", str(blob_data), "-o", str(tmp_path / "r"), "--mode", "finetune", "--epochs", "2", "--warmup-epochs", "2"],
        capsys,
    )
    assert "--warmup-epochs" in line


def test_existing_run_and_foreign_resume_state(blob_data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"weights": torch.zeros(2)}, run / "last.pt")
    line = _one_line_error(["train", str(blob_data), "-o", str(run), "--backbone", "tiny_cnn"], capsys)
    assert "--force" in line
    line = _one_line_error(["train", str(blob_data), "-o", str(run), "--backbone", "tiny_cnn", "--resume"], capsys)
    assert "last.pt is not a training state written by tldeploy" in line


def test_unknown_backbone_and_digits_into_full_folder(tmp_path, blob_data, capsys):
    line = _one_line_error(["train", str(blob_data), "-o", str(tmp_path / "r"), "--backbone", "nonet"], capsys)
    assert "unknown backbone 'nonet'" in line
    line = _one_line_error(["data", "digits", str(blob_data)], capsys)
    assert "--force" in line


def test_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tldeploy", "train", str(tmp_path / "missing"), "-o", str(tmp_path / "r")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_export_and_predict_errors_are_one_line(tmp_path, capsys):
    line = _one_line_error(["export", str(tmp_path / "none.pt"), "-o", str(tmp_path / "m.onnx")], capsys)
    assert "none.pt does not exist" in line
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"\x08\x07garbage")
    line = _one_line_error(["predict", str(bogus), str(tmp_path / "x.png")], capsys)
    assert "bogus.onnx" in line


def test_backbones_lists_and_filters(capsys):
    from tldeploy.models.backbones import describe_backbone

    def listed() -> tuple[list[str], str]:  # the registered rows, then the families timm and torchvision add
        registered, families = capsys.readouterr().out.strip().split("\n\n")
        return registered.splitlines(), families

    assert main(["backbones"]) == 0
    lines, families = listed()
    rows = dict(line.split(None, 1) for line in lines)
    assert {"tiny_cnn", "tiny_vit", "efficientnet_lite0"} <= set(rows)
    assert all(desc == describe_backbone(name) for name, desc in rows.items())
    assert "vision transformers (ViT, DeiT" in families and "Swin" in families and "torchvision" in families
    assert main(["backbones", "tiny*"]) == 0
    assert [line.split()[0] for line in listed()[0]] == ["tiny_cnn", "tiny_vit"]
    assert main(["backbones", "efficientnet*"]) == 0
    names = [line.split()[0] for line in listed()[0]]
    assert names and "tiny_cnn" not in names and all(n.startswith("efficientnet") for n in names)


def test_export_json_describes_the_file_written(tiny, tmp_path, capsys):
    import json

    from tldeploy._io import sha256_file
    from tldeploy.contract import read_contract

    ckpt = tiny[0]
    out = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "-o", str(out), "--parity-samples", "5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # stdout is the JSON document and nothing else
    assert doc["path"] == str(out) and out.is_file() and doc["note"] == "" and doc["seconds"] > 0
    assert read_contract(out).checkpoint_sha256 == sha256_file(ckpt)
    assert [p["batch"] for p in doc["parity"]] == [1, 7]
    for p in doc["parity"]:
        assert p["n"] == 5 and p["failures"] == [] and p["logits_max_abs"] <= 1e-4 and p["top1_agreement"] == 1.0
    static = tmp_path / "s.onnx"
    assert main(["export", str(ckpt), "-o", str(static), "--static-batch", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["path"] == str(static) and [p["batch"] for p in doc["parity"]] == [3]
    assert read_contract(static).extra["batch"] == "3"
