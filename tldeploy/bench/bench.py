"""`tldeploy bench`: latency and parity of deployed artifacts against the PyTorch reference.

    tldeploy bench digits.fp32.ort.onnx digits.int8.ort.onnx --reference runs/digits/model.pt \
        --data data/digits/val -o bench.json

Every artifact (and the reference) runs on the same images, preprocessed once by the reference's
contract; every artifact's contract must agree with it. Latency is measured per batch size with
all artifacts taking turns in rounds (`tldeploy.bench.latency`). The result is one JSON document
(`bench.schema.json`, read and written as a `tldeploy.records.BenchDocument`), a Markdown report and plots.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tldeploy._io import check_writable, write_json
from tldeploy.bench.config import BENCH_GATES, BenchConfig
from tldeploy.bench.document import SCHEMA_PATH, load_bench, validate_bench
from tldeploy.bench.latency import measure_interleaved
from tldeploy.errors import ConfigError, TldeployError
from tldeploy.parity import ToleranceResult, compare_outputs
from tldeploy.records import BenchDocument, BenchRow, BuildRecord, LatencyStats, OodRow

__all__ = ["SCHEMA_PATH", "BenchConfig", "BenchResult", "load_bench", "run_bench", "validate_bench"]

log = logging.getLogger(__name__)


@dataclass
class BenchResult:
    document: BenchDocument
    path: Path
    report: Path
    plots: list[Path] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return list(self.document.failures)


@dataclass
class _BenchEntry:
    name: str
    path: Path
    role: str  # "reference" or "artifact"
    kind: str  # "checkpoint", "onnx", "engine"
    backend: str
    device: str
    precision: str
    contract: Any  # tldeploy.contract.Contract
    runner: Any = None
    record: BuildRecord | None = None  # the build record beside the artifact, if any


def _describe(path: Path, role: str, device: str, threads: int | None) -> _BenchEntry:
    from tldeploy.runtime.loader import load_runner
    from tldeploy.runtime.runners import TorchRunner, artifact_contract, artifact_kind, read_sidecar

    kind = artifact_kind(path)
    contract = artifact_contract(path)
    if kind == "checkpoint":
        return _BenchEntry(path.name, path, role, "checkpoint", "torch", device, "fp32", contract, TorchRunner(path, device=device))
    record = read_sidecar(path)
    if kind == "engine":
        precision = record.precision if record else "unknown"
        return _BenchEntry(path.name, path, role, "engine", "tensorrt", "cuda", precision, contract, load_runner(path), record)
    dev = record.device if record else device
    precision = record.precision if record else contract.precision
    return _BenchEntry(path.name, path, role, "onnx", "onnxruntime", dev, precision, contract, load_runner(path, device=dev, threads=threads), record)


def build_summary(record: BuildRecord | None) -> dict[str, Any] | None:
    """What a build record says about precision: the units kept in higher precision and the
    agreement/KL its check measured, on which images."""
    if record is None:
        return None
    q = record.quantization or {}
    check = record.check or {}
    return {
        "kept_high_precision": [u.get("short") or u.get("module") or u.get("name") for u in record.float_units or []],
        "preset": ((q.get("preset") or {}).get("name") if q else None),  # INT8: the transformer preset, when it applied
        "precision_plan": (record.precision_plan or {}).get("path"),
        "check": {k: check.get(k) for k in ("top1_agreement", "kl", "n", "images")} if "top1_agreement" in check else None,
    }



def _feed(runner, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    reps = -(-batch // len(x))
    return {next(iter(runner.input_spec())): np.ascontiguousarray(np.concatenate([x] * reps)[:batch])}


def _check_outputs(cfg: BenchConfig) -> None:
    for p in (cfg.output, cfg.report_path):
        check_writable(p, force=cfg.force)
    if cfg.plots_dir.exists() and any(cfg.plots_dir.iterdir()) and not cfg.force:
        raise TldeployError(f"{cfg.plots_dir} already holds files; pass --force to overwrite them")


def run_bench(cfg: BenchConfig) -> BenchResult:
    from tldeploy.bench.report import write_plots, write_report

    _check_outputs(cfg)
    for p in (*cfg.artifacts, *((cfg.reference,) if cfg.reference else ())):
        if not Path(p).exists():
            raise TldeployError(f"{p} does not exist; pass artifacts from 'tldeploy build' / 'tldeploy export' and the run's model.pt")
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    ref, entries = _entries(cfg)
    base = ref.contract if ref else entries[0].contract
    x, labels, paths = _inputs(cfg, base)
    timed = ([ref] if ref and cfg.time_reference else []) + entries
    all_entries = ([ref] if ref else []) + entries
    try:
        for e in all_entries:
            e.runner.activate()
        rows, logits = _measure_outputs(cfg, ref, all_entries, x, labels)
        failures = [_gate_line(r.name, g) for r in rows.values() for g in r.gates if not g.passed]
        if cfg.ood_data is not None:
            ood, lines = _measure_ood(cfg, all_entries, base, logits)
            rows = {n: replace(r, ood=ood[n]) for n, r in rows.items()}
            failures += lines
        if cfg.robustness is not None:
            robust, lines = _measure_robustness(cfg, all_entries, base, paths, labels)
            rows = {n: replace(r, robustness=robust.get(n)) for n, r in rows.items()}
            failures += lines
        timings = _time_all(timed, x, cfg)
    finally:
        for e in all_entries:
            e.runner.deactivate()
    rows = {n: replace(r, latency=timings[n][0], skipped_batches=timings[n][1]) if n in timings else r for n, r in rows.items()}
    doc = _document(cfg, ref, all_entries, [rows[e.name] for e in all_entries], failures, x, labels, paths, time.perf_counter() - started)
    written = doc.to_json()
    validate_bench(written, "the new bench result")  # what compare will read must follow the schema
    write_json(cfg.output, written)
    plots = write_plots(doc, cfg.plots_dir)
    write_report(doc, cfg.report_path, plots)
    return BenchResult(doc, cfg.output, cfg.report_path, plots)


def _entries(cfg: BenchConfig) -> tuple[_BenchEntry | None, list[_BenchEntry]]:
    """The reference and the artifacts, named uniquely, refused unless they share classes and preprocessing."""
    ref = _describe(cfg.reference, "reference", cfg.device, cfg.threads) if cfg.reference else None
    entries = [_describe(p, "artifact", cfg.device, cfg.threads) for p in cfg.artifacts]
    names: dict[str, int] = {}
    for e in ([ref] if ref else []) + entries:  # the same file twice gets a second name
        names[e.name] = names.get(e.name, 0) + 1
        if names[e.name] > 1:
            e.name = f"{e.name}#{names[e.name]}"
    base = ref.contract if ref else entries[0].contract
    for e in entries:
        c = e.contract
        if c.preprocessing.raw != base.preprocessing.raw:
            raise ConfigError(f"{e.name} takes raw pixels (--input-format raw), for serving stacks that scale frames themselves; "
                              "bench the normalised export, and check the raw one with 'tldeploy bundle' and 'tldeploy verify'")
        if c.preprocessing != base.preprocessing or c.classes != base.classes:
            what = "classes" if c.classes != base.classes else "preprocessing"
            raise ConfigError(f"{e.name} has other {what} than {'the reference' if ref else entries[0].name}; "
                              "benchmark artifacts built from the same model")
    return ref, entries


def _inputs(cfg: BenchConfig, base) -> tuple[np.ndarray, np.ndarray | None, list[Path]]:
    """(inputs, labels or None, their files): --data, or random inputs to time on."""
    if cfg.data is not None:
        from tldeploy.data.folders import load_inputs

        x, labels, paths = load_inputs(cfg.data, base.classes, base.preprocessing, cfg.limit)
        log.info("%d %s from %s (%s)", len(x), base.preprocessing.media.noun, cfg.data, "labelled" if labels is not None else "unlabelled")
        return x, labels, paths
    from tldeploy.parity import parity_inputs

    log.info("no --data: timing on random inputs; no parity or accuracy")
    return parity_inputs(base.preprocessing, None, max(cfg.batch_sizes)), None, []


def _measure_robustness(cfg: BenchConfig, all_entries: list[_BenchEntry], base, paths: list[Path],
                        labels) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each entry's robustness row, and the gate failure lines."""
    from tldeploy.bench.robustness import bench_robustness

    return bench_robustness(all_entries, base.preprocessing, paths, labels, cfg.robustness, cfg.epsilons, cfg.disagreement,
                            cfg.max_robustness_flip)


