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

from dataclasses import MISSING, asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tldeploy._io import read_document, write_json
from tldeploy.contract import Contract, ContractError
from tldeploy.errors import ConfigError, TldeployError
from tldeploy.modalities.base import Modality
from tldeploy.ood import OodGate
from tldeploy.parity import ParityReport, Tolerance, ToleranceResult

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


# ---------------------------------------------------------------- bench documents

BENCH_FORMAT = "tldeploy.bench"
BENCH_VERSION = 2  # 2: robustness rows (suite, disagreement) and config.robustness; version 1 documents are read too
_BENCH_HINT = "pass a bench.json from 'tldeploy bench' (rerun it)"
_ROLES, _KINDS = ("reference", "artifact"), ("checkpoint", "onnx", "engine")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class LatencyStats:
    """One entry's latency at one batch size: every timed sample, the rounds they fell in, and
    their summary (milliseconds)."""

    batch: int
    samples_ms: list[float] = field(repr=False)
    round_sizes: list[int] = field(repr=False)  # samples of each round, in order
    mean: float = 0.0
    std: float = 0.0
    min: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    throughput: float = 0.0  # images per second, from the mean
    clock: str = "perf_counter"  # or "cuda_events"
    stages: dict[str, dict[str, float]] | None = None  # h2d / compute / d2h summaries (device runners)

    @classmethod
    def from_samples(cls, batch: int, samples_ms: list[float], round_sizes: list[int] | None = None, **extra: Any) -> LatencyStats:
        import numpy as np

        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no latency samples")
        sizes = list(round_sizes) if round_sizes is not None else [int(a.size)]
        if sum(sizes) != a.size:
            raise ValueError(f"round sizes add up to {sum(sizes)}, but there are {a.size} samples")
        p50, p90, p95, p99 = (float(v) for v in np.percentile(a, (50, 90, 95, 99)))
        return cls(batch, [float(s) for s in a], sizes, mean=float(a.mean()), std=float(a.std(ddof=1)) if a.size > 1 else 0.0,
                   min=float(a.min()), p50=p50, p90=p90, p95=p95, p99=p99, max=float(a.max()),
                   throughput=float(batch * 1000.0 / a.mean()), **extra)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, source: str) -> LatencyStats:
        _need(isinstance(d, dict) and isinstance(d.get("batch"), int) and isinstance(d.get("samples_ms"), list)
              and isinstance(d.get("round_sizes"), list), source, "a latency row lacks its batch, samples_ms or round_sizes", _BENCH_HINT)
        try:
            return cls(**d)
        except TypeError as e:
            raise RecordError(f"{source}: a latency row is malformed ({e}); {_BENCH_HINT}") from None


def _parity(d: Any, source: str, name: str) -> ParityReport | None:
    if d is None:
        return None
    fields_ = ParityReport.__dataclass_fields__
    required = [k for k, f in fields_.items() if f.default is MISSING and f.default_factory is MISSING]
    _need(isinstance(d, dict) and all(_number(d.get(k)) for k in required) and set(d) <= set(fields_), source,
          f"result {name}: 'parity' must be an object of {', '.join(required)} (numbers) and the report's other fields", _BENCH_HINT)
    return ParityReport(**d)


def _gate(d: Any, source: str, name: str) -> ToleranceResult:
    _need(isinstance(d, dict) and isinstance(d.get("gate"), str) and _number(d.get("limit")) and _number(d.get("value"))
          and isinstance(d.get("passed"), bool), source, f"result {name}: a gate must be an object of gate, limit, value, passed", _BENCH_HINT)
    return ToleranceResult(d["gate"], d["limit"], d["value"], d["passed"])


@dataclass(frozen=True)
class OodRow:
    """bench --ood-data: an entry's OOD score on --data (in-distribution) against the OOD folder."""

    images: int  # OOD inputs
    score: str  # "energy" or "msp"
    threshold: float  # the entry's stored threshold: a score above it is unknown
    auroc: float
    tpr: float  # share of --data inputs the threshold keeps as known
    fpr_at_tpr: float  # share of OOD inputs it lets through as known
    disagreement: float | None = None  # share of all inputs decided unlike the reference; None for it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any, where: str) -> OodRow:
        fields_ = list(cls.__dataclass_fields__)
        _need(isinstance(d, dict) and set(d) == set(fields_) and isinstance(d["images"], int) and isinstance(d["score"], str)
              and all(_number(d[k]) for k in ("threshold", "auroc", "tpr", "fpr_at_tpr"))
              and (d["disagreement"] is None or _number(d["disagreement"])), where,
              f"'ood' must be an object of {', '.join(fields_)}", _BENCH_HINT)
        return cls(**d)


