"""`tldeploy bundle`: one self-contained folder to take to the device.

BUNDLE/
  model.onnx                 the FP32 export, which every device can rebuild from
  model_raw.onnx             its raw-input variant, when nvinfer cannot express the contract
  artifacts/NAME, NAME.json  the built artifacts given, with their build records
  golden/                    inputs.npz, reference.npz (+ Polygraphy JSON) and the source files
  labels.txt                 one class per line (Triton); deepstream/labels.txt (nvinfer's ';' list)
  deepstream/                config_infer_primary.txt, config_infer_secondary.txt
  triton/NAME/               config.pbtxt and 1/model.onnx (or 1/model.plan for engines)
  manifest.json              SHA-256 of every file, the contract, tool versions, tolerances

Nothing in it names the build machine: records are rewritten without its paths, the ONNX files
carry no stack traces.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tldeploy._io import atomic_dir, atomic_path, check_writable, now, sha256_file
from tldeploy.contract import OUTPUT_NAMES, Contract, OnnxFile, write_contract
from tldeploy.deploy import golden as gold
from tldeploy.deploy.manifest import (
    MANIFEST,
    PLUGIN_LIB,
    TOLERANCES,
    file_digests,
    scrub,
    tolerance_failures,
)
from tldeploy.deploy.serving import deepstream_config, nvinfer_expresses, triton_config
from tldeploy.errors import ConfigError
from tldeploy.records import BuildRecord, Manifest, ManifestEntry
from tldeploy.runtime import host
from tldeploy.runtime.runners import artifact_contract, artifact_kind, read_sidecar, sidecar_path
from tldeploy.scopes import save_portable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleConfig:
    artifacts: tuple[Path, ...]
    reference: Path
    data: Path
    output: Path
    golden: int = gold.GOLDEN
    plugins: Path | None = None  # the cpp_plugins TensorRT library built for the device, for graphs that need it
    max_batch: int = 32  # Triton's max_batch_size and DeepStream's batch-size ceiling for dynamic models
    classifier_threshold: float = 0.5
    tar: bool = False
    force: bool = False
    sign: Path | None = None  # an EC private key (PEM): sign every file with OpenSSF model-signing

    def __post_init__(self) -> None:
        if not self.artifacts:
            raise ConfigError("bundle needs at least the FP32 ONNX export as ARTIFACT")
        if self.golden < 1:
            raise ConfigError(f"--golden must be at least 1, got {self.golden}")
        if not 0.0 <= self.classifier_threshold <= 1.0:
            raise ConfigError(f"--classifier-threshold must be in [0, 1], got {self.classifier_threshold}")


@dataclass
class _Artifact:
    path: Path
    kind: str  # onnx or engine
    contract: Contract
    record: BuildRecord | None
    sha256: str
    file: OnnxFile | None = None  # an ONNX artifact, read once

    @property
    def precision(self) -> str:
        return self.contract.precision if self.record is None else self.record.precision


@dataclass
class BundleResult:
    path: Path
    manifest: Manifest
    tar: Path | None
    signed_by: str | None = None  # the signing key's id (SHA-256 of its public key)


def bundle(cfg: BundleConfig) -> BundleResult:
    out = Path(cfg.output)
    check_writable(out, force=cfg.force)
    if cfg.sign is not None:
        from tldeploy.deploy.signing import load_private_key

        load_private_key(Path(cfg.sign))  # a wrong key is refused now, not after the golden run
    items = [_read(Path(p)) for p in cfg.artifacts]
    source = _source(items)
    _check_same_model(items, source, Path(cfg.reference))
    g = gold.make_golden(source.contract, cfg.data, Path(cfg.reference), cfg.golden)
    roots = _machine_roots(cfg, items)
    with atomic_dir(out, force=cfg.force) as tmp:
        entries, written = _write_models(tmp, items, source, roots)
        _write_plugins(tmp, items, cfg)
        _write_golden(tmp, g, source, entries, written)
        _write_serving(tmp, source, entries, cfg, written)
        measured = _measure(tmp, entries, g, written)
        manifest = _manifest(tmp, entries, g, measured, written)
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        signed_by = None
        if cfg.sign is not None:
            from tldeploy.deploy.signing import sign_bundle

            signed_by = sign_bundle(tmp, Path(cfg.sign))
    tar = None
    if cfg.tar:
        tar = out.with_name(out.name + ".tar")
        with atomic_path(tar) as t, tarfile.open(t, "w") as tf:
            tf.add(out, arcname=out.name)
    return BundleResult(out, manifest, tar, signed_by)


# ---------------------------------------------------------------- inputs


def _read(path: Path) -> _Artifact:
    kind = artifact_kind(path)
    if kind == "checkpoint":
        raise ConfigError(f"{path} is a checkpoint; pass it as --reference, and its ONNX export as ARTIFACT")
    if kind == "onnx":
        f = OnnxFile(path)
        f.check()
        return _Artifact(path, kind, f.contract, read_sidecar(path), f.sha256, f)
    return _Artifact(path, kind, artifact_contract(path), read_sidecar(path), sha256_file(path))


def _source(items: list[_Artifact]) -> _Artifact:
    """The FP32 export: an ONNX file without a build record, FP32 and normalised input."""
    for a in items:
        if (a.kind == "onnx" and a.record is None and a.contract.precision == "fp32" and a.contract.attention == "standard"
                and not a.contract.preprocessing.raw):
            return a
    raise ConfigError("bundle needs the FP32 ONNX export (the file 'tldeploy export' wrote without --attention-plugin, the "
                      "source every device can rebuild from) among the ARTIFACTs")


def _check_same_model(items: list[_Artifact], source: _Artifact, reference: Path) -> None:
    base = source.contract
    onnx_shas = {a.sha256 for a in items if a.kind == "onnx"}
    for a in items:
        c = a.contract
        prep = c.preprocessing
        plain = prep.as_normalized() if prep.raw else prep
        if c.classes != base.classes or plain != base.preprocessing or c.checkpoint_sha256 != base.checkpoint_sha256:
            raise ConfigError(f"{a.path} comes from another model than {source.path} (classes, preprocessing or checkpoint differ)")
        wrong = a.record.mismatch(a.sha256, onnx_shas) if a.record is not None else None
        if wrong == "artifact_sha256":
            raise ConfigError(f"{sidecar_path(a.path)} does not describe {a.path} (its artifact_sha256 differs); rebuild it")
        if wrong == "input_onnx_sha256":
            raise ConfigError(f"{a.path} was built from an ONNX file not in the bundle; pass the export it was built from")
    if not reference.is_file():
        raise ConfigError(f"--reference {reference} does not exist; pass the checkpoint the export came from (RUN_DIR/model.pt)")
    if sha256_file(reference) != base.checkpoint_sha256:
        raise ConfigError(f"--reference {reference} is not the checkpoint {source.path} was exported from (SHA-256 differs)")


def _machine_roots(cfg: BundleConfig, items: list[_Artifact]) -> list[str]:
    """Folders of this machine that must not appear in the bundle."""
    roots = {str(Path.cwd()), str(Path.home()), str(Path(cfg.data).resolve().parent), str(Path(cfg.reference).resolve().parent)}
    roots |= {str(a.path.resolve().parent) for a in items}
    return sorted((r for r in roots if r not in ("/", "")), key=len, reverse=True)


# ---------------------------------------------------------------- writing


def _write_plugins(tmp: Path, items: list[_Artifact], cfg: BundleConfig) -> None:
    """plugins/src (the cpp_plugins sources, to build on the device) and plugins/lib (a library
    built for it, when given) when a graph has ChannelAttention plugin nodes."""
    if not any(a.contract.attention == "plugin" for a in items):
        if cfg.plugins is not None:
            raise ConfigError("--plugins is for graphs with ChannelAttention plugin nodes; none of the ARTIFACTs has them")
        return
    from tldeploy.engines.plugins import source_dir

    shutil.copytree(source_dir(), tmp / "plugins" / "src", ignore=shutil.ignore_patterns("build*", "__pycache__", ".*"))
    if cfg.plugins is not None:
        if not Path(cfg.plugins).is_file():
            raise ConfigError(f"--plugins {cfg.plugins} does not exist; build it with 'tldeploy plugins build' on (or for) the device")
        (tmp / PLUGIN_LIB).parent.mkdir()
        shutil.copyfile(cfg.plugins, tmp / PLUGIN_LIB)


def _write_models(tmp: Path, items: list[_Artifact], source: _Artifact, roots: list[str]) -> tuple[list[ManifestEntry], dict[str, OnnxFile]]:
    """model.onnx, model_raw.onnx where needed, artifacts/ with scrubbed records; the entries the
    manifest lists (file, kind, precision, input format, record) and each ONNX file written (its
    graph kept, not read back). Stripping build-machine metadata can change an ONNX file, so each
    record's input_onnx_sha256 follows its source to the bundled copy."""
    written = {"model.onnx": _save(source, tmp / "model.onnx")}
    bundled_sha = {source.sha256: sha256_file(tmp / "model.onnx")}  # original -> bundled
    entries = [ManifestEntry("model.onnx", "onnx", "fp32", "normalized")]
    image = source.contract.preprocessing.nvinfer_image  # None: no nvinfer config, so no raw graph for one (audio)
    if image is not None and not nvinfer_expresses(image):
        from tldeploy.raw_input import RawInputFromOnnx

        raw = RawInputFromOnnx(written["model.onnx"], image)()
        write_contract(raw, replace(source.contract, preprocessing=image.as_raw()))
        written["model_raw.onnx"] = OnnxFile.holding(tmp / "model_raw.onnx", save_portable(raw, tmp / "model_raw.onnx"))
        entries.append(ManifestEntry("model_raw.onnx", "onnx", "fp32", "raw"))
    (tmp / "artifacts").mkdir()
    for a in items:
        if a is not source:
            target = tmp / "artifacts" / a.path.name
            if a.kind == "onnx":
                written[f"artifacts/{a.path.name}"] = _save(a, target)
            else:
                shutil.copyfile(a.path, target)
            bundled_sha[a.sha256] = sha256_file(target)
    for a in items:
        if a is source:
            continue
        entry = ManifestEntry(f"artifacts/{a.path.name}", a.kind, a.precision, "raw" if a.contract.preprocessing.raw else "normalized",
                              backend=a.record.backend if a.record else "ort", qdq_flavour=a.record.qdq_flavour if a.record else None,
                              attention=a.contract.attention)
        if a.record is not None:
            name = f"artifacts/{a.path.name}.json"
            record = BuildRecord.from_json(scrub(a.record.to_json(), roots), name)
            record = replace(record, artifact_sha256=bundled_sha[a.sha256],
                             input_onnx_sha256=bundled_sha.get(record.input_onnx_sha256, record.input_onnx_sha256))
            (tmp / name).write_text(json.dumps(record.to_json(), indent=2) + "\n")
            entry = replace(entry, record=name)
            layers = a.path.with_name(a.path.name + ".layers.json")
            if layers.is_file():
                shutil.copyfile(layers, tmp / "artifacts" / layers.name)
        entries.append(entry)
    return entries, written


