"""A bundle's manifest.json: its contract, tolerances, model files and every file's SHA-256.

A manifest entry's keys are written in one order (bundles before the records listed the FP32
source's `record` before its `backend` and left out its `qdq_flavour`, null): the one
normalisation of a manifest read and written back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tldeploy._io import read_document
from tldeploy.contract import Contract, ContractError
from tldeploy.errors import ConfigError
from tldeploy.parity import Tolerance
from tldeploy.records._fields import RecordError, _need, _obj, _str

MANIFEST_FORMAT = "tldeploy.bundle"
MANIFEST_VERSION = 1
MANIFEST_LIMITS = ("min_top1_agreement", "min_cosine", "max_logit_diff")  # every manifest states these, null where unset

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