@dataclass(frozen=True)
class BenchRow:
    """One entry of a bench document's `results`: the reference or an artifact, what it is, its
    accuracy, parity against the reference (a `ParityReport`), the gates held against that
    (`ToleranceResult`s), its latency per batch size and, where measured, OOD and robustness rows."""

    name: str  # unique in the document: the file name, with #2, #3 for repeats
    path: str
    sha256: str
    role: str  # "reference" or "artifact"
    kind: str  # "checkpoint", "onnx", "engine"
    backend: str
    device: str
    precision: str
    accuracy: float | None = None
    parity: ParityReport | None = None  # None for the reference and without --reference/--data
    gates: tuple[ToleranceResult, ...] = ()
    latency: tuple[LatencyStats, ...] = ()
    skipped_batches: tuple[dict[str, Any], ...] = ()  # {"batch", "why"}
    build: dict[str, Any] | None = None  # from the build record (bench.build_summary)
    ood: OodRow | None = None  # bench --ood-data
    robustness: dict[str, Any] | None = None  # bench --robustness / --disagreement

    def __post_init__(self) -> None:
        if self.role not in _ROLES or self.kind not in _KINDS:
            raise RecordError(f"bench result {self.name}: role must be one of {', '.join(_ROLES)} and kind one of {', '.join(_KINDS)}, "
                              f"found {self.role!r}, {self.kind!r}")

    @property
    def is_reference(self) -> bool:
        return self.role == "reference"

    def latency_at(self, batch: int) -> LatencyStats | None:
        return next((s for s in self.latency if s.batch == batch), None)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "role": self.role, "kind": self.kind, "backend": self.backend,
                "device": self.device, "precision": self.precision, "accuracy": self.accuracy,
                "parity": None if self.parity is None else self.parity.to_dict(),
                "gates": [{"gate": g.name, "limit": g.limit, "value": g.value, "passed": g.passed} for g in self.gates],
                "latency": [s.to_dict() for s in self.latency], "skipped_batches": list(self.skipped_batches), "build": self.build,
                **({"ood": self.ood.to_json()} if self.ood is not None else {}),
                **({"robustness": self.robustness} if self.robustness is not None else {})}

    @classmethod
    def from_json(cls, doc: Any, source: str) -> BenchRow:
        h = _BENCH_HINT
        _need(isinstance(doc, dict), source, "a result is not an object", h)
        name = _str(doc, "name", source, h)
        where = f"{source}: result {name}"
        accuracy, gates, latency, skipped = doc.get("accuracy"), doc.get("gates"), doc.get("latency"), doc.get("skipped_batches")
        _need(accuracy is None or _number(accuracy), where, "'accuracy' must be a number or null", h)
        _need(doc.get("role") in _ROLES and doc.get("kind") in _KINDS, where, f"role must be one of {', '.join(_ROLES)} and kind one "
              f"of {', '.join(_KINDS)}, found {doc.get('role')!r}, {doc.get('kind')!r}", h)
        _need(isinstance(gates, list) and isinstance(latency, list) and isinstance(skipped, list), where,
              "'gates', 'latency' and 'skipped_batches' must be lists", h)
        return cls(name=name, path=_str(doc, "path", where, h), sha256=_str(doc, "sha256", where, h), role=_str(doc, "role", where, h),
                   kind=_str(doc, "kind", where, h), backend=_str(doc, "backend", where, h), device=_str(doc, "device", where, h),
                   precision=_str(doc, "precision", where, h), accuracy=accuracy, parity=_parity(doc.get("parity"), source, name),
                   gates=tuple(_gate(g, source, name) for g in gates), latency=tuple(LatencyStats.from_dict(s, where) for s in latency),
                   skipped_batches=tuple(skipped), build=_obj(doc, "build", where, h),
                   ood=None if doc.get("ood") is None else OodRow.from_json(doc["ood"], where),
                   robustness=_obj(doc, "robustness", where, h))


