"""cpp_plugins: CMake builds the CPU reference, which equals PyTorch's channel attention through the
C ABI; where nvcc exists the CUDA kernels compile for sm_87 and sm_90; where TensorRT's headers are
given (TENSORRT_ROOT) the plugin compiles and links against them."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tldeploy.cli import main
from tldeploy.engines.plugins import (
    CA_LIBRARY,
    PLUGIN_LIBRARY,
    CaLibrary,
    PluginBuildConfig,
    build_plugins,
    find_plugin_library,
)
from tldeploy.errors import ConfigError
from tldeploy.models.heads import ChannelAttention

needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")


@pytest.fixture(scope="module")
def cpu_build(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("needs cmake")
    return build_plugins(PluginBuildConfig(build_dir=tmp_path_factory.mktemp("ca_cpu"), cuda="off", tensorrt="off"))


SHAPES = [  # (N, C, H, W, reduction): the models' shapes, 1x1 maps, odd sizes, C up to 2048
    (1, 1280, 7, 7, 16), (32, 1280, 7, 7, 16), (4, 512, 14, 14, 16), (2, 2048, 1, 1, 16), (1, 2048, 7, 7, 16),
    (3, 64, 56, 56, 16), (1, 7, 3, 5, 1), (5, 33, 9, 11, 4), (2, 17, 1, 13, 8), (1, 1, 1, 1, 1), (3, 320, 5, 3, 32),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_reference_equals_pytorch(cpu_build, shape):
    n, c, h, w, r = shape
    torch.manual_seed(sum(shape))
    m = ChannelAttention(c, r).eval()
    with torch.no_grad():  # weights on the scale of trained ones, so the sigmoid is not saturated
        for p in m.parameters():
            p.normal_(0, 0.5 / np.sqrt(p.shape[-1]))
    x = torch.randn(n, c, h, w) * 2 + 0.5
    with torch.no_grad():
        ref = m(x).numpy()
    lib = CaLibrary(cpu_build.ca_library)
    y = lib.cpu_forward(x.numpy(), *(t.detach().numpy() for t in (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)))
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    assert lib.version == 1 and not lib.has_cuda


def test_cpu_reference_rejects_bad_arguments(cpu_build):
    from tldeploy.errors import TldeployError

    lib = CaLibrary(cpu_build.ca_library)
    assert lib.lib.tldeploy_ca_cpu_forward(None, None, None, None, None, None, 1, 1, 1, 1) == -1
    with pytest.raises(TldeployError, match="built without CUDA"):
        lib.cuda_forward(*[torch.zeros(1)] * 5)


@needs_cmake
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit); the CUDA kernels were not compiled")
def test_cuda_kernels_compile_for_orin_and_hopper(tmp_path):
    build = build_plugins(PluginBuildConfig(build_dir=tmp_path / "b", cuda="on", tensorrt="off", cuda_archs="87;90"))
    assert any("CUDA kernels: yes, for sm 87;90" in line for line in build.summary)
    lib = CaLibrary(build.ca_library)
    assert lib.has_cuda and lib.cuda_architectures == "87;90"
    if shutil.which("cuobjdump"):
        listing = subprocess.run(["cuobjdump", "--list-elf", str(build.ca_library)], capture_output=True, text=True).stdout
        assert "sm_87" in listing and "sm_90" in listing


# TENSORRT_ROOT: one TensorRT folder (holding include/NvInferRuntime.h), or several separated by
# os.pathsep, e.g. the oldest and newest supported versions' public headers (cpp_plugins/README.md).
TENSORRT_ROOTS = [Path(p) for p in os.environ.get("TENSORRT_ROOT", "").split(os.pathsep) if p]


def _header_version(root: Path) -> str:
    text = (root / "include" / "NvInferVersion.h").read_text()
    major, minor = (re.search(rf"#define (?:NV_TENSORRT|TRT)_{k}(?:_ENTERPRISE)? (\d+)", text) for k in ("MAJOR", "MINOR"))
    return f"{major.group(1)}.{minor.group(1)}" if major and minor else "unknown"


@needs_cmake
@pytest.mark.skipif(not TENSORRT_ROOTS or shutil.which("nvcc") is None,
                    reason="set TENSORRT_ROOT to TensorRT's headers (and have nvcc) to compile the plugin")
@pytest.mark.parametrize("root", TENSORRT_ROOTS or [None], ids=lambda r: _header_version(r) if r else "none")
def test_tensorrt_plugin_builds_and_exports_its_creators(tmp_path, root):
    build = build_plugins(PluginBuildConfig(build_dir=tmp_path / "b", cuda="on", tensorrt="on", tensorrt_root=root))
    # Against these headers, not others CMake might find.
    assert any(line.startswith(f"TensorRT plugin: yes, against {root.resolve()}") for line in build.summary), build.summary
    assert build.plugin_library is not None and build.plugin_library.name == PLUGIN_LIBRARY
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(build.plugin_library)], capture_output=True, text=True).stdout
    assert " T getCreators" in symbols


def test_plugins_build_command_and_auto_discovery(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TLDEPLOY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="tldeploy plugins build"):
        find_plugin_library()
    assert main(["build", str(tmp_path / "m.onnx"), "--precision", "fp16", "--plugins", "auto"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --plugins auto found no libtldeploy_trt_plugin.so") and len(err.strip().splitlines()) == 1
    if shutil.which("cmake") is None:
        pytest.skip("needs cmake")
    assert main(["plugins", "build", "--cuda", "off", "--tensorrt", "off"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "cache" / "plugins" / "lib" / CA_LIBRARY) in out and "TensorRT plugin: skipped" in out
    fake = tmp_path / "cache" / "plugins" / "lib" / PLUGIN_LIBRARY  # what a TensorRT machine's build leaves there
    fake.write_bytes(b"")
    assert find_plugin_library() == fake
    assert main(["plugins", "build", "--cuda", "sometimes"]) == 2
