"""Precision plans: the units an INT8 or FP16 build keeps in higher precision, as a JSON file the
user can read, edit and replay (`tldeploy diagnose` writes one, `tldeploy build --precision-plan`
applies it).

    {"format": "tldeploy.precision_plan", "format_version": 1, "precision": "int8",
     "onnx_sha256": "...", "flavour": "ort-x86", "reduce_range": false,
     "units": [{"name": "node_Conv_809", "nodes": [...], "module": "backbone.features.model.blocks.3.0.conv_pw",
                "short": "blocks.3.0.conv_pw", "op": "Conv+Clip", "score": 0.012, "alone_low": {...}, "alone_float": {...}}],
     "measured_on": {"source": "data/val", "n": 359, "sha256": "..."},
     "promised": {"top1_agreement": 0.997, "kl": 0.0011, "cosine": 0.9995, "n": 359},
     "acceptance": {"min_top1_agreement": 0.99, "max_kl": null, "images": "..."}}

A plan names nodes of one ONNX file; it is refused for any other (the SHA-256 differs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tldeploy._io import read_document, write_json
from tldeploy.errors import ConfigError

PLAN_FORMAT = "tldeploy.precision_plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class PrecisionPlan:
    precision: str  # "int8" or "fp16"
    onnx_sha256: str
    units: list[dict[str, Any]]
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
        return [n for u in self.units for n in u["nodes"]]

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "format_version": PLAN_VERSION, "precision": self.precision,
                "onnx_sha256": self.onnx_sha256, "flavour": self.flavour, "reduce_range": self.reduce_range,
                "units": self.units, "measured_on": self.measured_on, "promised": self.promised,
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


    def check_nodes(self, model, path: Path | None, onnx_path: Path | str) -> None:
        """Every node the plan names is in `model` (a plan is edited by hand; a typo must not
        silently leave a layer at low precision)."""
        known = {n.name for n in model.graph.node}
        missing = [n for n in self.nodes if n not in known]
        if missing:
            raise ConfigError(f"--precision-plan {path} names nodes {', '.join(missing[:3])} that {onnx_path} does not have; "
                              "make the plan from this ONNX with tldeploy diagnose")


def load_plan(path: Path) -> PrecisionPlan:
    """Read and check a plan file; any problem is one ConfigError naming the file."""
    path = Path(path)
    doc = read_document(path, PLAN_FORMAT, (PLAN_VERSION,), what="precision plan", hint="write one with tldeploy diagnose",
                        label=f"--precision-plan {path}", error=ConfigError)
    units = doc.get("units")
    if not isinstance(units, list) or not all(isinstance(u, dict) and isinstance(u.get("nodes"), list)
                                              and all(isinstance(n, str) for n in u["nodes"]) for u in units):
        raise ConfigError(f"--precision-plan {path}: 'units' must be a list of objects with a 'nodes' list of node names")
    known = {"format", "format_version", "precision", "onnx_sha256", "flavour", "reduce_range", "units", "measured_on", "promised", "acceptance"}
    try:
        return PrecisionPlan(precision=str(doc["precision"]), onnx_sha256=str(doc["onnx_sha256"]), units=units,
                             measured_on=dict(doc.get("measured_on") or {}), promised=dict(doc.get("promised") or {}),
                             acceptance=dict(doc.get("acceptance") or {}), flavour=doc.get("flavour"),
                             reduce_range=doc.get("reduce_range"), extra={k: v for k, v in doc.items() if k not in known})
    except KeyError as e:
        raise ConfigError(f"--precision-plan {path} lacks the field {e.args[0]!r}") from None