@dataclass(frozen=True)
class BenchDocument:
    """bench.json (format tldeploy.bench; `tldeploy.bench.document` reads it, checks its schema and
    upgrades older versions): one run's environment and settings, and a `BenchRow` per entry."""

    run_id: str  # entries of one run took turns and compare as pairs
    created: str
    seconds: float
    environment: dict[str, Any]
    config: dict[str, Any]
    data: dict[str, Any] | None  # None: random inputs, no parity or accuracy
    reference: dict[str, Any] | None
    rows: tuple[BenchRow, ...]
    failures: tuple[str, ...] = ()  # the gates' failure lines
    ood_data: dict[str, Any] | None = None
    version: int = BENCH_VERSION

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def batch_sizes(self) -> list[int]:
        return list(self.config["batch_sizes"])

    @property
    def data_sha256(self) -> str | None:
        """What images parity and accuracy were measured on."""
        return (self.data or {}).get("sha256")

    @property
    def budget_unit(self) -> str | None:
        return (self.config.get("robustness") or {}).get("budget_unit")

    def by_name(self) -> dict[str, BenchRow]:
        return {r.name: r for r in self.rows}

    def to_json(self) -> dict[str, Any]:
        return {"format": BENCH_FORMAT, "schema_version": self.version, "run_id": self.run_id, "created": self.created,
                "seconds": self.seconds, "environment": self.environment, "config": self.config, "data": self.data,
                "reference": self.reference, **({"ood_data": self.ood_data} if self.ood_data is not None else {}),
                "results": [r.to_json() for r in self.rows], "gates": {"passed": self.passed, "failures": list(self.failures)}}

    @classmethod
    def from_json(cls, doc: dict[str, Any], source: str) -> BenchDocument:
        """A document from its JSON (format, version and schema already checked by its reader);
        a malformed field is one RecordError naming `source`."""
        h = _BENCH_HINT
        results, gates, config = doc.get("results"), doc.get("gates"), doc.get("config")
        _need(isinstance(results, list) and bool(results), source, "'results' must be a non-empty list", h)
        _need(isinstance(gates, dict) and isinstance(gates.get("failures"), list) and gates.get("passed") is (not gates["failures"]),
              source, "'gates' must hold its failures, and pass exactly when there are none", h)
        _need(isinstance(config, dict) and isinstance(config.get("batch_sizes"), list), source, "'config' lacks its batch_sizes", h)
        _need(_number(doc.get("seconds")) and isinstance(doc.get("environment"), dict), source,
              "'seconds' must be a number and 'environment' an object", h)
        _need(isinstance(doc.get("schema_version"), int), source, "'schema_version' must be an integer", h)
        return cls(run_id=_str(doc, "run_id", source, h), created=_str(doc, "created", source, h), seconds=doc["seconds"],
                   environment=doc["environment"], config=doc["config"], data=_obj(doc, "data", source, h),
                   reference=_obj(doc, "reference", source, h), rows=tuple(BenchRow.from_json(r, source) for r in doc["results"]),
                   failures=tuple(doc["gates"]["failures"]), ood_data=_obj(doc, "ood_data", source, h), version=doc["schema_version"])


# ---------------------------------------------------------------- precision plans

PLAN_FORMAT = "tldeploy.precision_plan"
PLAN_VERSION = 1
_PLAN_HINT = "write one with tldeploy diagnose"
# A unit's fields in the order `tldeploy diagnose` writes them, each only where it has a value.
_UNIT_KEYS = ("name", "nodes", "op", "module", "short", "index", "score", "alone_low", "alone_float")


@dataclass(frozen=True)
class PlanUnit:
    """One unit a precision plan keeps in higher precision: its ONNX nodes (the only field a
    hand-written plan needs), what it is in PyTorch terms and what diagnose measured of it."""

    nodes: tuple[str, ...]
    name: str | None = None  # the lead node; the first of `nodes` where unnamed
    op: str | None = None  # e.g. "Conv+Clip"
    module: str | None = None  # the PyTorch module path
    short: str | None = None  # the module path without its common prefix
    index: int | None = None  # position in graph order
    score: float | None = None  # how much keeping it alone in low precision costs (diagnose's ranking)
    alone_low: dict[str, Any] | None = None  # metrics with only this unit in low precision
    alone_float: dict[str, Any] | None = None  # metrics with only this unit kept in float
    extra: dict[str, Any] = field(default_factory=dict)  # other keys, kept (e.g. an FP16 unit's "node")

    def get(self, key: str, default: Any = None) -> Any:
        """A field as the unit's JSON has it. Transitional: engines/builder.py still reads units
        as the dicts they were; typed access (`unit.module`) is the way."""
        return self.to_json().get(key, default)

    def to_json(self) -> dict[str, Any]:
        d = {k: list(self.nodes) if k == "nodes" else getattr(self, k) for k in _UNIT_KEYS}
        return {**{k: v for k, v in d.items() if v is not None}, **self.extra}

    @classmethod
    def from_json(cls, d: Any, label: str) -> PlanUnit:
        """A unit as diagnose (or a person) wrote it; ConfigError naming `label` if malformed."""
        if not (isinstance(d, dict) and isinstance(d.get("nodes"), list) and all(isinstance(n, str) for n in d["nodes"])):
            raise ConfigError(f"{label}: 'units' must be a list of objects with a 'nodes' list of node names")
        texts = {k: d.get(k) for k in ("name", "op", "module", "short")}
        bad = [k for k, v in texts.items() if v is not None and not isinstance(v, str)]
        bad += [k for k in ("index",) if d.get(k) is not None and not (isinstance(d[k], int) and not isinstance(d[k], bool))]
        bad += [k for k in ("score",) if d.get(k) is not None and not _number(d[k])]
        bad += [k for k in ("alone_low", "alone_float") if d.get(k) is not None and not isinstance(d[k], dict)]
        if bad:
            raise ConfigError(f"{label}: a unit's {', '.join(map(repr, bad))} has the wrong type; {_PLAN_HINT}")
        return cls(nodes=tuple(d["nodes"]), index=d.get("index"), score=d.get("score"), alone_low=d.get("alone_low"),
                   alone_float=d.get("alone_float"), extra={k: v for k, v in d.items() if k not in _UNIT_KEYS}, **texts)


