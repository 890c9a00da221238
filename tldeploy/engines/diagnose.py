"""`tldeploy diagnose`: which layer breaks at INT8 or FP16, in PyTorch terms, and a plan that fixes it.

    tldeploy diagnose digits.onnx --precision int8 --calib-data data/digits/train --data data/digits/val
    tldeploy diagnose digits.onnx --precision fp16 --data data/digits/val

INT8: everything is quantized once (calibration ranges cached as for `build`), then each unit is
measured twice against the float model on the validation images: with only it left in float, and
with only it quantized (`sensitivity.sweep_int8`). FP16: each unit alone runs with FP16 storage,
and its own output is compared with float32 (range, inf/NaN, relative error) as well as the task;
a LayerNormalization computes each of its steps in FP16, as TensorRT's FP16 normalization does, so
squared deviations that overflow inside it (input and output in range) show (`mixed.fp16_emulated`).
Units are ranked by score (nats of KL: the error a unit causes alone plus the error its float
copy removes) and named by ONNX node and module path. The plan keeps the fewest top-ranked units
in higher precision that reach the acceptance bar, measured on all the validation images.

Writes REPORT_DIR/diagnose.json (format `tldeploy.diagnose`, version 1; see the README),
diagnose.md, sensitivity.png (score per unit in graph order) and plan.json (`plan.py`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tldeploy.engines.capabilities import BACKENDS as CAPABILITY_BACKENDS
from tldeploy.engines.capabilities import PRECISIONS as CAPABILITY_PRECISIONS
from tldeploy.engines.capabilities import PrecisionTarget
from tldeploy.errors import ConfigError

log = logging.getLogger(__name__)

DIAGNOSE_FORMAT = "tldeploy.diagnose"
DIAGNOSE_VERSION = 1
PRECISIONS = tuple(p for p in CAPABILITY_PRECISIONS if p != "fp32")  # what can lose accuracy
# Whose numerics: ONNX Runtime's kernels, or TensorRT's Q/DQ evaluated as written; never "auto",
# a diagnosis is of one named target.
BACKENDS = tuple(sorted(CAPABILITY_BACKENDS))


@dataclass(frozen=True)
class DiagnoseConfig:
    onnx: Path
    target: PrecisionTarget  # precision and backend whose numerics are measured (all on this CPU: the device is not used)
    data: Path  # validation images: what the ranking and the plan's promise are measured on
    calib_data: Path | None = None  # int8: images to calibrate on (the training folder)
    output: Path | None = None  # report folder; default beside the ONNX: NAME.diagnose-PRECISION/
    calib_samples: int = 256
    calib_method: str = "minmax"
    reduce_range: bool | None = None  # ORT INT8: None = the build's default for this CPU
    rank_images: int = 128  # validation images the per-unit sweep runs on (the plan is checked on all)
    min_agreement: float = 0.99
    max_kl: float | None = None
    max_units: int = 16
    force: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.target.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.target.backend!r}")
        self.target.check_calib_data(self.calib_data)
        if self.rank_images < 8:
            raise ConfigError(f"--rank-images must be at least 8, got {self.rank_images}")
        if not 0 < self.min_agreement <= 1:
            raise ConfigError(f"--min-agreement must be in (0, 1], got {self.min_agreement}")

    @property
    def precision(self) -> str:
        return self.target.precision

    @property
    def report_dir(self) -> Path:
        if self.output is not None:
            return Path(self.output)
        onnx = Path(self.onnx)
        stem = onnx.name[: -len(".onnx")] if onnx.name.endswith(".onnx") else onnx.stem
        return onnx.with_name(f"{stem}.diagnose-{self.precision}")


@dataclass
class DiagnoseResult:
    report_dir: Path
    document: dict[str, Any]
    plan_path: Path
    seconds: float

    @property
    def ranking(self) -> list[dict[str, Any]]:
        return sorted(self.document["units"], key=lambda u: u["rank"])


def diagnose(cfg: DiagnoseConfig) -> DiagnoseResult:
    from tldeploy._io import atomic_dir, check_writable, now, sha256_file
    from tldeploy.contract import read_contract
    from tldeploy.engines.calibration import ImageSet
    from tldeploy.runtime import host

    t0 = time.perf_counter()
    onnx_path = Path(cfg.onnx)
    contract = read_contract(onnx_path)
    if contract.attention == "plugin":
        raise ConfigError(f"{onnx_path} has ChannelAttention plugin nodes, which ONNX Runtime cannot run; diagnose the standard export")
    if contract.precision != "fp32":
        raise ConfigError(f"{onnx_path} is a {contract.precision} export; diagnose the FP32 export")
    out_dir = cfg.report_dir
    check_writable(out_dir, force=cfg.force)
    val = ImageSet.from_folder(cfg.data, contract.preprocessing, contract.classes, flag="--data")
    onnx_sha = sha256_file(onnx_path)
    body, plan = (_diagnose_int8 if cfg.precision == "int8" else _diagnose_fp16)(cfg, onnx_path, contract, val)
    measured_on = {"source": val.source, "n": len(val.images), "sha256": val.sha256, "ranking_images": min(cfg.rank_images, len(val.images))}
    doc: dict[str, Any] = {
        "format": DIAGNOSE_FORMAT, "format_version": DIAGNOSE_VERSION, "created": now(),
        "onnx": str(onnx_path), "onnx_sha256": onnx_sha, "precision": cfg.precision, "backend": cfg.target.backend,
        "cpu": host.cpu_info(), "tools": host.tool_versions(), "images": measured_on, **body,
    }
    from tldeploy.engines.plan import PlanUnit, PrecisionPlan

    section = body["plan"]
    quant = body.get("quantization", {})
    units = tuple(PlanUnit.from_json(u, f"the plan for {onnx_path}") for u in plan)
    plan_obj = PrecisionPlan(precision=cfg.precision, onnx_sha256=onnx_sha, units=units, measured_on=measured_on,
                             promised=section["metrics"], acceptance=section["acceptance"], flavour=quant.get("flavour"),
                             reduce_range=quant.get("reduce_range"),
                             extra={"passed": section["passed"], "onnx": str(onnx_path), "created": doc["created"]})
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    with atomic_dir(out_dir, force=cfg.force) as tmp:
        from tldeploy._io import write_json, write_text

        write_json(tmp / "diagnose.json", doc)
        plan_obj.save(tmp / "plan.json")
        write_text(tmp / "diagnose.md", render_markdown(doc))
        plot_sensitivity(doc, tmp / "sensitivity.png")
    return DiagnoseResult(out_dir, doc, out_dir / "plan.json", time.perf_counter() - t0)


def _effect_rows(ranked, units_in_order) -> list[dict[str, Any]]:
    position = {e.unit.name: i + 1 for i, e in enumerate(ranked)}
    by_name = {e.unit.name: e for e in ranked}
    return [{**by_name[u.name].to_dict(), "rank": position[u.name]} for u in units_in_order]


def _plan_units(units, effects) -> list[dict[str, Any]]:
    by_name = {e.unit.name: e.to_dict() for e in effects}
    keys = ("name", "nodes", "op", "module", "short", "index", "score", "alone_low", "alone_float", "node")
    return [{k: by_name[u.name].get(k) for k in keys if by_name[u.name].get(k) is not None} for u in units]


def _accuracy(labels, logits) -> float | None:
    import numpy as np

    return None if labels is None else float(np.mean(logits.argmax(1) == labels))


class _Scored:
    """`ev.metrics` of the models `make(units)` builds, keeping each mix's logits so the chosen
    one's accuracy needs no second run."""

    def __init__(self, ev, make) -> None:
        self.ev, self.make, self.logits = ev, make, {}

    def __call__(self, units):
        from tldeploy.engines.sensitivity import task_metrics

        logits = self.ev.outputs(self.make(units), ["logits"])["logits"]
        self.logits[tuple(u.name for u in units)] = logits
        return task_metrics(self.ev.reference, logits)


