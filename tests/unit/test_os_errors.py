"""Operating-system errors on the user's own paths are one line (the path, the reason), exit 1, no
traceback and nothing written, in every command that reads or writes files; the CLI's entry point
does this in one place. A programming error keeps its traceback."""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
from pathlib import Path

import pytest

from tldeploy.cli import main
from tldeploy.errors import os_error_line

READ_ONLY = Path("/sys/tldeploy-test")  # sysfs: no file or folder can be made there, by root either


@contextlib.contextmanager
def unreadable(path: Path):
    """`path` (a file or folder, and what is under it) unreadable: mode 000, and where that does not
    stop this process (root reads anything) the same PermissionError the OS raises, from open(),
    os.listdir() and os.scandir()."""
    path = Path(path).resolve()
    mode = path.stat().st_mode
    path.chmod(0)
    try:
        with pytest.MonkeyPatch.context() as mp:
            if os.access(path, os.R_OK):

                def denied(p) -> bool:
                    try:
                        q = Path(os.fsdecode(p)).resolve()
                    except (TypeError, ValueError):  # a file descriptor, a buffer
                        return False
                    return q == path or path in q.parents

                def guard(fn):
                    def wrapper(p=".", *args, **kwargs):
                        if denied(p):
                            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(p))
                        return fn(p, *args, **kwargs)
                    return wrapper

                mp.setattr(builtins, "open", guard(builtins.open))
                mp.setattr(os, "listdir", guard(os.listdir))
                mp.setattr(os, "scandir", guard(os.scandir))
            yield
    finally:
        path.chmod(mode)


def _commands(tiny, out: Path) -> dict[str, tuple[list[str], Path]]:
    """Each command with its output under `out`, and the input the unreadable case takes away."""
    ckpt, onnx_path, data = tiny
    image = next((data / "val").rglob("*.png"))
    return {
        "build": (["build", str(onnx_path), "--precision", "fp32", "--backend", "ort", "-o", str(out / "x.onnx")], onnx_path),
        "export": (["export", str(ckpt), "-o", str(out / "x.onnx")], ckpt),
        "train": (["train", str(data), "-o", str(out / "run"), "--backbone", "tiny_cnn", "--epochs", "1", "--quiet"], data),
        "bench": (["bench", str(onnx_path), "--data", str(data / "val"), "-o", str(out / "bench.json"), "--iters", "2",
                   "--warmup", "1", "--rounds", "1", "--batch-sizes", "1", "--no-reference-latency"], onnx_path),
        "bundle": (["bundle", str(onnx_path), "--reference", str(ckpt), "--data", str(data / "val"), "-o", str(out / "b")], ckpt),
        "predict": (["predict", str(onnx_path), str(image), "--cam-out", str(out / "cams")], image),
    }


COMMANDS = ["build", "export", "train", "bench", "bundle", "predict"]


def _one_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ") or "Traceback" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err[-1500:]
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_on_a_read_only_location_is_one_line(command, tiny, capsys):
    if not Path("/sys").is_dir():
        pytest.skip("needs Linux's /sys")
    args, _ = _commands(tiny, READ_ONLY)[command]
    assert main(args) == 1
    _one_line(capsys, "/sys", "permission denied")
    assert not READ_ONLY.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_under_a_regular_file_is_one_line(command, tiny, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    args, _ = _commands(tiny, blocker / "out")[command]
    assert main(args) == 1
    _one_line(capsys, str(blocker), "not a directory")
    assert _files(tmp_path) == {blocker} and blocker.read_text() == "not a folder\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreadable_input_is_one_line(command, tiny, tmp_path, capsys):
    args, taken = _commands(tiny, tmp_path / "out")[command]
    with unreadable(taken):
        rc = main(args)
    assert rc == 1
    _one_line(capsys, "permission denied")
    assert not (tmp_path / "out").exists()


def test_the_reasons_a_user_acts_on_and_a_bug_keeps_its_traceback(tmp_path):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    full.filename = str(tmp_path / "x.onnx")
    assert os_error_line(full) == f"{tmp_path / 'x.onnx'}: no space left on device; free space or choose another location"
    assert os_error_line(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x")) == \
        "/mnt/ro/x: read-only file system; check the path, or choose another location"
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device")) is None  # names no path: a bug
    assert os_error_line(OSError(errno.ECONNREFUSED, "Connection refused", "/x")) is None

    def broken(*_, **__):
        raise OSError(errno.EBADF, "Bad file descriptor")  # a programming error, not the user's path

    with pytest.MonkeyPatch.context() as mp:
        import tldeploy.deploy.signing as signing

        mp.setattr(signing, "keygen", broken)
        with pytest.raises(OSError, match="Bad file descriptor"):
            main(["keygen", str(tmp_path / "k")])


def test_a_full_disk_during_a_write_names_the_artifact_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """write() on a full disk raises ENOSPC without a file name; the atomic writer names the
    artifact, removes its temporary file, and the CLI prints one line."""
    real = Path.write_bytes

    def full(self, data):
        if self.name.startswith(".k.pub."):
            real(self, data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    assert main(["keygen", str(tmp_path / "k")]) == 1
    _one_line(capsys, str(tmp_path / "k.pub"), "no space left on device")
    assert list(tmp_path.iterdir()) == []  # neither the temporary file nor the private half of the pair
