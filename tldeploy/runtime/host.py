"""The machine that runs artifacts: its CPU (name, the features that choose kernels, a class),
the versions of the tools, and a Jetson's release (L4T and JetPack) and power mode. Build
records, bench environments and verify reports carry them."""

from __future__ import annotations

import contextlib
import functools
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
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
        return path.read_text(errors="replace").strip()  # a garbled file reads as text that matches nothing
    return None


NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")  # a Jetson's Jetson Linux (L4T) release, e.g. "# R36 (release), REVISION: 4.3, ..."

# The JetPack that ships each Jetson Linux release, as NVIDIA's JetPack download pages and Jetson
# board vendors' release tables pair them; a release not listed is named by its L4T version alone.
JETPACK_FOR_L4T = {
    "35.3.1": "5.1.1", "35.4.1": "5.1.2",
    "36.3": "6.0", "36.4": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
    "38.2": "7.0", "38.2.1": "7.0", "38.4": "7.1",
}
_RELEASE_LINE = re.compile(r"#\s*R(\d+)\b[^,\n]*,\s*REVISION:\s*(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class JetsonRelease:
    """A Jetson's L4T release ("36.4.3") and the JetPack that ships it ("6.2"; None where unknown)."""

    l4t: str
    jetpack: str | None

    def describe(self) -> str:
        return f"JetPack {self.jetpack} (L4T {self.l4t})" if self.jetpack else f"L4T {self.l4t}"

    def to_dict(self) -> dict[str, str | None]:
        return {"l4t": self.l4t, "jetpack": self.jetpack}

    @classmethod
    def from_dict(cls, d: Any) -> JetsonRelease | None:
        """The release a record's "jetson" entry names; None for anything else (a record from a non-Jetson)."""
        if not isinstance(d, dict) or not isinstance(d.get("l4t"), str):
            return None
        return cls(d["l4t"], d["jetpack"] if isinstance(d.get("jetpack"), str) else None)


def jetpack_for_l4t(l4t: str) -> str | None:
    """The JetPack release that ships L4T `l4t` ("36.4.3" -> "6.2"; "36.3.0" -> "6.0"), or None."""
    parts = l4t.split(".")
    while len(parts) > 2 and parts[-1] == "0":  # /etc/nv_tegra_release writes 36.3 as "REVISION: 3.0"
        parts.pop()
    return JETPACK_FOR_L4T.get(".".join(parts))


def read_jetson_release(path: Path | None = None) -> JetsonRelease | None:
    """The release /etc/nv_tegra_release (or `path`) names; None where the file is missing or its
    first line does not read "# R<major> (release), REVISION: <minor>[.<patch>], ..."."""
    return _parse_release(_read(Path(path or NV_TEGRA_RELEASE)))


def _parse_release(text: str | None) -> JetsonRelease | None:
    match = _RELEASE_LINE.match(text.splitlines()[0]) if text else None  # matched, never evaluated
    if match is None:
        return None
    l4t = f"{match.group(1)}.{match.group(2)}"
    return JetsonRelease(l4t, jetpack_for_l4t(l4t))


def jetson_info(path: Path | None = None) -> dict[str, Any] | None:
    """L4T release (the first line of /etc/nv_tegra_release or `path`, and parsed with its JetPack),
    nvpmodel power mode and current clocks, as far as they are readable."""
    release = _read(Path(path or NV_TEGRA_RELEASE))
    if not release:
        return None
    mode = run_query(["nvpmodel", "-q"])
    clocks = {}
    for f in sorted(Path("/sys/devices").glob("**/devfreq/*/cur_freq"))[:8]:
        value = _read(f)
        if value:
            clocks[f.parent.name] = value
    parsed = _parse_release(release)
    return {"l4t": release.splitlines()[0], "release": parsed.to_dict() if parsed else None,
            "power_mode": " ".join(mode.split()) if mode else None, "clocks": clocks}
