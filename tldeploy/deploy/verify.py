"""`tldeploy verify BUNDLE`: on the device, prove the shipped artifacts equal the reference.

In order: the bundle holds only regular files and folders (a symbolic link, FIFO or device is
refused before any file is opened); with `--public-key`, the signature over every file (a missing,
foreign or broken signature, or a file that differs from what was signed, fails here and nothing
else is read); the manifest's names stay inside the bundle (absolute, `..` or escaping names are
refused before any of them is opened); every file against the manifest (a changed byte is named
and nothing runs); every build record against its artifact and the bundle's ONNX (another model's record is refused before
anything loads); an engine's TensorRT version and GPU against this machine's, before
deserializing it; then the golden inputs through every artifact, compared with the reference's
outputs under the manifest's tolerances. With `--build`, engines are built here from the bundle's
ONNX first (and checked the same way). Writes verify.json and verify.md; fails with one line per
failed check.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from tldeploy._io import now, sha256_file, write_json, write_text
from tldeploy.deploy import BUILD_PRECISIONS
from tldeploy.deploy.manifest import (
    DEVICE_DIR,
    MANIFEST,
    PLUGIN_LIB,
    VERIFY_DIR,
    check_files,
    read_tolerance,
    tolerance_failures,
)
from tldeploy.errors import ConfigError, TldeployError
from tldeploy.records import BuildRecord, Manifest, ManifestEntry
from tldeploy.runtime import host

log = logging.getLogger(__name__)

PRECISIONS = (*BUILD_PRECISIONS, "int8")  # int8 is refused with the reason


@dataclass(frozen=True)
class VerifyConfig:
    bundle: Path
    build: bool = False
    precisions: tuple[str, ...] = ()  # --build: engines to build here (fp32, fp16) [default: fp16]
    device: str = "auto"  # where ONNX artifacts run: cpu, cuda, or auto (cuda where visible)
    output: Path | None = None  # default: BUNDLE/verify/
    public_key: Path | None = None  # check the bundle's signature with this key first
    trust_plugins: bool = False  # load the bundle's plugin library (native code) though its signature was not verified

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ConfigError(f"--precision must be among {', '.join(PRECISIONS)}, got {', '.join(bad)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class Check:
    artifact: str
    passed: bool
    detail: str
    parity: dict[str, Any] | None = None
    skipped: bool = False  # nothing here can run it (passed stays True: not a failure, and reported as skipped)


@dataclass
class Signature:
    """What verify knows of who made the bundle."""

    present: bool  # the bundle has bundle.sig
    checked: bool = False  # checked against --public-key
    verified: bool = False
    key_id: str | None = None  # the --public-key's SHA-256 (the signer, when verified)
    detail: str = ""

    def describe(self) -> str:
        if self.verified:
            return f"signature verified: signed by {self.key_id}"
        if self.checked:
            return f"signature REFUSED: {self.detail}"
        return ("signed, but the signer was not checked (pass --public-key KEY.pub)" if self.present
                else "unsigned: integrity against its own manifest only (anyone can rewrite a manifest)")


@dataclass
class VerifyResult:
    passed: bool
    checks: list[Check] = field(default_factory=list)
    report: Path | None = None
    signature: Signature | None = None
    trust_plugins: bool = False

    def failures(self) -> list[str]:
        return [f"{c.artifact}: {c.detail}" for c in self.checks if not c.passed]


def verify(cfg: VerifyConfig) -> VerifyResult:
    root = Path(cfg.bundle)
    _refuse_links(root)  # before any file of the bundle is opened
    out = Path(cfg.output) if cfg.output else root / VERIFY_DIR
    signature = _signature(root, cfg.public_key)
    if signature.checked and not signature.verified:
        result = VerifyResult(False, [Check("signature", False, signature.detail)], signature=signature)
        result.report = _write_report(out, root, result)
        return result
    if signature.present and not signature.checked:
        log.warning("%s: %s", root, signature.describe())
    manifest = _manifest(root)
    _refuse_outside_names(root, manifest)
    trust_plugins = signature.verified or cfg.trust_plugins
    checks = [Check("bundle", False, p) for p in check_files(root, manifest.files)]
    if not checks:
        device = _device(cfg.device)
        entries = list(manifest.artifacts)
        onnx_shas = {manifest.files[e.file] for e in entries if e.kind == "onnx"}  # checked just now
        if cfg.build:
            entries += _build_here(root, manifest, cfg, trust_plugins)
        inputs = np.load(root / "golden" / "inputs.npz")
        reference = dict(np.load(root / "golden" / "reference.npz"))
        for e in entries:
            checks.append(_verify_one(root, e, manifest, onnx_shas, inputs, reference, device, trust_plugins))
    result = VerifyResult(all(c.passed for c in checks) and bool(checks), checks, signature=signature, trust_plugins=cfg.trust_plugins)
    result.report = _write_report(out, root, result)
    return result


def _refuse_links(root: Path) -> None:
    """A bundle is regular files in folders: a symbolic link (which could name any file of the
    device), FIFO, socket or device file anywhere under ROOT is refused, naming it; only entries'
    names are read here, no file is opened."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(folder) / name
            mode = p.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise TldeployError(f"{p} is a symbolic link; a bundle holds only regular files and verify follows no link out of it "
                                    "(copy the bundle with its files, e.g. from its .tar)")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise TldeployError(f"{p} is not a regular file (a FIFO, socket or device); refused: a bundle holds only files")