def _save(a: _Artifact, target: Path) -> OnnxFile:
    """An ONNX artifact written portably to `target` from the graph read already."""
    assert a.file is not None  # ONNX artifacts are read as OnnxFile
    return OnnxFile.holding(target, save_portable(a.path, target, model=a.file.copy()))


def _write_golden(tmp: Path, g: gold.Golden, source: _Artifact, entries: list[ManifestEntry], written: dict[str, OnnxFile]) -> None:
    d = tmp / "golden"
    (d / "files").mkdir(parents=True)
    names = []
    for i, p in enumerate(g.paths):
        name = f"{i:03d}_{p.parent.name}_{p.name}"
        shutil.copyfile(p, d / "files" / name)
        names.append(f"golden/files/{name}")
    arrays = {"inputs": g.inputs, "files": np.array(names)}
    if g.labels is not None:
        arrays["labels"] = g.labels
    if any(e.input == "raw" for e in entries):
        raw = source.contract.preprocessing.as_raw()
        arrays["inputs_raw"] = np.stack([raw.load(p) for p in g.paths]).astype(np.float32)
    np.savez(d / "inputs.npz", **arrays)
    np.savez(d / "reference.npz", **g.reference)
    batch = written["model.onnx"].static_batch
    name = source.contract.input_name
    (d / "inputs.json").write_text(gold.polygraphy_inputs(name, g.inputs, batch))
    (d / "reference.json").write_text(gold.polygraphy_outputs(g.reference, batch))
    if "inputs_raw" in arrays:
        (d / "inputs_raw.json").write_text(gold.polygraphy_inputs(name, arrays["inputs_raw"], batch))
    max_diff = TOLERANCES["fp32"].max_logit_diff
    assert max_diff is not None  # the FP32 tolerance bounds the logits
    (d / "README.md").write_text(gold.readme(len(g.inputs), max_diff, raw=(tmp / "model_raw.onnx").is_file()))


