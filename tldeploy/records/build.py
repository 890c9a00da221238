"""ARTIFACT.json, the build record beside each artifact `tldeploy build` writes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tldeploy._io import read_document, write_json
from tldeploy.contract import Contract, ContractError
from tldeploy.records._fields import RecordError, _need, _obj, _str

RECORD_FORMAT = "tldeploy.build"
RECORD_VERSION = 1

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