@dataclass(frozen=True)
class PrecisionPlan:
    """plan.json: the units an INT8 or FP16 build keeps in higher precision (`tldeploy diagnose`
    writes it, `build --precision-plan` and `qat --keep-float` apply it); see `engines.plan`."""

    precision: str  # "int8" or "fp16"
    onnx_sha256: str
    units: tuple[PlanUnit, ...]
    measured_on: dict[str, Any]
    promised: dict[str, Any]
    acceptance: dict[str, Any]
    flavour: str | None = None  # int8: the Q/DQ flavour it was measured with
    reduce_range: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in ("int8", "fp16"):
            raise ConfigError(f"a precision plan is for int8 or fp16, not {self.precision!r}")

    @property
    def nodes(self) -> list[str]:
        """Every node the plan keeps in higher precision."""
        return [n for u in self.units for n in u.nodes]

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "format_version": PLAN_VERSION, "precision": self.precision,
                "onnx_sha256": self.onnx_sha256, "flavour": self.flavour, "reduce_range": self.reduce_range,
                "units": [u.to_json() for u in self.units], "measured_on": self.measured_on, "promised": self.promised,
                "acceptance": self.acceptance, **self.extra}

    def save(self, path: Path) -> None:
        write_json(Path(path), self.to_dict())

    def check_applies(self, path: Path, onnx_sha256: str, precision: str, onnx_path: Path) -> None:
        if self.precision != precision:
            raise ConfigError(f"--precision-plan {path} is a {self.precision} plan; build with --precision {self.precision} "
                              f"or make a {precision} plan with tldeploy diagnose --precision {precision}")
        if self.onnx_sha256 != onnx_sha256:
            raise ConfigError(f"--precision-plan {path} was made for another ONNX (SHA-256 {self.onnx_sha256[:12]}..., "
                              f"{onnx_path} is {onnx_sha256[:12]}...); run tldeploy diagnose on {onnx_path} for a plan of its own")

    def check_nodes(self, model: Any, path: Path | None, onnx_path: Path | str) -> None:
        """Every node the plan names is in `model` (an ONNX ModelProto; a plan is edited by hand,
        and a typo must not silently leave a layer at low precision)."""
        known = {n.name for n in model.graph.node}
        missing = [n for n in self.nodes if n not in known]
        if missing:
            raise ConfigError(f"--precision-plan {path} names nodes {', '.join(missing[:3])} that {onnx_path} does not have; "
                              "make the plan from this ONNX with tldeploy diagnose")

    @classmethod
    def from_json(cls, doc: dict[str, Any], label: str) -> PrecisionPlan:
        """A plan from its JSON (format and version checked); any problem is one ConfigError naming `label`."""
        units = doc.get("units")
        if not isinstance(units, list):
            raise ConfigError(f"{label}: 'units' must be a list of objects with a 'nodes' list of node names")
        known = {"format", "format_version", "precision", "onnx_sha256", "flavour", "reduce_range", "units", "measured_on", "promised",
                 "acceptance"}
        try:
            return cls(precision=str(doc["precision"]), onnx_sha256=str(doc["onnx_sha256"]),
                       units=tuple(PlanUnit.from_json(u, label) for u in units), measured_on=dict(doc.get("measured_on") or {}),
                       promised=dict(doc.get("promised") or {}), acceptance=dict(doc.get("acceptance") or {}),
                       flavour=doc.get("flavour"), reduce_range=doc.get("reduce_range"),
                       extra={k: v for k, v in doc.items() if k not in known})
        except KeyError as e:
            raise ConfigError(f"{label} lacks the field {e.args[0]!r}") from None

    @classmethod
    def read(cls, path: Path) -> PrecisionPlan:
        """Read and check a plan file; any problem is one ConfigError naming the file."""
        path = Path(path)
        label = f"--precision-plan {path}"
        doc = read_document(path, PLAN_FORMAT, (PLAN_VERSION,), what="precision plan", hint=_PLAN_HINT, label=label, error=ConfigError)
        return cls.from_json(doc, label)
