"""The bench document on disk: its format and version, the schema check, and reading older versions."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tldeploy._io import read_document
from tldeploy.errors import TldeployError
from tldeploy.records import BENCH_FORMAT, BENCH_VERSION, BenchDocument

SCHEMA_PATH = Path(__file__).with_name("bench.schema.json")


def load_bench(path: Path) -> BenchDocument:
    """A bench document, checked for its format and version (an older one upgraded) and its schema."""
    path = Path(path)
    doc = read_document(path, BENCH_FORMAT, READS, lambda d, _version: upgrade(d), what="bench result", version_key="schema_version",
                        version_what="bench schema",
                        hint="pass a bench.json from 'tldeploy bench' (rerun it)")
    validate_bench(doc, str(path))
    return BenchDocument.from_json(doc, str(path))


READS = (1, BENCH_VERSION)


def upgrade(doc: dict[str, Any]) -> dict[str, Any]:
    """A version 1 document as version 2 says it (a copy): config.robustness from its robustness
    rows (budgets from the attacks; the suite as they list it), and the rows' suite and
    disagreement as null (version 1 recorded neither)."""
    if doc.get("schema_version") != 1:
        return doc
    doc = copy.deepcopy(doc)
    doc["schema_version"] = BENCH_VERSION
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    rows = [r["robustness"] for r in doc.get("results") or [] if isinstance(r, dict) and isinstance(r.get("robustness"), dict)]
    config["robustness"] = None
    if rows:
        config["robustness"] = {"suite": "all", "epsilons": sorted({a["epsilon"] for a in rows[0].get("attacks", [])}),
                                "disagreement": None, "budget_unit": "pixel levels of 255"}
    for row in rows:
        row.setdefault("suite", None)
        row.setdefault("disagreement", None)
    return doc


def validate_bench(doc: dict[str, Any], source: str = "bench result") -> None:
    """Check `doc` against bench.schema.json; the error names the first offending field."""
    import json

    import jsonschema

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        raise TldeployError(f"{source} does not follow the bench schema at {where}: {error.message}; rerun 'tldeploy bench'")