def _measure_ood(cfg: BenchConfig, all_entries: list[_BenchEntry], base,
                 logits: dict[str, np.ndarray]) -> tuple[dict[str, OodRow], list[str]]:
    """Each entry's OOD row, and the gate failure lines."""
    from tldeploy.bench.ood import measure_ood
    from tldeploy.data.folders import load_inputs

    x_out = load_inputs(cfg.ood_data, [], base.preprocessing, cfg.limit, flag="--ood-data")[0]  # no folder is a class here
    rows, failures = measure_ood(all_entries, base, logits, x_out, cfg.max_ood_disagreement)
    for name, row in rows.items():
        log.info("%s: OOD AUROC %.4f, TPR %.2f%%, FPR %.2f%%%s", name, row.auroc, 100 * row.tpr, 100 * row.fpr_at_tpr,
                 f", decisions differ from the reference's on {100 * row.disagreement:.2f}%" if row.disagreement is not None else "")
    return rows, failures


def _measure_outputs(cfg: BenchConfig, ref: _BenchEntry | None, all_entries: list[_BenchEntry], x: np.ndarray,
                     labels) -> tuple[dict[str, BenchRow], dict[str, np.ndarray]]:
    """Each entry's row, with accuracy, parity against the reference and its gates (not yet
    timed), and each entry's logits on `x`."""
    from tldeploy._io import sha256_file
    from tldeploy.runtime.runners import run_batches

    ref_out = run_batches(ref.runner, x) if ref and cfg.data is not None else None
    rows: dict[str, BenchRow] = {}
    logits: dict[str, np.ndarray] = {}
    for e in all_entries:
        row = BenchRow(name=e.name, path=str(e.path), sha256=sha256_file(e.path), role=e.role, kind=e.kind, backend=e.backend,
                       device=e.device, precision=e.precision, build=build_summary(e.record))
        if cfg.data is not None:
            out = ref_out if e is ref else run_batches(e.runner, x)
            logits[e.name] = out["logits"]
            if labels is not None:
                row = replace(row, accuracy=float(np.mean(out["logits"].argmax(1) == labels)))
            if ref_out is not None and e is not ref:
                parity = compare_outputs(ref_out, out, labels=labels)
                row = replace(row, parity=parity, gates=tuple(cfg.gates.check(parity)))
                log.info("%s: top-1 agreement %.2f%%, cosine %.6f, logits max |diff| %.3g%s", e.name, parity.top1_agreement * 100,
                         parity.cosine, parity.logits_max_abs,
                         f", accuracy {parity.accuracy:.4f} ({parity.accuracy_delta * 100:+.2f} points)" if parity.accuracy is not None else "")
        rows[e.name] = row
    return rows, logits


