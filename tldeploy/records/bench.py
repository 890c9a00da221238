"""The bench document (bench.json): its rows, each holding a `ParityReport`, gates and latency."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field
from typing import Any

from tldeploy.parity import ParityReport, ToleranceResult
from tldeploy.records._fields import RecordError, _need, _number, _obj, _str

BENCH_FORMAT = "tldeploy.bench"
BENCH_VERSION = 2  # 2: robustness rows (suite, disagreement) and config.robustness; version 1 documents are read too
_BENCH_HINT = "pass a bench.json from 'tldeploy bench' (rerun it)"
_ROLES, _KINDS = ("reference", "artifact"), ("checkpoint", "onnx", "engine")




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