def _write_serving(tmp: Path, source: _Artifact, entries: list[ManifestEntry], cfg: BundleConfig, written: dict[str, OnnxFile]) -> None:
    classes = source.contract.classes
    (tmp / "labels.txt").write_text("\n".join(classes) + "\n")
    ds = tmp / "deepstream"
    ds.mkdir()
    (ds / "labels.txt").write_text(";".join(classes) + "\n")  # nvinfer's classifier label file: one line, ';'-separated
    image = source.contract.preprocessing.nvinfer_image  # None: nvinfer cannot feed this model (audio)
    if image is not None:
        served = next(e for e in entries if e.file in ("model_raw.onnx", "model.onnx") and (e.input == "raw" or nvinfer_expresses(image)))
        served_prep = image.as_raw() if served.input == "raw" else image
        batch = written[served.file].static_batch or 1
        engine = [e for e in entries if e.kind == "engine" and e.input == served.input and e.attention == "standard"]
        precision = engine[0].precision if engine else "fp16"
        engine_file = f"../{engine[0].file}" if engine else f"../{served.file}_b{batch}_gpu0_{precision}.engine"
        note = (f"model-engine-file is {'the bundled engine' if engine else 'where nvinfer caches the engine it builds from onnx-file'}; "
                "'tldeploy verify BUNDLE --build' builds and checks engines on the device.")
        for secondary, name in ((False, "config_infer_primary.txt"), (True, "config_infer_secondary.txt")):
            (ds / name).write_text(deepstream_config(
                onnx_file=f"../{served.file}", engine_file=engine_file, labels_file="labels.txt", prep=served_prep,
                precision=precision, batch_size=batch, threshold=cfg.classifier_threshold, secondary=secondary, note=note))
    dims = written["model.onnx"].output_dims
    outputs = [(k, dims[k][1:]) for k in OUTPUT_NAMES]  # every entry has the export's outputs
    for e in entries:
        _write_triton(tmp, e, source, cfg, outputs, written)


