"""TensorRT's engine-inspector document (OUT.layers.json), read for TensorRT 10.x and 11.x alike.

`IEngineInspector.get_engine_information(LayerInformationFormat.JSON)` writes {"Layers": [...],
"Bindings": [names]} in TensorRT 10. TensorRT 11 replaced "Bindings" with "I/O Tensors" (objects
with "Name", "IOMode", "DataType", ...) and split each layer tensor's "Format/Datatype" (NVIDIA's
"Migrating IEngineInspector Usage from TensorRT 10.x to 11.x"), into "Format" and "Datatype" as
NVIDIA's own reader of it (trt-perf-analysis, TensorRT's main branch) takes them; both are read.
A layer is {"Name", "LayerType", "Inputs", "Outputs", "TacticName", ...} when the engine was built
with ProfilingVerbosity.DETAILED, and only its name otherwise. An engine with several optimization
profiles lists each profile's layers, those after the first suffixed "[profile N]" (as
trt-engine-explorer reads them); the summary counts the first profile's.

No tensorrt import: the document is read wherever the engine's files are.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tldeploy.errors import TldeployError

# Precision words as the inspector spells them, most specific first ("BFloat16" before "Float",
# "UInt8" before "Int8"): "Row major linear FP16 format" (10.x), "Half" (Myelin layers; 11.x's "Datatype").
_PRECISIONS = (
    ("BF16", r"\bBF16\b|\bBFLOAT16\b"), ("FP8", r"\bFP8\b|\bFLOAT8|\bE4M3|\bE5M2"), ("FP4", r"\bFP4\b|\bE2M1\b"),
    ("INT4", r"\bINT4\b"), ("FP16", r"\bFP16\b|\bHALF\b"), ("FP32", r"\bFP32\b|\bFLOAT\b"), ("UINT8", r"\bUINT8\b"),
    ("INT8", r"\bINT8\b"), ("INT32", r"\bINT32\b"), ("INT64", r"\bINT64\b"), ("BOOL", r"\bBOOL\b"),
)
_OTHER_PROFILE = re.compile(r"\[profile +[1-9]\d*\]")


@dataclass(frozen=True)
class LayerSummary:
    """What an engine is made of: its layers, by type and by output precision, and its I/O tensors.
    `detailed` is False where the engine holds layer names only (by_type, by_output_precision empty)."""

    layers: int
    io_tensors: tuple[str, ...]
    detailed: bool
    by_type: dict[str, int] = field(default_factory=dict)
    by_output_precision: dict[str, int] = field(default_factory=dict)  # "FP16+FP32" for a layer whose outputs differ

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.layers, "by_type": self.by_type, "by_output_precision": self.by_output_precision,
                "io_tensors": list(self.io_tensors), "detailed": self.detailed}


def precision_of(tensor: dict[str, Any]) -> str:
    """FP32, FP16, INT8, ... from a layer tensor's "Datatype" (11.x) or "Format/Datatype" (10.x);
    "unknown" where neither names one."""
    text = " ".join(str(tensor.get(k, "")) for k in ("Datatype", "DataType", "Format/Datatype")).upper()
    return next((name for name, pattern in _PRECISIONS if re.search(pattern, text)), "unknown")


def read_layer_summary(path: Path) -> LayerSummary:
    """The summary of an OUT.layers.json file."""
    fix = "'tldeploy build --force' writes it again beside the engine"
    try:
        return summarize_layers(Path(path).read_text(), path)
    except (OSError, UnicodeDecodeError) as e:
        raise TldeployError(f"cannot read {path} ({e}); {fix}") from None
    except TldeployError as e:
        raise TldeployError(f"{e}; {fix}") from None


def summarize_layers(text: str, source: Path | str) -> LayerSummary:
    """The summary of the inspector's JSON `text` (from `source`, named in errors)."""

    def refuse(why: str) -> TldeployError:
        return TldeployError(f"{source} is not TensorRT engine-inspector JSON ({why})")

    try:
        doc = json.loads(text)
    except ValueError as e:
        raise refuse(f"invalid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("Layers"), list):
        raise refuse('no "Layers" list')
    io = doc.get("I/O Tensors", doc.get("Bindings", []))  # 11.x, else 10.x
    if not isinstance(io, list):
        raise refuse('"I/O Tensors" or "Bindings" is not a list')
    layers = doc["Layers"]
    io_names, names = [_name(t) for t in io], [_name(la) for la in layers]
    if any(n is None for n in (*io_names, *names)):
        raise refuse("a layer or I/O tensor is neither a name nor an object with one")
    first = [la for la, n in zip(layers, names, strict=True) if not _OTHER_PROFILE.search(str(n))]
    detailed = [la for la in first if isinstance(la, dict)]
    by_type = Counter(str(la.get("LayerType", "unknown")) for la in detailed)
    by_precision: Counter[str] = Counter()
    for la in detailed:
        outputs = [t for t in la.get("Outputs") or [] if isinstance(t, dict)]
        if outputs:
            by_precision["+".join(sorted({precision_of(t) for t in outputs}))] += 1
    return LayerSummary(layers=len(first), io_tensors=tuple(str(n) for n in io_names if not _OTHER_PROFILE.search(str(n))),
                        detailed=bool(detailed), by_type=dict(by_type.most_common()), by_output_precision=dict(by_precision.most_common()))


def _name(entry: Any) -> str | None:
    """A layer's or I/O tensor's name: the entry itself (names only, 10.x bindings) or its "Name"."""
    name = entry.get("Name") if isinstance(entry, dict) else entry
    return name if isinstance(name, str) else None
