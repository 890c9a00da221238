"""What crosses a stage boundary, as frozen records read once: the build record beside each
artifact (`BuildRecord`), a bundle's manifest (`Manifest`, `ManifestEntry`) and a checkpoint's
metadata (`CheckpointMeta`). Each reads from and writes to the JSON its file has always held
(`from_json`/`to_json`), through `_io.read_document` and its one version policy; a malformed
field is refused on reading, naming the file, not met later as a KeyError in another stage.

A record writes back what it read, key for key, with two documented normalisations: keys this
tldeploy does not know (a newer writer's) are kept and written after the known ones, and a manifest
entry's keys come in one order (bundles before the records listed the FP32 source's `record`
before its `backend` and left out its `qdq_flavour`, null).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tldeploy._io import read_document, write_json
from tldeploy.contract import Contract, ContractError
from tldeploy.errors import ConfigError, TldeployError
from tldeploy.modalities.base import Modality
from tldeploy.ood import OodGate
from tldeploy.parity import Tolerance

RECORD_FORMAT = "tldeploy.build"
RECORD_VERSION = 1
MANIFEST_FORMAT = "tldeploy.bundle"
MANIFEST_VERSION = 1
MANIFEST_LIMITS = ("min_top1_agreement", "min_cosine", "max_logit_diff")  # every manifest states these, null where unset


class RecordError(TldeployError):
    """A record whose fields are missing or of the wrong type."""


def _need(cond: bool, source: str, what: str, hint: str) -> None:
    if not cond:
        raise RecordError(f"{source}: {what}; {hint}")


def _str(doc: dict[str, Any], key: str, source: str, hint: str) -> str:
    v = doc.get(key)
    _need(isinstance(v, str) and v != "", source, f"'{key}' must be a non-empty string, found {v!r}", hint)
    return str(v)


def _obj(doc: dict[str, Any], key: str, source: str, hint: str) -> dict[str, Any] | None:
    v = doc.get(key)
    _need(v is None or isinstance(v, dict), source, f"'{key}' must be an object or null, found {type(v).__name__}", hint)
    return v


# ---------------------------------------------------------------- build records

_RECORD_HINT = "rebuild with 'tldeploy build --force'"
# The build step's own fields, in the order it adds them (quantization summary, checks, TensorRT's layers).
_DETAIL_KEYS = ("qdq_flavour", "quantization", "check", "fp32_units", "layer_info", "layers", "timing_cache")


@dataclass(frozen=True)
class BuildRecord:
    """ARTIFACT.json: what `tldeploy build` made, from what, with which tools; the fields up to
    `options` are the cache key's (`engines.artifacts.KEY_FIELDS`), the rest describes the result."""

    artifact: str
    input_onnx: str
    input_onnx_sha256: str
    precision: str
    backend: str
    device: str
    calibration: dict[str, Any] | None = None
    quantization_options: dict[str, Any] | None = None
    check_data: dict[str, Any] | None = None
    precision_plan: dict[str, Any] | None = None
    tools: dict[str, Any] = field(default_factory=dict)
    gpu: dict[str, Any] | None = None
    options: dict[str, Any] | None = None  # TensorRT's (batch profile, plugins, ...)
    cache_key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # _DETAIL_KEYS the build step measured
    artifact_sha256: str | None = None
    size_bytes: int | None = None
    cpu: dict[str, Any] | None = None
    jetson: dict[str, Any] | None = None
    contract: Contract | None = None  # an engine's contract travels here; an ONNX artifact carries its own too
    created: str | None = None
    build_seconds: float | None = None
    unknown: dict[str, Any] = field(default_factory=dict)  # a newer tldeploy's fields, kept

    # ---- what stages ask of it

    @property
    def qdq_flavour(self) -> str | None:
        return self.details.get("qdq_flavour")

    @property
    def check(self) -> dict[str, Any] | None:
        """The build's parity check against the FP32 ONNX (or the INT8 guard's measurement)."""
        return self.details.get("check")

    @property
    def quantization(self) -> dict[str, Any] | None:
        return self.details.get("quantization")

    @property
    def float_units(self) -> list[Any] | None:
        """Units kept in float: the INT8 guard's or plan's, or an FP16 plan's FP32 units."""
        q = self.quantization
        return q.get("float_units") if q else self.details.get("fp32_units")

    @property
    def tensorrt(self) -> str | None:
        return self.tools.get("tensorrt")

    @property
    def plugins(self) -> tuple[Path, ...]:
        return tuple(Path(p) for p in (self.options or {}).get("plugins", []))

    def max_batch(self, default: int) -> int:
        """The largest batch of an engine's optimisation profile ("min,opt,max"), else `default`."""
        return int(str((self.options or {}).get("batch", f"1,1,{default}")).split(",")[-1])

    def mismatch(self, sha256: str, onnx_sha256s: set[str]) -> str | None:
        """Which of its hashes does not hold: "artifact_sha256" (it describes another file) or
        "input_onnx_sha256" (it was built from an ONNX file not at hand); None if both hold."""
        if self.artifact_sha256 != sha256:
            return "artifact_sha256"
        if self.input_onnx_sha256 not in onnx_sha256s:
            return "input_onnx_sha256"
        return None

    def finished(self, **result: Any) -> BuildRecord:
        """The record with the build step's results: `details` keys go to `details`."""
        details = {**self.details, **{k: v for k, v in result.items() if k in _DETAIL_KEYS}}
        return replace(self, details=details, **{k: v for k, v in result.items() if k not in _DETAIL_KEYS})

    # ---- JSON

    def to_json(self) -> dict[str, Any]:
        head = {"format": RECORD_FORMAT, "format_version": RECORD_VERSION, "artifact": self.artifact, "input_onnx": self.input_onnx,
                "input_onnx_sha256": self.input_onnx_sha256, "precision": self.precision, "backend": self.backend, "device": self.device,
                "calibration": self.calibration, "quantization_options": self.quantization_options, "check_data": self.check_data,
                "precision_plan": self.precision_plan, "tools": self.tools, "gpu": self.gpu, "options": self.options}
        if self.cache_key is None:  # not built yet: what the cache key is computed from
            return head
        done = {"artifact_sha256": self.artifact_sha256, "size_bytes": self.size_bytes, "cpu": self.cpu, "jetson": self.jetson,
                "contract": self.contract.to_props() if self.contract is not None else None, "created": self.created,
                "build_seconds": self.build_seconds}
        return {**head, "cache_key": self.cache_key, **self.details, **done, **self.unknown}

    @classmethod
    def from_json(cls, doc: dict[str, Any], source: str) -> BuildRecord:
        """A record from its JSON (format and version already checked); RecordError names `source`."""
        h = _RECORD_HINT
        objs = {k: _obj(doc, k, source, h) for k in ("calibration", "quantization_options", "check_data", "precision_plan", "gpu",
                                                    "options", "cpu", "jetson")}
        tools = doc.get("tools") or {}
        _need(isinstance(tools, dict), source, "'tools' must be an object", h)
        contract = None
        if doc.get("contract") is not None:
            props = doc["contract"]
            _need(isinstance(props, dict) and all(isinstance(v, str) for v in props.values()), source,
                  "'contract' must be an object of strings", h)
            try:
                contract = Contract.from_props(props, source)
            except ContractError as e:
                raise RecordError(f"{e}") from None
        size, seconds = doc.get("size_bytes"), doc.get("build_seconds")
        _need(size is None or (isinstance(size, int) and not isinstance(size, bool)), source, "'size_bytes' must be an integer", h)
        _need(seconds is None or isinstance(seconds, (int, float)), source, "'build_seconds' must be a number", h)
        for k in ("artifact_sha256", "cache_key", "created"):
            _need(doc.get(k) is None or isinstance(doc.get(k), str), source, f"'{k}' must be a string", h)
        known = {"format", "format_version", *cls.__dataclass_fields__, *_DETAIL_KEYS} - {"details", "unknown"}
        return cls(artifact=_str(doc, "artifact", source, h), input_onnx=_str(doc, "input_onnx", source, h),
                   input_onnx_sha256=_str(doc, "input_onnx_sha256", source, h), precision=_str(doc, "precision", source, h),
                   backend=_str(doc, "backend", source, h), device=_str(doc, "device", source, h), tools=tools,
                   cache_key=doc.get("cache_key"), details={k: doc[k] for k in _DETAIL_KEYS if k in doc},
                   artifact_sha256=doc.get("artifact_sha256"), size_bytes=size, contract=contract, created=doc.get("created"),
                   build_seconds=seconds, unknown={k: v for k, v in doc.items() if k not in known}, **objs)

    @classmethod
    def read(cls, path: Path) -> BuildRecord:
        doc = read_document(path, RECORD_FORMAT, (RECORD_VERSION,), what="build record", hint=_RECORD_HINT)
        return cls.from_json(doc, str(path))

    def save(self, path: Path) -> None:
        write_json(path, self.to_json())


