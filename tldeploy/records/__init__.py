"""What crosses a stage boundary, as frozen records read once: the build record beside each
artifact (`BuildRecord`), a bundle's manifest (`Manifest`, `ManifestEntry`), a checkpoint's
metadata (`CheckpointMeta`), precision plans (`PrecisionPlan`, `PlanUnit`) and bench documents
(`BenchDocument`, its `BenchRow`s). Each reads from and writes to the JSON its file has always
held (`from_json`/`to_json`), through `_io.read_document` and its one version policy; a malformed
field is refused on reading in one line naming the file, not met later as a KeyError in another
stage.

A record writes back what it read, key for key; keys this tldeploy does not know (a newer
writer's) are kept and written after the known ones. The normalisations on writing back are each
module's to document (a manifest entry's key order, a bench row of an older document gaining
`"build": null`).
"""

from tldeploy.records._fields import RecordError
from tldeploy.records.bench import BENCH_FORMAT, BENCH_VERSION, BenchDocument, BenchRow, LatencyStats, OodRow
from tldeploy.records.build import RECORD_FORMAT, RECORD_VERSION, BuildRecord
from tldeploy.records.bundle import MANIFEST_FORMAT, MANIFEST_LIMITS, MANIFEST_VERSION, Manifest, ManifestEntry
from tldeploy.records.checkpoint import CheckpointMeta
from tldeploy.records.plan import PLAN_FORMAT, PLAN_VERSION, PlanUnit, PrecisionPlan

__all__ = [
    "BENCH_FORMAT", "BENCH_VERSION", "MANIFEST_FORMAT", "MANIFEST_LIMITS", "MANIFEST_VERSION", "PLAN_FORMAT", "PLAN_VERSION",
    "RECORD_FORMAT", "RECORD_VERSION", "BenchDocument", "BenchRow", "BuildRecord", "CheckpointMeta", "LatencyStats", "Manifest",
    "ManifestEntry", "OodRow", "PlanUnit", "PrecisionPlan", "RecordError",
]
