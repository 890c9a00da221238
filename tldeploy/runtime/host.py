"""The machine that runs artifacts: its CPU (name, the features that choose kernels, a class),
the versions of the tools, and a Jetson's release and power mode. Build records, bench
environments and verify reports carry them."""

from __future__ import annotations

import contextlib
import functools
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import tldeploy

# CPU flags that choose ONNX Runtime's (and PyTorch's) x86 kernels, as /proc/cpuinfo spells them.
KERNEL_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp")


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


VNNI_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8")  # an int8 dot product without int16 saturation


def cpu_features() -> list[str]:
    """The KERNEL_FEATURES this CPU has (empty where /proc/cpuinfo is missing)."""
    return list(_cpu_features())


@functools.lru_cache(maxsize=1)
def _cpu_features() -> tuple[str, ...]:  # /proc/cpuinfo read once per process
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return tuple(f for f in KERNEL_FEATURES if f in have)
    return ()


def has_vnni(features: list[str] | None = None) -> bool:
    """True when the CPU (or `features`) has an int8 dot product that does not saturate in int16."""
    return any(f in VNNI_FEATURES for f in (cpu_features() if features is None else features))


def cpu_info() -> dict[str, Any]:
    """Name, kernel-choosing features and class (`avx512-vnni`, `avx2`, ...) of this CPU."""
    feats = cpu_features()
    vnni = has_vnni(feats)
    cls = ("avx512-vnni" if "avx512f" in feats and vnni else "avx2-vnni" if vnni else "avx512" if "avx512f" in feats
           else "avx2" if "avx2" in feats else "arm64-dotprod" if "asimddp" in feats else platform.machine() or "unknown")
    return {"name": cpu_name(), "features": feats, "class": cls}


def tool_versions() -> dict[str, str | None]:
    def version(module: str) -> str | None:
        try:
            return str(__import__(module).__version__)
        except ImportError:
            return None

    out = {"tldeploy": tldeploy.__version__, "onnx": version("onnx"), "onnxruntime": version("onnxruntime"), "tensorrt": version("tensorrt")}
    try:
        import torch

        out["torch"] = str(torch.__version__)
        out["cuda"] = str(torch.version.cuda) if torch.version.cuda else None
    except ImportError:
        out["torch"] = None
    return out


def run_query(cmd: list[str]) -> str | None:
    """Output of a small query tool, or None where it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _read(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        return path.read_text().strip()
    return None


def jetson_info() -> dict[str, Any] | None:
    """L4T release, nvpmodel power mode and current clocks, as far as they are readable."""
    release = _read(Path("/etc/nv_tegra_release"))
    if release is None:
        return None
    mode = run_query(["nvpmodel", "-q"])
    clocks = {}
    for f in sorted(Path("/sys/devices").glob("**/devfreq/*/cur_freq"))[:8]:
        value = _read(f)
        if value:
            clocks[f.parent.name] = value
    return {"l4t": release.splitlines()[0], "power_mode": " ".join(mode.split()) if mode else None, "clocks": clocks}
