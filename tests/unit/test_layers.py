"""The package's layering, as pyproject.toml's import-linter contracts state it: `make test` runs
lint-imports on the tree; these tests show that the contracts catch a back-edge and a cycle."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lint(tree: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("lint-imports is not installed (pip install -e '.[test]')")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)}  # the copy, not the installed package
    return subprocess.run([str(exe), "--no-cache", "--no-logo", str(tree / "pyproject.toml")], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path):
    shutil.copytree(ROOT / "tldeploy", tmp_path / "tldeploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_its_contracts(tree):
    run = _lint(tree)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 kept, 0 broken" in run.stdout


def test_a_planted_back_edge_fails_naming_it(tree):
    folders = tree / "tldeploy" / "data" / "folders.py"
    folders.write_text(folders.read_text() + "\n\ndef _planted():\n    from tldeploy.engines import builder  # noqa: F401\n")
    run = _lint(tree)
    assert run.returncode == 1
    assert "tldeploy.data is not allowed to import tldeploy.engines" in run.stdout
    assert "tldeploy.data.folders -> tldeploy.engines.builder" in run.stdout


def test_a_planted_cycle_between_siblings_fails(tree):
    dsp = tree / "tldeploy" / "modalities" / "audio" / "dsp.py"
    dsp.write_text(dsp.read_text() + "\n\ndef _planted():\n    from tldeploy.modalities.audio import frontend  # noqa: F401\n")
    run = _lint(tree)
    assert run.returncode == 1 and "No cycles are allowed in tldeploy.modalities.audio" in run.stdout, run.stdout