# ---------------------------------------------------------------- bundle manifests

_BUNDLE_HINT = "make the bundle again with 'tldeploy bundle'"


@dataclass(frozen=True)
class ManifestEntry:
    """One model file of a bundle: its kind, precision, input format and build record."""

    file: str  # relative to the bundle
    kind: str  # "onnx" or "engine"
    precision: str
    input: str  # "normalized" or "raw"
    backend: str = "ort"
    record: str | None = None  # its build record, relative to the bundle
    qdq_flavour: str | None = None
    attention: str = "standard"  # "plugin": ChannelAttention plugin nodes (TensorRT only)
    measured_here: dict[str, Any] | None = None  # on the golden inputs where it was bundled
    built_here: bool = False  # an engine `verify --build` made on the device (never in a manifest)
    build_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("onnx", "engine"):
            raise RecordError(f"bundle entry {self.file}: kind must be 'onnx' or 'engine', found {self.kind!r}")
        if self.input not in ("normalized", "raw"):
            raise RecordError(f"bundle entry {self.file}: input must be 'normalized' or 'raw', found {self.input!r}")

    @property
    def names(self) -> tuple[str, ...]:
        """The paths it gives inside the bundle."""
        return (self.file,) if self.record is None else (self.file, self.record)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "kind": self.kind, "precision": self.precision, "input": self.input, "backend": self.backend,
                "record": self.record, "qdq_flavour": self.qdq_flavour, "attention": self.attention, "measured_here": self.measured_here}

    @classmethod
    def from_json(cls, doc: Any, source: str) -> ManifestEntry:
        h = _BUNDLE_HINT
        _need(isinstance(doc, dict), source, "an artifacts entry is not an object", h)
        record, flavour, measured = doc.get("record"), doc.get("qdq_flavour"), _obj(doc, "measured_here", source, h)
        _need(record is None or isinstance(record, str), source, "an entry's 'record' must be a name or null", h)
        _need(flavour is None or isinstance(flavour, str), source, "an entry's 'qdq_flavour' must be a string or null", h)
        return cls(file=_str(doc, "file", source, h), kind=_str(doc, "kind", source, h), precision=_str(doc, "precision", source, h),
                   input=_str(doc, "input", source, h), backend=str(doc.get("backend") or "ort"), record=record, qdq_flavour=flavour,
                   attention=str(doc.get("attention") or "standard"), measured_here=measured)


