"""The TensorRT code against the real Python API of every supported TensorRT version.

`make typecheck` prepares the bindings over stand-in libraries (tools/trt_api.py); these tests use
that folder ($TLDEPLOY_TRT_API, default .venv/trt-api) and skip, saying so, where it is missing.
The version gate and the refusals of features an old TensorRT lacks are also tested over a fake
`tensorrt` module, which needs no bindings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import trt_api

from tldeploy.engines.tensorrt import EngineFromOnnx, TrtConfig
from tldeploy.errors import ConfigError, MissingDependencyError
from tldeploy.runtime.trt import hardware_compatibility_level, require_tensorrt, tensorrt_unavailable

ROOT = Path(__file__).resolve().parents[2]
API = Path(os.environ.get("TLDEPLOY_TRT_API", ROOT / ".venv" / "trt-api"))
OLDEST, NEWEST = "10.3", "11.4"  # JetPack 6.1/6.2; the newest

needs_bindings = pytest.mark.skipif(
    not all((API / v / "VERSION").is_file() for v in trt_api.VERSIONS),
    reason=f"the TensorRT bindings are not prepared in {API}; run 'make typecheck' (it downloads them)",
)


@needs_bindings
def test_every_tensorrt_name_our_code_reads_exists_in_every_supported_version():
    files = trt_api.tensorrt_files()
    names = {p.relative_to(ROOT).as_posix() for p in files}
    assert {"tldeploy/engines/tensorrt.py", "tldeploy/runtime/trt.py", "tldeploy/runtime/trt_runner.py",
            "benchmarks/trt_digits.py"} <= names
    refs = trt_api.references(files)
    paths = {r.path for r in refs}
    # The collector sees what the builder really uses, probes included.
    assert {"NetworkDefinitionCreationFlag.STRONGLY_TYPED", "BuilderFlag.VERSION_COMPATIBLE",
            "ILogger.Severity.INTERNAL_ERROR", "TensorIOMode.INPUT"} <= paths
    assert any(r.optional and r.path == "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY" for r in refs)
    assert trt_api.check(API, list(trt_api.VERSIONS), files) == []


def _plant(tmp_path: Path, name: str, old: str, new: str) -> Path:
    src = (ROOT / "tldeploy" / "engines" / "tensorrt.py").read_text()
    assert old in src, old
    # A module name of its own: mypy's cache (shared with make typecheck) keys on module names.
    path = tmp_path / f"planted_{tmp_path.name}_{os.getpid()}_{name}"
    path.write_text(src.replace(old, new))
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    return {
        "int8_flag": _plant(tmp, "int8_flag.py", "config.add_optimization_profile(profile)\n",
                            "config.add_optimization_profile(profile)\n        config.set_flag(trt.BuilderFlag.INT8)\n"),
        "explicit_batch": _plant(tmp, "explicit_batch.py", "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
                                 "NetworkDefinitionCreationFlag.EXPLICIT_BATCH"),
        # In 10.8 and later, not in 10.3: a use outside a probe fails only the 10.3 checks; the same
        # name probed with getattr(..., None) is a feature probe and passes.
        "editable_cache": _plant(tmp, "editable_cache.py", "config.add_optimization_profile(profile)\n",
                                 "config.add_optimization_profile(profile)\n        config.set_flag(trt.BuilderFlag.EDITABLE_TIMING_CACHE)\n"),
        "editable_cache_probe": _plant(tmp, "editable_cache_probe.py", "config.add_optimization_profile(profile)\n",
                                       "config.add_optimization_profile(profile)\n"
                                       "        if (flag := getattr(trt.BuilderFlag, \"EDITABLE_TIMING_CACHE\", None)) is not None:\n"
                                       "            config.set_flag(flag)\n"),
        "arg_count": _plant(tmp, "arg_count.py", "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)",
                            "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)"),
    }


@needs_bindings
def test_planted_misuse_fails_the_check_of_the_version_that_lacks_it(planted):
    files = list(planted.values())
    runs = trt_api.typecheck(API, [OLDEST, NEWEST], files)
    new, old = runs[NEWEST].stdout, runs[OLDEST].stdout
    assert runs[NEWEST].returncode == 1 and runs[OLDEST].returncode == 1
    # Removed in TensorRT 11, present in 10.x: only the 11.x check fails on them.
    assert re.search(r'int8_flag\.py:\d+: error: "type\[BuilderFlag\]" has no attribute "INT8"', new), new
    assert re.search(r'explicit_batch\.py:\d+: error: "type\[NetworkDefinitionCreationFlag\]" has no attribute "EXPLICIT_BATCH"', new), new
    assert "int8_flag.py" not in old and "explicit_batch.py" not in old, old
    # Added in 10.8: only the 10.3 check fails on it, and never on its probe.
    assert re.search(r'editable_cache\.py:\d+: error: "type\[BuilderFlag\]" has no attribute "EDITABLE_TIMING_CACHE"', old), old
    assert "editable_cache.py" not in new and "editable_cache_probe.py" not in old + new, new
    # A wrong argument count fails against every version.
    for out in (new, old):
        assert re.search(r'arg_count\.py:\d+: error: Missing positional argument "pool_size" in call to "set_memory_pool_limit"', out), out
    # The run-time surface check names them too, for 11.x only.
    problems = trt_api.check(API, [OLDEST, NEWEST], [planted["int8_flag"], planted["explicit_batch"]])
    assert any("trt.BuilderFlag.INT8 does not exist in TensorRT 11.4.0.106" in p for p in problems), problems
    assert any("trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH does not exist in TensorRT 11.4.0.106" in p for p in problems)
    assert not any(trt_api.VERSIONS[OLDEST] in p for p in problems), problems
    problems = trt_api.check(API, list(trt_api.VERSIONS), [planted["editable_cache"]])
    assert problems and all(p.endswith("trt.BuilderFlag.EDITABLE_TIMING_CACHE does not exist in TensorRT 10.3.0") for p in problems), problems
    assert trt_api.check(API, list(trt_api.VERSIONS), [planted["editable_cache_probe"]]) == []


_BRANCHES = r"""
import json, sys
import tensorrt_bindings
sys.modules["tensorrt"] = tensorrt_bindings
from tldeploy.errors import ConfigError
from tldeploy.runtime.trt import hardware_compatibility_level, require_tensorrt
require_tensorrt()  # every supported version passes the version gate
out = {}
for name in ("none", "ampere+", "same-compute-capability"):
    try:
        out[name] = str(hardware_compatibility_level(name))
    except ConfigError as e:
        out[name] = "ConfigError: " + str(e)
