"""The cpp_plugins libraries: build them with CMake into a known place, find them, call them.

    tldeploy plugins build            # -> $TLDEPLOY_CACHE/plugins/lib/libtldeploy_ca.so (+ the TensorRT plugin)
    tldeploy build m.onnx --precision fp16 --plugins auto

`libtldeploy_ca` holds the C ABI of cpp_plugins/include/tldeploy_ca.h: the CPU reference and,
when built with CUDA, the fused kernels. `libtldeploy_trt_plugin` is the TensorRT plugin
`ChannelAttention` (built where TensorRT's headers are found). `CaLibrary` calls the C ABI with
ctypes on raw pointers, for tests and benchmarks.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tldeploy.errors import ConfigError, TldeployError

if TYPE_CHECKING:
    import numpy as np

# --cuda and --tensorrt: build where the toolchain is found, always (failing without it), or never.
SWITCHES = ("auto", "on", "off")

CA_LIBRARY = "libtldeploy_ca.so"
PLUGIN_LIBRARY = "libtldeploy_trt_plugin.so"
FLOAT32, FLOAT16 = 0, 1


def source_dir() -> Path:
    """cpp_plugins/ of this checkout (the libraries are built from source, not shipped in the wheel)."""
    src = Path(__file__).resolve().parents[2] / "cpp_plugins"
    if not (src / "CMakeLists.txt").is_file():
        raise TldeployError(f"cpp_plugins/ sources are not at {src}; building the plugins needs a checkout of the "
                            "tldeploy repository installed with 'pip install -e .'")
    return src


def default_build_dir() -> Path:
    from tldeploy.engines.artifacts import cache_dir

    return cache_dir() / "plugins"


@dataclass(frozen=True)
class PluginBuildConfig:
    build_dir: Path | None = None  # default: $TLDEPLOY_CACHE/plugins
    cuda: str = "auto"  # auto (where nvcc is found), on, off
    tensorrt: str = "auto"  # auto (where TensorRT's headers are found), on, off
    tensorrt_root: Path | None = None
    cuda_archs: str = "87;90"  # Jetson Orin, Hopper
    jobs: int = 2

    def __post_init__(self) -> None:
        for flag, value in (("--cuda", self.cuda), ("--tensorrt", self.tensorrt)):
            if value not in SWITCHES:
                raise ConfigError(f"{flag} must be auto, on or off, got {value!r}")
        if not all(a.strip().isdigit() for a in self.cuda_archs.split(";")):
            raise ConfigError(f"--cuda-archs takes compute capabilities like '87;90', got {self.cuda_archs!r}")
        if self.tensorrt_root is not None and not Path(self.tensorrt_root).is_dir():
            raise ConfigError(f"--tensorrt-root {self.tensorrt_root} is not a folder; pass TensorRT's folder (with include/NvInferRuntime.h)")


@dataclass
class PluginBuild:
    build_dir: Path
    ca_library: Path
    plugin_library: Path | None
    summary: list[str] = field(default_factory=list)  # CMake's "what was built" lines


def build_plugins(cfg: PluginBuildConfig = PluginBuildConfig(), source: Path | None = None) -> PluginBuild:
    """Configure and build cpp_plugins with CMake; an up-to-date build only re-links what changed.
    `source`: another copy of the sources (a bundle's plugins/src) instead of this checkout's."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise TldeployError("cmake is not on PATH; install it (pip install cmake, or your system's package) to build cpp_plugins")
    build_dir = Path(cfg.build_dir or default_build_dir())
    args = [cmake, "-S", str(source or source_dir()), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
            f"-DTLDEPLOY_CUDA={cfg.cuda.upper()}", f"-DTLDEPLOY_TENSORRT={cfg.tensorrt.upper()}",
            f"-DCMAKE_CUDA_ARCHITECTURES={cfg.cuda_archs}"]
    if cfg.tensorrt_root is not None:
        args.append(f"-DTENSORRT_ROOT={Path(cfg.tensorrt_root).resolve()}")
    configure = _run(args, "configuring cpp_plugins")
    _run([cmake, "--build", str(build_dir), "-j", str(cfg.jobs)], "building cpp_plugins")
    summary = [line.split("tldeploy plugins: ", 1)[1] for line in configure.splitlines() if "tldeploy plugins: " in line]
    built = any(line.startswith("TensorRT plugin: yes") for line in summary)  # not a stale file of an earlier build
    return PluginBuild(build_dir, build_dir / "lib" / CA_LIBRARY, build_dir / "lib" / PLUGIN_LIBRARY if built else None, summary)


def _run(args: list[str], what: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join(line.strip() for line in (proc.stdout + proc.stderr).splitlines()[-6:] if line.strip())
        raise TldeployError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def find_plugin_library() -> Path:
    """The TensorRT plugin library `tldeploy plugins build` made (for --plugins auto)."""
    lib = default_build_dir() / "lib" / PLUGIN_LIBRARY
    if not lib.is_file():
        raise ConfigError(f"--plugins auto found no {PLUGIN_LIBRARY} in {lib.parent}; run 'tldeploy plugins build' "
                          "on this machine (it needs nvcc and TensorRT's headers) or pass --plugins PATH")
    return lib


class CaLibrary:
    """The C ABI of libtldeploy_ca through ctypes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path or default_build_dir() / "lib" / CA_LIBRARY)
        if not self.path.is_file():
            raise TldeployError(f"{self.path} does not exist; run 'tldeploy plugins build'")
        lib = ctypes.CDLL(str(self.path))
        i64, p = ctypes.c_int64, ctypes.c_void_p
        lib.tldeploy_ca_version.restype = ctypes.c_int
        lib.tldeploy_ca_error_string.restype = ctypes.c_char_p
        lib.tldeploy_ca_error_string.argtypes = [ctypes.c_int]
        lib.tldeploy_ca_cpu_forward.restype = ctypes.c_int
        lib.tldeploy_ca_cpu_forward.argtypes = [p] * 6 + [i64] * 4
        self.has_cuda = hasattr(lib, "tldeploy_ca_cuda_forward")
        if self.has_cuda:
            lib.tldeploy_ca_cuda_workspace_size.restype = ctypes.c_size_t
            lib.tldeploy_ca_cuda_workspace_size.argtypes = [i64] * 3
            lib.tldeploy_ca_cuda_forward.restype = ctypes.c_int
            lib.tldeploy_ca_cuda_forward.argtypes = [ctypes.c_int] + [p] * 7 + [i64] * 4 + [p]
            lib.tldeploy_ca_cuda_architectures.restype = ctypes.c_char_p
        self.lib = lib
        self.version = int(lib.tldeploy_ca_version())

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise TldeployError(f"{what} failed: {self.lib.tldeploy_ca_error_string(code).decode()} (code {code})")

    @property
    def cuda_architectures(self) -> str:
        return self.lib.tldeploy_ca_cuda_architectures().decode() if self.has_cuda else ""

    def cpu_forward(self, x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
        """The CPU reference on float32 arrays: x (N, C, H, W), W1 (hidden, C), b1, W2 (C, hidden), b2."""
        import numpy as np

        arrs = [np.ascontiguousarray(a, dtype=np.float32) for a in (x, w1, b1, w2, b2)]
        n, c, h, w = arrs[0].shape
        y = np.empty_like(arrs[0])
        self._check(self.lib.tldeploy_ca_cpu_forward(*(a.ctypes.data for a in arrs), y.ctypes.data, n, c, h * w, arrs[1].shape[0]),
                    "tldeploy_ca_cpu_forward")
        return y

    def cuda_forward(self, x, w1, b1, w2, b2, out=None, workspace=None, stream=None):
        """The fused kernels on PyTorch CUDA tensors (float32 or float16, contiguous), on `stream`
        (default: the current stream). Returns `out` (allocated when not given)."""
        launch, out = self.bind_cuda(x, w1, b1, w2, b2, out=out, workspace=workspace, stream=stream)
        launch()
        return out

    def bind_cuda(self, x, w1, b1, w2, b2, out=None, workspace=None, stream=None):
        """(launch, out): `launch()` enqueues the kernels on these tensors with their pointers
        resolved once, which is what a deployed engine pays per call (for benchmarks)."""
        import functools

        import torch

        if not self.has_cuda:
            raise TldeployError(f"{self.path} was built without CUDA; run 'tldeploy plugins build --cuda on'")
        dtype = {torch.float32: FLOAT32, torch.float16: FLOAT16}.get(x.dtype)
        if dtype is None or x.dim() != 4 or any(t.dtype != x.dtype or not t.is_cuda or not t.is_contiguous() for t in (x, w1, b1, w2, b2)):
            raise TldeployError("cuda_forward takes contiguous CUDA tensors of one dtype, float32 or float16, x being N x C x H x W")
        n, c, h, w = x.shape
        hidden = w1.shape[0]
        out = torch.empty_like(x) if out is None else out
        if workspace is None:
            size = self.lib.tldeploy_ca_cuda_workspace_size(n, c, hidden)
            workspace = torch.empty(size, dtype=torch.uint8, device=x.device)
        s = (stream or torch.cuda.current_stream(x.device)).cuda_stream
        call = functools.partial(self.lib.tldeploy_ca_cuda_forward, dtype, x.data_ptr(), w1.data_ptr(), b1.data_ptr(), w2.data_ptr(),
                                 b2.data_ptr(), out.data_ptr(), workspace.data_ptr(), n, c, h * w, hidden, s)
        def launch(_keep=(x, w1, b1, w2, b2, out, workspace)) -> None:  # the pointers stay valid while `launch` lives
            self._check(call(), "tldeploy_ca_cuda_forward")

        return launch, out