def _refuse_outside_names(root: Path, manifest: Manifest) -> None:
    """Every name the manifest gives (files, artifacts, records) is a relative path that stays in
    ROOT; an absolute one, one with `..` or one resolving elsewhere is refused before any is opened."""
    top = root.resolve()
    for name in manifest.names():
        why = None
        if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or Path(name).is_absolute():
            why = "an absolute path"
        elif ".." in PurePosixPath(name.replace("\\", "/")).parts:
            why = "it climbs out with '..'"
        elif not (root / name).resolve().is_relative_to(top):
            why = "it resolves outside the bundle"
        if why:
            raise TldeployError(f"{root / MANIFEST} names {name!r}, which is outside the bundle ({why}); refused before reading "
                                "any file it names: verify reads only inside the bundle (make the bundle again with 'tldeploy bundle')")


def _signature(root: Path, public_key: Path | None) -> Signature:
    from tldeploy.deploy.manifest import SIGNATURE

    sig = Signature(present=(root / SIGNATURE).is_file())
    if public_key is None:
        return sig
    from tldeploy.deploy.signing import SignatureError, key_id, load_public_key, verify_signature

    sig.checked, sig.key_id = True, key_id(load_public_key(Path(public_key)))
    try:
        verify_signature(root, Path(public_key))
    except SignatureError as e:
        sig.detail = str(e)
        return sig
    sig.verified, sig.detail = True, f"signed by {sig.key_id}"
    return sig


def _manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{root} is not a tldeploy bundle (no {MANIFEST}); make one with 'tldeploy bundle'")
    return Manifest.read(path)