print(json.dumps(out))
"""


@needs_bindings
@pytest.mark.parametrize("version", list(trt_api.VERSIONS))
def test_version_dependent_branches_take_the_branch_that_exists(version):
    run = subprocess.run([sys.executable, "-c", _BRANCHES], env=trt_api.binding_env(API, version), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    levels = json.loads(run.stdout)
    assert levels["none"] == "HardwareCompatibilityLevel.NONE" and levels["ampere+"] == "HardwareCompatibilityLevel.AMPERE_PLUS"
    has_same_cc = trt_api.resolve(API, version, ["HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY"])
    if next(iter(has_same_cc.values())):
        assert levels["same-compute-capability"] == "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY"
    else:  # 10.3, 10.8: one clear line instead of an AttributeError inside the build
        assert levels["same-compute-capability"].startswith("ConfigError: --hardware-compat same-compute-capability needs TensorRT >= 10.9")


# What a TensorRT of each version has that a user can ask for (checked against the real bindings
# above, and by bisecting the bindings wheels: SAME_COMPUTE_CAPABILITY came in 10.9.0.34).
_LEVELS = {"10.3.0": ("NONE", "AMPERE_PLUS"), "10.9.0.34": ("NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY")}


def _fake_tensorrt(monkeypatch, version: str) -> None:
    """`import tensorrt` gives a module that reports `version` and has that version's hardware
    compatibility levels, and nothing else: a request that reaches further fails loudly."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    levels = {n: f"HardwareCompatibilityLevel.{n}" for n in _LEVELS.get(version, ())}
    trt.HardwareCompatibilityLevel = type("HardwareCompatibilityLevel", (), levels)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)


def test_tensorrt_10_3_passes_the_version_gate_and_refuses_what_it_lacks_in_one_line(monkeypatch, tmp_path):
    _fake_tensorrt(monkeypatch, "10.3.0")
    require_tensorrt()
    assert hardware_compatibility_level("ampere+") == "HardwareCompatibilityLevel.AMPERE_PLUS"
    # Each feature 10.3 lacks, asked for the way a user asks: refused before the ONNX is read.
    lacking = {"same-compute-capability": "TensorRT >= 10.9 (HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY; this is 10.3.0)"}
    for option, expected in lacking.items():
        with pytest.raises(ConfigError) as e:
            EngineFromOnnx(tmp_path / "missing.onnx", TrtConfig(hardware_compat=option))()
        message = str(e.value)
        assert "\n" not in message and message.startswith(f"--hardware-compat {option} needs {expected}"), message


def test_tensorrt_10_9_has_same_compute_capability(monkeypatch):
    _fake_tensorrt(monkeypatch, "10.9.0.34")
    require_tensorrt()
    assert hardware_compatibility_level("same-compute-capability") == "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY"


def test_tensorrt_older_than_10_3_is_refused_naming_10_3(monkeypatch):
    _fake_tensorrt(monkeypatch, "10.2.0")
    with pytest.raises(MissingDependencyError, match=r"^tensorrt>=10\.3 \(found 10\.2\.0\) is not installed"):
        require_tensorrt()
    assert tensorrt_unavailable() == ("tensorrt>=10.3 (found 10.2.0) is not installed (needed for strongly typed engines); "
                                      "install it with: pip install 'tldeploy[tensorrt]'")