def _plan_section(search: tuple, scored: _Scored, accept, ranked, labels) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the report's `plan`, the plan file's units) from what `choose` returned."""
    chosen, m, history, passed = search
    metrics = {**m.to_dict(), "accuracy": _accuracy(labels, scored.logits[tuple(u.name for u in chosen)])}
    section = {"units": [u.name for u in chosen], "passed": passed, "metrics": metrics,
               "search": [{"order": o, "float_units": k, **h.to_dict()} for o, k, h in history], "acceptance": accept.to_dict()}
    return section, _plan_units(chosen, ranked)


def _diagnose_int8(cfg: DiagnoseConfig, onnx_path: Path, contract, val) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from tldeploy.engines import artifacts
    from tldeploy.engines.calibration import CalibrationSet, spread
    from tldeploy.engines.quant_config import Int8Options, QatRecord
    from tldeploy.engines.quantize import rank_int8
    from tldeploy.engines.quantizer import Quantizer
    from tldeploy.engines.sensitivity import Acceptance, choose
    from tldeploy.engines.units import float_regions
    from tldeploy.parity import Tolerance

    qat = QatRecord.for_int8(contract, str(onnx_path), cfg.target.backend, cfg.reduce_range, cfg.calib_data)
    # A quantization-aware trained export is diagnosed with its trained ranges, as it builds.
    calib = CalibrationSet.from_folder(cfg.calib_data, contract.preprocessing, cfg.calib_samples) if qat is None and cfg.calib_data else None
    qcfg = (qat.quant_config() if qat is not None else
            Int8Options(calib_method=cfg.calib_method, calib_samples=cfg.calib_samples, reduce_range=cfg.reduce_range)
            .quant_config(cfg.target.backend))
    accept = Acceptance(Tolerance(min_top1_agreement=cfg.min_agreement, max_kl=cfg.max_kl), f"{len(val.images)} images from {val.source}")
    with Quantizer(onnx_path, calib, qcfg, artifacts.cache_dir() / "calibration") as q:
        log.info("ranking %d quantized units on %d images (%s)", len(q.units()), min(cfg.rank_images, len(val.images)),
                 "Q/DQ evaluated as written" if qcfg.evaluated_as_written else "ONNX Runtime CPU kernels")
        full_small, ranked = rank_int8(q, spread(val.images, cfg.rank_images))
        ev = q.evaluator(val.images)
        full = ev.metrics(q.full())
        log.info("all quantized: top-1 agreement %.2f%%, KL %.2e on %d images", 100 * full.top1_agreement, full.kl, full.n)
        order = [e.unit for e in ranked]
        orders = {"ranked": order, "graph order": sorted(order, key=lambda u: u.index)}
        scored = _Scored(ev, lambda us: q.mix([n for u in us for n in u.nodes]))
        search = choose(orders, scored, accept, cfg.max_units, regions=lambda us: float_regions(q.float_model, us))
        units_in_order = sorted(order, key=lambda u: u.index)
    section, plan = _plan_section(search, scored, accept, ranked, val.labels)
    return {
        "quantization": {"flavour": qcfg.flavour, "reduce_range": qcfg.reduce_range, "calib_method": qcfg.options.calib_method,
                         "calibration": {"source": calib.source, "images": len(calib.images), "sha256": calib.sha256} if calib else None,
                         "qat": qat is not None,
                         "evaluated": "Q/DQ graph as written" if qcfg.evaluated_as_written else "onnxruntime CPU kernels"},
        "reference": {"accuracy": _accuracy(val.labels, ev.reference)},
        "all_low": {**full.to_dict(), "ranking_images": full_small.to_dict()},
        "units": _effect_rows(ranked, units_in_order),
        "plan": section,
    }, plan


def _diagnose_fp16(cfg: DiagnoseConfig, onnx_path: Path, contract, val) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from tldeploy.contract import load_onnx
    from tldeploy.engines.calibration import spread
    from tldeploy.engines.fp16 import fp16_exclusions
    from tldeploy.engines.mixed import fp16_emulated
    from tldeploy.engines.sensitivity import Acceptance, Evaluator, choose, rank, sweep_fp16
    from tldeploy.engines.units import float_tensors, fp16_units
    from tldeploy.parity import Tolerance

    model = load_onnx(onnx_path)
    floats = float_tensors(model)
    units = fp16_units(model, fp16_exclusions(model, contract), floats)
    accept = Acceptance(Tolerance(min_top1_agreement=cfg.min_agreement, max_kl=cfg.max_kl), f"{len(val.images)} images from {val.source}")
    small = Evaluator(spread(val.images, cfg.rank_images), contract.input_name, model, as_written=False)
    log.info("ranking %d FP16 units on %d images (FP16 storage, float32 arithmetic)", len(units), len(small.images))
    ranked = rank(sweep_fp16(small, model, units, floats))
    ev = Evaluator(val.images, contract.input_name, model, as_written=False)
    every = [n for u in units for n in u.nodes]
    full = ev.metrics(fp16_emulated(model, every, floats=floats))
    log.info("all FP16: top-1 agreement %.2f%%, KL %.2e on %d images", 100 * full.top1_agreement, full.kl, full.n)

    def all_but(kept):
        skip = {n for u in kept for n in u.nodes}
        return fp16_emulated(model, [n for n in every if n not in skip], floats=floats)

    scored = _Scored(ev, all_but)
    search = choose({"ranked": [e.unit for e in ranked]}, scored, accept, cfg.max_units)
    section, plan = _plan_section(search, scored, accept, ranked, val.labels)
    return {
        "fp16": {"evaluated": "FP16 storage of each unit's inputs, weights and outputs, float32 arithmetic (ONNX Runtime CPU); "
                              "LayerNormalization rounded to FP16 after each step, as TensorRT's FP16 normalization"},
        "reference": {"accuracy": _accuracy(val.labels, ev.reference)},
        "all_low": full.to_dict(),
        "units": _effect_rows(ranked, units),
        "plan": section,
    }, plan


def render_markdown(doc: dict[str, Any]) -> str:
    high = "float" if doc["precision"] == "int8" else "FP32"
    low = doc["precision"].upper()
    ranked = sorted(doc["units"], key=lambda u: u["rank"])
    plan = doc["plan"]
    pm = plan["metrics"]
    lines = [
        f"# {low} diagnosis of {Path(doc['onnx']).name}",
        "",
        f"{doc['images']['n']} images from `{doc['images']['source']}` (ranking on {doc['images']['ranking_images']}); "
        f"CPU: {doc['cpu']['name']} ({', '.join(doc['cpu']['features']) or 'no listed features'}).",
        "",
        f"- all {low}: top-1 agreement {doc['all_low']['top1_agreement']:.2%}, KL {doc['all_low']['kl']:.2e}, cosine {doc['all_low']['cosine']:.4f}",
        f"- plan ({len(plan['units'])} unit(s) in {high}): top-1 agreement {pm['top1_agreement']:.2%}, KL {pm['kl']:.2e}"
        + (f", accuracy {pm['accuracy']:.4f} (reference {doc['reference']['accuracy']:.4f})" if pm.get("accuracy") is not None else "")
        + ("" if plan["passed"] else f" — short of the bar ({plan['acceptance']['min_top1_agreement']:.2%})"),
        "",
        f"| rank | module | op | node | score | {low} alone: agreement / KL | rest {low}, it {high}: agreement / KL |"
        + (" FP32 absmax | rel. error | FP16 internal peak |" if doc["precision"] == "fp16" else ""),
        "|---:|---|---|---|---:|---|---|" + ("---:|---:|---:|" if doc["precision"] == "fp16" else ""),
    ]
    for u in ranked[:25]:
        af = u.get("alone_float")
        cells = [str(u["rank"]), f"`{u['short'] or '(no module)'}`", u["op"], f"`{u['name']}`", f"{u['score']:.2e}",
                 f"{u['alone_low']['top1_agreement']:.2%} / {u['alone_low']['kl']:.2e}",
                 f"{af['top1_agreement']:.2%} / {af['kl']:.2e}" if af else "—"]
        if "node" in u:
            nd = u["node"]
            peak = nd.get("internal_absmax")  # a LayerNormalization's squared deviations; none for other ops
            cells += [f"{nd['output_absmax']:.3g}" + (" (overflows)" if nd["overflows_fp16"] else ""), f"{nd['relative_error']:.2e}",
                      "—" if peak is None else f"{peak:.3g}" + (" (overflows)" if nd.get("internal_overflow") else "")]
        lines.append("| " + " | ".join(cells) + " |")
    if len(ranked) > 25:
        lines.append(f"\n{len(ranked) - 25} more unit(s) in diagnose.json.")
    lines += ["", f"Apply the plan: `tldeploy build {Path(doc['onnx']).name} --precision {doc['precision']} --precision-plan plan.json`", ""]
    return "\n".join(lines)


def plot_sensitivity(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tldeploy._io import save_png

    units = doc["units"]
    kept = set(doc["plan"]["units"])
    scores = [max(u["score"], 1e-9) for u in units]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(units) + 2), 4.0))
    ax.bar(range(len(units)), scores, color=["tab:red" if u["name"] in kept else "tab:blue" for u in units])
    ax.set_yscale("log")
    ax.set_xticks(range(len(units)))
    ax.set_xticklabels([u["short"] or u["name"] for u in units], rotation=90, fontsize=6)
    ax.set_ylabel("score (nats of KL)")
    ax.set_title(f"{doc['precision'].upper()} sensitivity per unit, graph order (red: kept in higher precision by the plan)", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
