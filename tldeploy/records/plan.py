"""Precision plans (plan.json): the units a build keeps in higher precision, as `tldeploy diagnose` wrote them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tldeploy._io import read_document, write_json
from tldeploy.errors import ConfigError
from tldeploy.records._fields import _number

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
