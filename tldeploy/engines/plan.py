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

A plan names nodes of one ONNX file; it is refused for any other (the SHA-256 differs). The plan and
its units are records (`tldeploy.records.PrecisionPlan`, `PlanUnit`), re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from tldeploy.records import PLAN_FORMAT, PLAN_VERSION, PlanUnit, PrecisionPlan

__all__ = ["PLAN_FORMAT", "PLAN_VERSION", "PlanUnit", "PrecisionPlan", "load_plan"]


def load_plan(path: Path) -> PrecisionPlan:
    """Read and check a plan file; any problem is one ConfigError naming the file."""
    return PrecisionPlan.read(path)
