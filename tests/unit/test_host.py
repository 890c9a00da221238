"""The Jetson release from /etc/nv_tegra_release: L4T parsed, JetPack named from the table, and
nothing (no crash) from a garbled or missing file."""

import json

import jsonschema
import pytest

from tldeploy.bench.document import SCHEMA_PATH
from tldeploy.runtime import host
from tldeploy.runtime.host import JetsonRelease, jetson_info, read_jetson_release

RELEASE_FILES = {  # first lines as L4T writes them; the second line is what JetPack 6 adds after it
    "36.4.3": "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"
              "# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n",
    "36.3": "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024\n",
    "35.4.1": "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n",
    "39.9": "# R39 (release), REVISION: 9.0, GCID: 1, BOARD: generic, EABI: aarch64, DATE: some day\n",
}


@pytest.mark.parametrize(("name", "l4t", "jetpack", "described"), [
    ("36.4.3", "36.4.3", "6.2", "JetPack 6.2 (L4T 36.4.3)"),
    ("36.3", "36.3.0", "6.0", "JetPack 6.0 (L4T 36.3.0)"),
    ("35.4.1", "35.4.1", "5.1.2", "JetPack 5.1.2 (L4T 35.4.1)"),
    ("39.9", "39.9.0", None, "L4T 39.9.0"),  # a release the table does not know: L4T alone
])
def test_release_file_names_l4t_and_jetpack(tmp_path, name, l4t, jetpack, described):
    path = tmp_path / "nv_tegra_release"
    path.write_text(RELEASE_FILES[name])
    release = read_jetson_release(path)
    assert release == JetsonRelease(l4t, jetpack) and release.describe() == described
    assert JetsonRelease.from_dict(release.to_dict()) == release


@pytest.mark.parametrize("content", [
    b"", b"garbage\n", b"\xff\xfe\x00binary \x80 junk", b"# R36 (release)\n", b"# RXX (release), REVISION: 4.3\n",
    b"__import__('os').system('false') # R36 (release), REVISION: 4.3\n",  # matched from the start of the line, never evaluated
])
def test_garbled_release_file_yields_nothing(tmp_path, content):
    path = tmp_path / "nv_tegra_release"
    path.write_bytes(content)
    assert read_jetson_release(path) is None


def test_missing_release_file_yields_nothing(tmp_path, monkeypatch):
    assert read_jetson_release(tmp_path / "absent") is None and jetson_info(tmp_path / "absent") is None
    monkeypatch.setattr(host, "NV_TEGRA_RELEASE", tmp_path / "absent")  # the default path, read at call time
    assert read_jetson_release() is None and jetson_info() is None
    assert JetsonRelease.from_dict(None) is None and JetsonRelease.from_dict({"l4t": 36}) is None


def test_jetson_environment_follows_the_bench_schema(tmp_path):
    """jetson_info's dict, as bench writes it into its environment and its report names it, for a
    known and a garbled release."""
    from tldeploy.bench.report import _jetson_release

    environment = json.loads(SCHEMA_PATH.read_text())["$defs"]["environment"]
    validator = jsonschema.Draft202012Validator(environment["properties"]["jetson"])
    path = tmp_path / "nv_tegra_release"
    path.write_text(RELEASE_FILES["36.4.3"])
    info = jetson_info(path)
    assert info["l4t"].startswith("# R36 (release), REVISION: 4.3") and info["release"] == {"l4t": "36.4.3", "jetpack": "6.2"}
    validator.validate(info)
    assert _jetson_release(info) == "JetPack 6.2 (L4T 36.4.3)"
    path.write_text("garbage\n")
    info = jetson_info(path)
    assert info["l4t"] == "garbage" and info["release"] is None
    validator.validate(info)
    assert _jetson_release(info) == "garbage"  # as a bench document written before the release was parsed reads