def _triton_name(file: str) -> str:
    stem = Path(file).name
    for suffix in (".onnx", ".engine", ".plan", ".trt"):
        stem = stem.removesuffix(suffix)
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)


def _write_triton(tmp: Path, e: ManifestEntry, source: _Artifact, cfg: BundleConfig, outputs: list[tuple[str, list[int]]],
                  written: dict[str, OnnxFile]) -> None:
    if e.kind == "onnx" and e.attention == "plugin":
        return  # ONNX Runtime cannot run ChannelAttention plugin nodes; Triton serves their engine (tensorrt_plan)
    name = _triton_name(e.file)
    folder = tmp / "triton" / name
    (folder / "1").mkdir(parents=True)
    prep = source.contract.preprocessing
    input_dims = list(prep.as_raw().input_shape if e.input == "raw" else prep.input_shape)
    if e.kind == "onnx":
        static = written[e.file].static_batch
        shutil.copyfile(tmp / e.file, folder / "1" / "model.onnx")
        platform, filename, max_batch = "onnxruntime_onnx", "model.onnx", cfg.max_batch
    else:
        static = None
        shutil.copyfile(tmp / e.file, folder / "1" / "model.plan")
        max_batch = BuildRecord.read(tmp / e.record).max_batch(cfg.max_batch) if e.record else cfg.max_batch
        platform, filename = "tensorrt_plan", "model.plan"
    if static:  # a fixed batch: Triton takes the full dims and no batching of its own
        input_dims, outputs, max_batch = [static, *input_dims], [(k, [static, *d]) for k, d in outputs], 0
    note = (f"# The engine needs the ChannelAttention plugin: start tritonserver with LD_PRELOAD={PLUGIN_LIB}\n"
            if e.attention == "plugin" else "")
    (folder / "config.pbtxt").write_text(note + triton_config(
        name=name, platform=platform, input_name=source.contract.input_name, input_dims=input_dims, outputs=outputs,
        max_batch_size=max_batch, labels_file="labels.txt", model_filename=filename))
    shutil.copyfile(tmp / "labels.txt", folder / "labels.txt")


def _measure(tmp: Path, entries: list[ManifestEntry], g: gold.Golden, written: dict[str, OnnxFile]) -> dict[str, Any]:
    """Each ONNX artifact on the golden inputs here (ONNX Runtime CPU), against the reference."""
    from tldeploy.parity import compare_outputs
    from tldeploy.runtime.runners import OrtRunner, run_batches

    inputs = np.load(tmp / "golden" / "inputs.npz")
    out: dict[str, Any] = {}
    for e in entries:
        if e.kind != "onnx":
            out[e.file] = {"not_run": "an engine runs only on its GPU"}
            continue
        if e.attention == "plugin":
            out[e.file] = {"not_run": "ChannelAttention plugin nodes run only in TensorRT"}
            continue
        x = inputs["inputs_raw" if e.input == "raw" else "inputs"]
        with OrtRunner(written[e.file]) as r:
            report = compare_outputs(g.reference, run_batches(r, x))
        missed = tolerance_failures(report, TOLERANCES[e.precision])
        passed = not missed
        if missed:
            log.warning("%s misses its %s tolerances on the golden inputs here: %s", e.file, e.precision, "; ".join(missed))
        out[e.file] = {"top1_agreement": report.top1_agreement, "cosine": report.cosine,
                          "logits_max_abs": report.logits_max_abs, "passed": passed, "cpu": host.cpu_info()["class"]}
    return out


def _manifest(tmp: Path, entries: list[ManifestEntry], g: gold.Golden, measured: dict[str, Any], written: dict[str, OnnxFile]) -> Manifest:
    return Manifest(created=now(), contract=written["model.onnx"].contract, tools=host.tool_versions(), tolerances=dict(TOLERANCES),
                    artifacts=tuple(replace(e, measured_here=measured.get(e.file)) for e in entries),
                    golden={"n": len(g.inputs), "labelled": g.labels is not None}, files=file_digests(tmp))