def _document(cfg: BenchConfig, ref: _BenchEntry | None, all_entries: list[_BenchEntry], rows: list[BenchRow],
              failures: list[str], x: np.ndarray, labels, paths: list[Path], seconds: float) -> BenchDocument:
    """The bench.json document (format tldeploy.bench, bench.schema.json)."""
    from tldeploy._io import now
    from tldeploy.bench.environment import collect_environment

    return BenchDocument(
        run_id=uuid.uuid4().hex,  # entries of one run took turns and compare as pairs
        created=now(),
        seconds=round(seconds, 3),
        environment=collect_environment(cfg.threads),
        config={
            "batch_sizes": list(cfg.batch_sizes), "warmup": cfg.latency.warmup, "warmup_s": cfg.latency.warmup_s,
            "iters": cfg.latency.iters, "duration_s": cfg.latency.duration_s, "rounds": cfg.latency.rounds,
            "settle_s": cfg.latency.settle_s,
            "threads": cfg.threads, "device": cfg.device,
            "gates": {**cfg.gates.to_dict(*BENCH_GATES), "max_ood_disagreement": cfg.max_ood_disagreement,
                      "max_robustness_flip": cfg.max_robustness_flip},
            "robustness": None if cfg.robustness is None else {
                "suite": cfg.robustness, "epsilons": list(cfg.epsilons), "disagreement": cfg.disagreement,
                "budget_unit": _budget_unit(all_entries[0].contract.preprocessing)},
        },
        data=None if cfg.data is None else {
            "path": str(cfg.data), "images": len(x), "labelled": labels is not None, "sha256": _paths_hash(paths),
        },
        reference=None if ref is None else {"name": ref.name, "path": str(ref.path)},
        ood_data={"path": str(cfg.ood_data)} if cfg.ood_data is not None else None,
        rows=tuple(rows),
        failures=tuple(failures),
    )


