"""The bundle's manifest: the SHA-256 of every file, and the tolerances verification applies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tldeploy._io import sha256_file
from tldeploy.engines.plugins import PLUGIN_LIBRARY

MANIFEST = "manifest.json"
SIGNATURE = "bundle.sig"  # OpenSSF model-signing signature over every file, the manifest included (deploy/signing.py)
PLUGIN_LIB = f"plugins/lib/{PLUGIN_LIBRARY}"  # the ChannelAttention plugin built for the device, when bundled
VERIFY_DIR = "verify"  # what `verify` writes inside a bundle; not part of it
DEVICE_DIR = "device"  # engines `verify --build` makes on the device; not part of it

# Per precision, against the PyTorch reference on the golden inputs. FP32 allows TensorRT's TF32
# convolutions (on by default on Ampere and later); FP16 and INT8 one and three flipped top-1 of
# the 32 golden inputs.
TOLERANCES: dict[str, dict[str, float | None]] = {
    "fp32": {"min_top1_agreement": 1.0, "min_cosine": 0.9999, "max_logit_diff": 1e-2},
    "fp16": {"min_top1_agreement": 0.96, "min_cosine": 0.999, "max_logit_diff": None},
    "int8": {"min_top1_agreement": 0.9, "min_cosine": 0.98, "max_logit_diff": None},
}


def tolerance_failures(report, tol: dict[str, float | None]) -> list[str]:
    """What of `tol` a ParityReport against the reference misses (empty: within tolerance)."""
    failures = []
    if tol.get("min_top1_agreement") is not None and report.top1_agreement < tol["min_top1_agreement"]:
        failures.append(f"top-1 agreement {report.top1_agreement:.2%} < {tol['min_top1_agreement']:.2%}")
    if tol.get("min_cosine") is not None and report.cosine < tol["min_cosine"]:
        failures.append(f"cosine {report.cosine:.6f} < {tol['min_cosine']}")
    if tol.get("max_logit_diff") is not None and report.logits_max_abs > tol["max_logit_diff"]:
        failures.append(f"logits max |diff| {report.logits_max_abs:.3g} > {tol['max_logit_diff']:g}")
    return failures


def bundle_files(root: Path) -> list[Path]:
    """Every file of the bundle (relative), without the manifest and what verify writes."""
    out = []
    for p in sorted(Path(root).rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.as_posix() not in (MANIFEST, SIGNATURE) and rel.parts[0] not in (VERIFY_DIR, DEVICE_DIR):
            out.append(rel)
    return out


def file_digests(root: Path) -> dict[str, str]:
    return {rel.as_posix(): sha256_file(Path(root) / rel) for rel in bundle_files(root)}


def check_files(root: Path, listed: dict[str, str]) -> list[str]:
    """One line per file that is missing, changed, or not in the manifest's `listed` digests."""
    problems = []
    for rel, digest in sorted(listed.items()):
        p = Path(root) / rel
        if not p.is_file():
            problems.append(f"{rel} is missing from the bundle")
        elif sha256_file(p) != digest:
            problems.append(f"{rel} changed: its SHA-256 differs from the manifest's (copy the bundle again)")
    extra = sorted(set(f.as_posix() for f in bundle_files(root)) - set(listed))
    problems += [f"{rel} is not in the manifest (added after bundling?)" for rel in extra]
    return problems


def scrub(obj: Any, roots: list[str]) -> Any:
    """`obj` (a build record) with this machine's folders in any string replaced by `<build-machine>`."""
    if isinstance(obj, dict):
        return {k: scrub(v, roots) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v, roots) for v in obj]
    if isinstance(obj, str):
        for r in roots:
            obj = obj.replace(r, "<build-machine>")
        return obj
    return obj