@dataclass(frozen=True)
class Manifest:
    """manifest.json: the bundle's contract, tolerances, model files and every file's SHA-256."""

    created: str
    contract: Contract
    tools: dict[str, Any]
    tolerances: dict[str, Tolerance]  # per precision, against the PyTorch reference on the golden inputs
    artifacts: tuple[ManifestEntry, ...]
    golden: dict[str, Any]  # n, labelled
    files: dict[str, str]  # relative name -> SHA-256

    @property
    def classes(self) -> list[str]:
        return self.contract.classes

    def names(self) -> list[str]:
        """Every path the manifest gives inside the bundle (files, artifacts, their records)."""
        return [*self.files, *(n for e in self.artifacts for n in e.names)]

    def to_json(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "created": self.created, "contract": self.contract.to_props(),
                "classes": self.classes, "tools": self.tools,
                "tolerances": {p: t.to_dict(*MANIFEST_LIMITS, *(n for n in t.limits if n not in MANIFEST_LIMITS)) for p, t in self.tolerances.items()},
                "artifacts": [e.to_json() for e in self.artifacts], "golden": self.golden, "files": self.files}

    @classmethod
    def from_json(cls, doc: dict[str, Any], source: str) -> Manifest:
        h = _BUNDLE_HINT
        files, entries, tolerances, props = doc.get("files"), doc.get("artifacts"), doc.get("tolerances"), doc.get("contract")
        if not (isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
            raise RecordError(f"{source}: 'files' must map names to SHA-256 digests; {h}")
        if not isinstance(entries, list):
            raise RecordError(f"{source}: 'artifacts' must be a list; {h}")
        if not (isinstance(tolerances, dict) and all(isinstance(v, dict) for v in tolerances.values())):
            raise RecordError(f"{source}: 'tolerances' must map precisions to objects; {h}")
        if not (isinstance(props, dict) and all(isinstance(v, str) for v in props.values())):
            raise RecordError(f"{source}: 'contract' must be an object of strings; {h}")
        try:
            contract = Contract.from_props(props, source)
        except ContractError as e:
            raise RecordError(str(e)) from None
        _need(doc.get("classes") in (None, contract.classes), source, "'classes' differ from the contract's", h)
        try:
            tols = {str(p): Tolerance.from_dict(t) for p, t in tolerances.items()}
        except (ConfigError, TypeError) as e:
            raise RecordError(f"{source}: a tolerance is malformed ({e}); {h}") from None
        return cls(created=str(doc.get("created", "")), contract=contract, tools=dict(doc.get("tools") or {}), tolerances=tols,
                   artifacts=tuple(ManifestEntry.from_json(e, source) for e in entries), golden=dict(doc.get("golden") or {}),
                   files=dict(files))

    @classmethod
    def read(cls, path: Path) -> Manifest:
        doc = read_document(path, MANIFEST_FORMAT, (MANIFEST_VERSION,), what="bundle manifest", hint=_BUNDLE_HINT)
        return cls.from_json(doc, str(path))


# ---------------------------------------------------------------- checkpoint metadata


@dataclass(frozen=True)
class CheckpointMeta:
    """A checkpoint's metadata: what export, qat, shift and the runners read, parsed once; the
    rest (training metrics, config) kept in `fields` as written."""

    backbone: str
    classes: list[str]
    preprocessing: Modality
    head: dict[str, Any]
    ood: OodGate | None
    qat: dict[str, Any] | None  # the QatRecord of a quantization-aware trained checkpoint
    versions: dict[str, str]
    fields: dict[str, Any]  # every key as written, in its order

    def contract(self, checkpoint_sha256: str = "", *, precision: str = "fp32", attention: str = "standard",
                 extra: dict[str, str] | None = None, tldeploy_version: str | None = None) -> Contract:
        """The contract an export of this checkpoint carries (or, with the defaults, what the
        checkpoint itself stands for)."""
        return Contract(classes=list(self.classes), preprocessing=self.preprocessing, backbone=self.backbone,
                        checkpoint_sha256=checkpoint_sha256,
                        tldeploy_version=tldeploy_version if tldeploy_version is not None else str(self.versions.get("tldeploy", "")),
                        precision=precision, attention=attention, extra=dict(extra or {}), ood=self.ood)

    def to_json(self) -> dict[str, Any]:
        return dict(self.fields)

    @classmethod
    def from_json(cls, meta: Any, source: str) -> CheckpointMeta:
        from tldeploy.modalities.preprocessing import preprocessing_from_dict

        h = "pass a model.pt written by 'tldeploy train'"
        _need(isinstance(meta, dict), source, "its metadata is not an object", h)
        backbone = meta.get("backbone")
        _need(isinstance(backbone, dict) and isinstance(backbone.get("name"), str), source, "'backbone' lacks its name", h)
        classes = meta.get("classes")
        _need(isinstance(classes, list) and bool(classes) and all(isinstance(c, str) for c in classes), source,
              "'classes' must be a list of names", h)
        _need(isinstance(meta.get("head"), dict), source, "'head' must be an object", h)
        qat = _obj(meta, "qat", source, h)
        try:
            prep = preprocessing_from_dict(meta["preprocessing"])
            ood = OodGate.from_dict(meta.get("ood"))
        except (KeyError, TypeError, ValueError, TldeployError) as e:
            raise RecordError(f"{source}: its preprocessing or OOD metadata is broken ({type(e).__name__}: {e}); {h}") from None
        versions = meta.get("versions") or {}
        return cls(backbone=backbone["name"], classes=list(classes), preprocessing=prep, head=dict(meta["head"]), ood=ood, qat=qat,
                   versions={str(k): str(v) for k, v in versions.items()}, fields=dict(meta))

    @classmethod
    def read(cls, path: Path) -> CheckpointMeta:
        from tldeploy.models.checkpoints import CHECKPOINT_FORMAT, read_torch_file

        return cls.from_json(read_torch_file(path, CHECKPOINT_FORMAT, "checkpoint").get("metadata"), str(path))
