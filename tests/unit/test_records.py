"""The typed records read the files tldeploy wrote before them (tests/fixtures/records, from
bfae8cb) and write them back byte-equal, or with the normalisation `tldeploy.records` documents;
every reader follows the one version policy of `_io.check_version`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tldeploy._io import read_document
from tldeploy.bench.document import load_bench
from tldeploy.engines.plan import load_plan
from tldeploy.errors import ConfigError, TldeployError
from tldeploy.ood import OodGate
from tldeploy.parity import ParityReport, ToleranceResult
from tldeploy.records import (
    BenchDocument,
    BenchRow,
    BuildRecord,
    CheckpointMeta,
    LatencyStats,
    Manifest,
    ManifestEntry,
    PlanUnit,
    PrecisionPlan,
    RecordError,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "records"


def _broken(fixture: Path, edit, path: Path) -> Path:
    """`fixture` with `edit` applied to its JSON, written to `path`."""
    doc = json.loads(fixture.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return path


def _text(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"  # how tldeploy writes every JSON document (_io.write_json)


@pytest.mark.parametrize("name", ["build_record.fp32.json", "build_record.int8.json"])
def test_build_records_round_trip_byte_equal(name):
    path = FIXTURES / name
    record = BuildRecord.read(path)
    assert _text(record.to_json()) == path.read_text()
    assert record.contract is not None and record.contract.ood is not None  # parsed, not a dict
    if record.precision == "int8":
        assert record.qdq_flavour == "ort-x86" and record.check is not None and record.check["top1_agreement"] == 1.0
        assert record.float_units == record.quantization["float_units"]


def test_manifest_round_trip_with_its_documented_normalisation():
    """Entries are written in one key order, and the FP32 source entry gains "qdq_flavour": null;
    nothing else changes."""
    path = FIXTURES / "manifest.json"
    old = json.loads(path.read_text())
    manifest = Manifest.read(path)
    order = list(ManifestEntry.__dataclass_fields__)[:9]
    old["artifacts"] = [{k: e.get(k) for k in order} for e in old["artifacts"]]
    assert _text(manifest.to_json()) == _text(old)
    assert [e.kind for e in manifest.artifacts] == ["onnx", "onnx", "onnx"] and manifest.classes == ["green", "red"]
    assert "artifacts/tiny.int8.ort.onnx.json" in manifest.names() and len(manifest.files) == len(old["files"])


def test_plan_and_bench_document_round_trip_byte_equal():
    plan = FIXTURES / "plan.json"
    assert _text(load_plan(plan).to_dict()) == plan.read_text()
    bench = FIXTURES / "bench.json"
    assert _text(load_bench(bench).to_json()) == bench.read_text()


def test_checkpoint_metadata_round_trips_and_gives_the_contract():
    doc = json.loads((FIXTURES / "checkpoint_meta.json").read_text())
    meta = CheckpointMeta.from_json(doc["metadata"], "model.pt")
    assert meta.to_json() == doc["metadata"] and list(meta.to_json()) == list(doc["metadata"])
    contract = meta.contract("ab" * 32, precision="fp16")
    assert contract.classes == doc["metadata"]["classes"] and contract.backbone == "tiny_cnn" and contract.precision == "fp16"
    assert contract.ood == OodGate.from_dict(doc["metadata"]["ood"]) and contract.checkpoint_sha256 == "ab" * 32
    assert contract.tldeploy_version == doc["metadata"]["versions"]["tldeploy"]


@pytest.mark.parametrize("breakage, message", [
    (lambda m: m.pop("classes"), "'classes' must be a list"),
    (lambda m: m.update(backbone="tiny_cnn"), "'backbone' lacks its name"),
    (lambda m: m.update(ood={"kind": "energy"}), "OOD metadata is broken"),
    (lambda m: m["preprocessing"].pop("input_size"), "preprocessing or OOD metadata is broken"),
])
def test_checkpoint_metadata_refuses_a_broken_field_naming_the_file(breakage, message):
    meta = json.loads((FIXTURES / "checkpoint_meta.json").read_text())["metadata"]
    breakage(meta)
    with pytest.raises(RecordError, match=f"model.pt: .*{message}"):
        CheckpointMeta.from_json(meta, "model.pt")


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("input_onnx_sha256"), "'input_onnx_sha256' must be a non-empty string"),
    (lambda r: r.update(calibration=[1]), "'calibration' must be an object or null"),
    (lambda r: r.update(size_bytes="big"), "'size_bytes' must be an integer"),
    (lambda r: r["contract"].update({"tldeploy.classes": "not json"}), "broken tldeploy contract"),
])
def test_a_malformed_build_record_is_one_line_naming_it(tmp_path, edit, message):
    path = _broken(FIXTURES / "build_record.int8.json", edit, tmp_path / "m.onnx.json")
    with pytest.raises(TldeployError, match=message) as err:
        BuildRecord.read(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("version, fix", [(2, "upgrade tldeploy"), (0, "rebuild with 'tldeploy build --force'"), ("1", "rebuild"),
                                          (True, "rebuild"), (None, "rebuild")])
def test_one_version_policy_newer_refused_older_unread_refused(tmp_path, version, fix):
    doc = json.loads((FIXTURES / "build_record.fp32.json").read_text())
    doc["format_version"] = version
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TldeployError, match=f"has build record version {version}; this tldeploy reads versions 1; {fix}"):
        BuildRecord.read(path)


def test_an_older_readable_version_is_upgraded_by_its_reader(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"format": "x", "v": 1, "a": 1}))
    seen = []

    def upgrade(doc, version):
        seen.append(version)
        return {**doc, "v": 2, "b": doc["a"] * 2}

    assert read_document(path, "x", (1, 2), upgrade, what="x doc", hint="h", version_key="v") == {"format": "x", "v": 2, "a": 1, "b": 2}
    assert seen == [1]
    path.write_text(json.dumps({"format": "x", "v": 3}))
    with pytest.raises(ConfigError, match=r"--flag d.json has x doc version 3; this tldeploy reads versions 1, 2; upgrade tldeploy"):
        read_document(path, "x", (1, 2), upgrade, what="x doc", hint="h", version_key="v", label="--flag d.json", error=ConfigError)
    path.write_text(json.dumps({"format": "y", "v": 2}))
    with pytest.raises(TldeployError, match="is not a tldeploy x doc"):
        read_document(path, "x", (1, 2), what="x doc", hint="h", version_key="v")


# ---------------------------------------------------------------- bench rows


def test_bench_rows_round_trip_byte_equal_and_are_typed():
    path = FIXTURES / "bench.json"
    doc = json.loads(path.read_text())
    rows = [BenchRow.from_json(r, "bench.json") for r in doc["results"]]
    assert [r.to_json() for r in rows] == doc["results"]
    record = BenchDocument.from_json(doc, "bench.json")
    assert record.rows == tuple(rows) and _text(record.to_json()) == path.read_text()
    ref, fp32, int8 = record.rows
    assert ref.is_reference and ref.parity is None and ref.gates == ()
    assert isinstance(int8.parity, ParityReport) and int8.parity.top1_agreement == doc["results"][2]["parity"]["top1_agreement"]
    assert isinstance(fp32.latency[0], LatencyStats) and fp32.latency_at(1) is fp32.latency[0] and fp32.latency_at(8) is None
    assert record.batch_sizes == [1] and record.passed and record.data_sha256 == doc["data"]["sha256"]


def test_bench_gates_are_tolerance_results_written_as_before():
    row = json.loads((FIXTURES / "bench.json").read_text())["results"][2]
    row["gates"] = [{"gate": "max_top1_drop", "limit": 1.0, "value": 0.0, "passed": True},
                    {"gate": "min_cosine", "limit": 0.99, "value": 0.5, "passed": False}]
    read = BenchRow.from_json(row, "bench.json")
    assert read.gates == (ToleranceResult("max_top1_drop", 1.0, 0.0, True), ToleranceResult("min_cosine", 0.99, 0.5, False))
    assert read.to_json() == row


def test_a_version_1_bench_document_is_read_through_its_upgrade(tmp_path):
    doc = json.loads((FIXTURES / "bench.json").read_text())
    doc["schema_version"] = 1
    del doc["config"]["robustness"], doc["config"]["gates"]["max_robustness_flip"]
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(doc))
    record = load_bench(path)
    assert record.version == 2 and record.config["robustness"] is None and len(record.rows) == 3


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("sha256"), "result tiny.int8.ort.onnx: 'sha256' must be a non-empty string"),
    (lambda r: r.update(role="baseline"), "role must be one of reference, artifact"),
    (lambda r: r["parity"].pop("cosine"), "result tiny.int8.ort.onnx: 'parity' must be an object of"),
    (lambda r: r["parity"].update(cosine="high"), "'parity' must be an object of"),
    (lambda r: r.update(gates=[{"gate": "min_cosine", "limit": 0.9}]), "a gate must be an object of gate, limit, value, passed"),
    (lambda r: r["latency"][0].update(p42=1.0), "a latency row is malformed"),
    (lambda r: r.update(accuracy="0.9"), "'accuracy' must be a number or null"),
])
def test_a_malformed_bench_row_is_one_line_naming_the_file(tmp_path, edit, message):
    doc = json.loads((FIXTURES / "bench.json").read_text())
    edit(doc["results"][2])
    with pytest.raises(RecordError, match=message) as err:
        BenchDocument.from_json(doc, str(tmp_path / "bench.json"))
    assert str(err.value).startswith(f"{tmp_path / 'bench.json'}: ") and "\n" not in str(err.value)


def test_a_bench_document_whose_gates_contradict_themselves_is_refused():
    doc = json.loads((FIXTURES / "bench.json").read_text())
    doc["gates"]["passed"] = False
    with pytest.raises(RecordError, match="^bench.json: 'gates' must hold its failures, and pass exactly when there are none"):
        BenchDocument.from_json(doc, "bench.json")


# ---------------------------------------------------------------- precision plans


def test_plan_units_are_typed_and_write_back_byte_equal():
    path = FIXTURES / "plan.json"
    doc = json.loads(path.read_text())
    plan = PrecisionPlan.read(path)
    assert plan == load_plan(path) and _text(plan.to_dict()) == path.read_text()
    first = plan.units[0]
    assert isinstance(first, PlanUnit) and first.nodes == tuple(doc["units"][0]["nodes"]) and first.module == doc["units"][0]["module"]
    assert first.score == doc["units"][0]["score"] and first.alone_low == doc["units"][0]["alone_low"]
    assert plan.nodes == [n for u in doc["units"] for n in u["nodes"]]


def test_a_hand_written_unit_keeps_its_unknown_keys_and_needs_only_nodes():
    unit = PlanUnit.from_json({"nodes": ["a", "b"], "why": "kept by hand"}, "--precision-plan p.json")
    assert unit.name is None and unit.to_json() == {"nodes": ["a", "b"], "why": "kept by hand"}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["units"][0].pop("nodes"), "'units' must be a list of objects with a 'nodes' list"),
    (lambda d: d["units"][0].update(score="high"), "a unit's 'score' has the wrong type"),
    (lambda d: d.pop("onnx_sha256"), "lacks the field 'onnx_sha256'"),
])
def test_a_malformed_plan_is_one_line_naming_it(tmp_path, edit, message):
    path = _broken(FIXTURES / "plan.json", edit, tmp_path / "plan.json")
    with pytest.raises(ConfigError, match=message) as err:
        load_plan(path)
    assert str(err.value).startswith(f"--precision-plan {path}") and "\n" not in str(err.value)


def test_an_ood_row_is_typed_and_refused_when_malformed():
    doc = json.loads((FIXTURES / "bench.json").read_text())
    ood = {"images": 12, "score": "energy", "threshold": 1.5, "auroc": 0.9, "tpr": 0.95, "fpr_at_tpr": 0.25, "disagreement": None}
    doc["results"][1]["ood"] = ood
    row = BenchRow.from_json(doc["results"][1], "bench.json")
    assert row.ood is not None and row.ood.auroc == 0.9 and row.to_json() == doc["results"][1]
    doc["results"][1]["ood"] = {**ood, "auroc": "high"}
    with pytest.raises(RecordError, match=r"^bench.json: result tiny.fp32.ort.onnx: 'ood' must be an object of images, score"):
        BenchRow.from_json(doc["results"][1], "bench.json")