def _budget_unit(prep) -> str:
    from tldeploy.bench.robustness.attacks import Domain

    return Domain.of(prep).unit_text


def _time_all(entries: list[_BenchEntry], x: np.ndarray,
              cfg: BenchConfig) -> dict[str, tuple[tuple[LatencyStats, ...], tuple[dict[str, Any], ...]]]:
    """Each entry's latency per batch size, and the batch sizes it could not be timed at (why)."""
    from tqdm.auto import tqdm

    latency: dict[str, list[LatencyStats]] = {e.name: [] for e in entries}
    skipped: dict[str, list[dict[str, Any]]] = {e.name: [] for e in entries}
    for b in cfg.batch_sizes:
        items = []
        for e in entries:
            fixed = next(iter(e.runner.input_spec().values())).shape[0]
            if fixed is not None and fixed != b:
                skipped[e.name].append({"batch": b, "why": f"the artifact's batch is fixed at {fixed}"})
                continue
            items.append((e, _feed(e.runner, x, b)))
        if not items:
            continue
        total = cfg.latency.iters * len(items) if cfg.latency.duration_s is None else None
        with tqdm(total=total, desc=f"latency, batch {b}", unit="it", leave=False, disable=cfg.quiet, dynamic_ncols=True) as bar:
            stats = measure_interleaved([(e.runner, f) for e, f in items], cfg.latency, progress=bar.update)
        for (e, _), s in zip(items, stats, strict=True):
            latency[e.name].append(s)
            log.info("%s, batch %d: p50 %.3f ms, p90 %.3f ms, %.1f images/s", e.name, b, s.p50, s.p90, s.throughput)
    return {n: (tuple(latency[n]), tuple(skipped[n])) for n in latency}


def _gate_line(name: str, g: ToleranceResult) -> str:
    """A failed gate as bench has always printed and written it, naming its option."""
    if g.name == "max_top1_drop":
        return f"{name}: top-1 accuracy dropped {g.value:.2f} points, more than --max-top1-drop {g.limit} (by {g.value - g.limit:.2f})"
    flag = "--" + g.name.replace("_", "-")
    return f"{name}: {g.name.replace('_', ' ').removeprefix('min ')} {g.value:.10g} is below {flag} {g.limit} (by {g.limit - g.value:.3g})"


def _paths_hash(paths: list[Path]) -> str:
    """What images were used: a hash over their file names and contents, in order."""
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()