def _device(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _verify_one(root: Path, e: ManifestEntry, manifest: Manifest, onnx_shas: set[str], inputs, reference, device: str,
                trust_plugins: bool) -> Check:
    from tldeploy.parity import compare_outputs
    from tldeploy.runtime.runners import run_batches

    name, path = e.file, root / e.file
    record = BuildRecord.read(root / e.record) if e.record else None
    sha = manifest.files.get(name) or sha256_file(path)  # bundled files were checked against the manifest
    wrong = record.mismatch(sha, onnx_shas) if record is not None else None
    if wrong == "artifact_sha256":
        return Check(name, False, f"its build record {e.record} describes another artifact (artifact_sha256 differs); refused before loading")
    if wrong == "input_onnx_sha256":
        return Check(name, False, f"its build record {e.record} was made from another model's ONNX; refused before loading")
    if e.kind == "engine":
        why = _engine_mismatch(record)
        if why:
            return Check(name, False, f"{why}; run 'tldeploy verify {root} --build' to build and check engines here")
    if e.kind == "onnx" and e.attention == "plugin":
        return Check(name, True, "skipped: ChannelAttention plugin nodes run only in TensorRT; bundle its engine, or "
                     "'verify --build' the standard graph", skipped=True)
    x = inputs["inputs_raw" if e.input == "raw" else "inputs"]
    tol = read_tolerance(manifest, e.precision)
    try:
        with _runner(root, path, e, device, trust_plugins) as runner:
            out = run_batches(runner, x)
    except TldeployError as err:  # ConfigError included
        return Check(name, False, f"could not run here: {err}")
    report = compare_outputs(reference, out, labels=inputs["labels"] if "labels" in inputs else None)
    failures = tolerance_failures(report, tol)
    detail = (f"top-1 agreement {report.top1_agreement:.2%}, cosine {report.cosine:.6f}, logits max |diff| {report.logits_max_abs:.3g}"
              + (f": {'; '.join(failures)}" if failures else ""))
    return Check(name, not failures, detail, report.to_dict())


def _runner(root: Path, path: Path, e: ManifestEntry, device: str, trust_plugins: bool):
    """The artifact's runner; an engine that needs the plugin loads the bundle's library, if trusted."""
    from tldeploy.runtime.loader import load_runner

    if e.kind == "engine" and e.attention == "plugin":
        from tldeploy.runtime.trt_runner import TrtRunner

        lib = root / PLUGIN_LIB
        _refuse_untrusted_plugins(root, trust_plugins)
        if not lib.is_file():
            raise ConfigError(f"{e.file} needs the ChannelAttention plugin and the bundle has no plugins/lib; build it here "
                              f"with 'tldeploy plugins build' and bundle it with --plugins")
        return TrtRunner(path, plugins=(lib,))
    return load_runner(path, device=device if e.kind == "onnx" else "cuda")


def _engine_mismatch(record: BuildRecord | None) -> str | None:
    """Why an engine built as `record` says cannot load here, read before deserializing it."""
    from tldeploy.engines.tensorrt import trt_version
    from tldeploy.runtime.trt import gpu_info

    built_trt = record.tensorrt if record else None
    built_gpu = (record.gpu if record else None) or {}
    here_trt, here_gpu = trt_version(), gpu_info()
    # The JetPack releases, where known, say which JetPack to flash or build under.
    built_os, here_os = host.JetsonRelease.from_dict(record.jetson if record else None), host.read_jetson_release()
    where = (f"built with TensorRT {built_trt} on {built_gpu.get('gpu', 'an unknown GPU')} (sm {built_gpu.get('compute_capability', '?')})"
             + (f" under {built_os.describe()}" if built_os else ""))
    here = f" under {here_os.describe()}" if here_os else ""
    if here_trt is None:
        return f"{where}; this machine has no TensorRT{here}"
    if not here_gpu:
        return f"{where}; this machine has no visible CUDA GPU{here}"
    if built_trt != here_trt:
        return f"{where}; this machine has TensorRT {here_trt}{here}"
    if built_gpu.get("compute_capability") != here_gpu.get("compute_capability"):
        return f"{where}; this machine has {here_gpu.get('gpu')} (sm {here_gpu.get('compute_capability')}){here}"
    return None


def _build_here(root: Path, manifest: Manifest, cfg: VerifyConfig, trust_plugins: bool) -> list[ManifestEntry]:
    """TensorRT engines built on this device from the bundle's ONNX: the raw-input variant where
    there is one (what DeepStream serves), and each plugin graph with the bundle's plugin library.
    An unchanged build is reused (the builder's cache key), a stale one rebuilt."""
    from tldeploy.engines.builder import BuildConfig, build
    from tldeploy.engines.capabilities import PrecisionTarget
    from tldeploy.engines.tensorrt import TrtConfig
    from tldeploy.errors import OutputExistsError

    if "int8" in cfg.precisions:
        raise ConfigError("--build makes FP32 and FP16 engines; build INT8 where its calibration data is, with "
                          "'tldeploy build model.onnx --precision int8 --backend tensorrt --calib-data DIR', and bundle or verify that engine")
    out = root / DEVICE_DIR
    out.mkdir(exist_ok=True)
    raw = (root / "model_raw.onnx").is_file()
    sources = [(root / ("model_raw.onnx" if raw else "model.onnx"), "raw" if raw else "normalized", "standard", ())]
    plugin_graphs = [e for e in manifest.artifacts if e.kind == "onnx" and e.attention == "plugin"]
    if plugin_graphs:
        _refuse_untrusted_plugins(root, trust_plugins)
        sources += [(root / e.file, e.input, "plugin", (_plugin_library(root, out),)) for e in plugin_graphs]
    entries = []
    for source, input_format, attention, plugins in sources:
        for p in cfg.precisions or ("fp16",):
            target = out / f"{source.stem}.{p}.engine"
            bc = BuildConfig(onnx=source, target=PrecisionTarget(p, "tensorrt", device="cuda"), output=target, trt=TrtConfig(plugins=plugins))
            try:
                result = build(bc)
            except OutputExistsError:  # built here before from other inputs or tools
                result = build(replace(bc, force=True))
            entries.append(ManifestEntry(str(target.relative_to(root)), "engine", p, input_format, backend="tensorrt",
                                         record=str(Path(DEVICE_DIR) / (target.name + ".json")), attention=attention, built_here=True,
                                         build_seconds=result.record.build_seconds))
    return entries


def _refuse_untrusted_plugins(root: Path, trust_plugins: bool) -> None:
    """The plugin library (or its sources, compiled here) is native code run in this process: only
    from a bundle whose signature verified, or when the user says so with --trust-plugins."""
    if not trust_plugins:
        raise ConfigError(f"{root} carries the ChannelAttention plugin (native code) and its signature was not verified; "
                          "pass --public-key KEY.pub of its signer, or --trust-plugins to load it anyway (recorded in the report)")


def _plugin_library(root: Path, out: Path) -> Path:
    """The bundle's plugin library, or one built here from the bundle's cpp_plugins sources."""
    lib = root / PLUGIN_LIB
    if lib.is_file():
        return lib
    from tldeploy.engines.plugins import PluginBuildConfig, build_plugins

    built = build_plugins(PluginBuildConfig(build_dir=out / "plugins", cuda="on", tensorrt="on"), source=root / "plugins" / "src")
    if built.plugin_library is None:
        raise TldeployError("could not build the ChannelAttention plugin here: " + "; ".join(built.summary))
    return built.plugin_library


def fingerprint() -> dict[str, Any]:
    """The device: CPU, GPU, tool versions (TensorRT, CUDA), and a Jetson's L4T and JetPack release, power mode and clocks."""
    from tldeploy.runtime.trt import gpu_info

    return {"cpu": host.cpu_info(), "gpu": gpu_info(), "tools": host.tool_versions(), "jetson": host.jetson_info()}


def _write_report(out: Path, root: Path, result: VerifyResult) -> Path:
    doc = {
        "format": "tldeploy.verify",
        "bundle": root.name,
        "created": now(),
        "passed": result.passed,
        "signature": result.signature.__dict__ if result.signature else None,
        "trust_plugins": result.trust_plugins,
        "device": fingerprint(),
        "checks": [c.__dict__ for c in result.checks],
    }
    write_json(out / "verify.json", doc)
    release = host.JetsonRelease.from_dict((doc["device"]["jetson"] or {}).get("release"))
    lines = [f"# verify {root.name}: {'passed' if result.passed else 'FAILED'}", "",
             f"device: CPU {doc['device']['cpu']['name']} ({doc['device']['cpu']['class']}), "
             f"GPU {doc['device']['gpu'].get('gpu', 'none')}, TensorRT {doc['device']['tools'].get('tensorrt') or 'none'}"
             + (f", {release.describe()}" if release else ""), "",
             (result.signature.describe() if result.signature else "signature: not looked at")
             + ("; plugins trusted by --trust-plugins" if result.trust_plugins else ""), "",
             "| artifact | result | detail |", "|---|---|---|"]
    lines += [f"| {c.artifact} | {'skip' if c.skipped else 'pass' if c.passed else 'FAIL'} | {c.detail} |" for c in result.checks]
    write_text(out / "verify.md", "\n".join(lines) + "\n")
    return out / "verify.json"
