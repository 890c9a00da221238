"""Which units lose accuracy at lower precision, measured where it matters: on the task.

Units (`units.py`) are what a builder keeps in higher precision as one piece; the mixed models
that put some of them at another precision are written by `mixed.py`. `Evaluator` runs such
models on fixed inputs and compares their logits with the float model's: top-1 agreement, KL
divergence of the probabilities, logit cosine (`TaskMetrics`). The sweeps measure each unit's
effect; `choose` searches the fewest units to keep in float that pass an `Acceptance`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import softmax

from tldeploy.engines.mixed import INTERNAL, STEPWISE, fp16_emulated, mixed_int8
from tldeploy.engines.units import Unit
from tldeploy.parity import Tolerance

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
KL_NONFINITE = float(np.log(1e12))  # a row whose output is inf/NaN counts as the worst KL the clip allows


@dataclass(frozen=True)
class TaskMetrics:
    n: int
    top1_agreement: float
    kl: float  # mean KL(float || test) of the softmax probabilities, nats
    cosine: float  # mean cosine similarity of the logits
    nonfinite: int  # rows whose logits hold inf or NaN

    @property
    def kl_divergence(self) -> float:
        """`kl` under ParityReport's name, which a Tolerance reads."""
        return self.kl

    def to_dict(self) -> dict:
        return {"n": self.n, "top1_agreement": self.top1_agreement, "kl": self.kl, "cosine": self.cosine, "nonfinite_rows": self.nonfinite}


def task_metrics(reference: np.ndarray, logits: np.ndarray) -> TaskMetrics:
    """Metrics of `logits` against the float model's `reference` logits (same inputs)."""
    ref = reference.astype(np.float64)
    out = logits.astype(np.float64)
    bad = ~np.all(np.isfinite(out), axis=1)
    safe = np.where(bad[:, None], 0.0, out)
    p, q = softmax(ref, axis=1), softmax(safe, axis=1)
    p, q = np.clip(p, 1e-12, 1.0), np.clip(q, 1e-12, 1.0)
    kl_rows = np.where(bad, KL_NONFINITE, np.sum(p * (np.log(p) - np.log(q)), axis=1))
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(safe, axis=1)
    cos = np.where(bad, 0.0, np.sum(ref * safe, axis=1) / np.maximum(norms, 1e-30))
    agree = (ref.argmax(1) == safe.argmax(1)) & ~bad
    return TaskMetrics(len(ref), float(agree.mean()), float(kl_rows.mean()), float(cos.mean()), int(bad.sum()))


# The limits an acceptance holds, as plans and build records have always written them.
ACCEPTANCE_LIMITS = ("min_top1_agreement", "max_kl")


@dataclass(frozen=True)
class Acceptance:
    """When a mixed-precision model is good enough: within `tolerance` (top-1 agreement and, when
    set, mean KL) on the images named by `images`, with no inf/NaN output row. `TaskMetrics` counts
    such rows apart (as disagreeing, at the worst KL) rather than letting them make its means NaN,
    so a few of them among many images could otherwise pass."""

    tolerance: Tolerance
    images: str  # what the check images are, for logs and records

    def __post_init__(self) -> None:
        if self.tolerance.min_top1_agreement is None or set(self.tolerance.limits) - set(ACCEPTANCE_LIMITS):
            raise ValueError(f"an acceptance bounds top-1 agreement and, optionally, KL; got {self.tolerance}")

    def accepts(self, m: TaskMetrics) -> bool:
        return m.nonfinite == 0 and all(r.passed for r in self.tolerance.check(m))

    def describe(self) -> str:
        t = self.tolerance
        kl = f" and KL <= {t.max_kl:g}" if t.max_kl is not None else ""
        return f"top-1 agreement >= {t.min_top1_agreement:.2%}{kl} on {self.images}"

    def to_dict(self) -> dict:
        return {**self.tolerance.to_dict(*ACCEPTANCE_LIMITS), "images": self.images}


# ---------------------------------------------------------------- evaluation


class Evaluator:
    """Runs models on fixed inputs with ONNX Runtime (CPU) and scores their logits against the
    float model's.

    `as_written` turns graph optimisations off, so a Q/DQ graph is evaluated as its arithmetic
    reads: what an engine computing exactly in int8/int32 produces (TensorRT, a VNNI CPU), rather
    than what this CPU's kernels give (an AVX2 CPU's kernels saturate with 8-bit weights)."""

    def __init__(self, images: np.ndarray, input_name: str, float_model, *, as_written: bool, batch: int = 32) -> None:
        self.images = images
        self.input_name = input_name
        self.as_written = as_written
        self.batch = batch
        self.reference = self.outputs(float_model, ["logits"], optimise=True)["logits"]

    def outputs(self, model, names: list[str], optimise: bool | None = None, fold: Callable | None = None) -> dict:
        """`names` over all inputs; with `fold(acc, batch_outputs)`, the batches are reduced
        instead of kept (for probes too large to hold)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if not (optimise if optimise is not None else not self.as_written):
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        parts: dict[str, list] = {k: [] for k in names}
        acc = None
        for i in range(0, len(self.images), self.batch):
            res = dict(zip(names, sess.run(names, {self.input_name: self.images[i : i + self.batch]}), strict=True))
            if fold is not None:
                acc = fold(acc, res)
                res = {"logits": res["logits"]}
            for k, v in res.items():
                parts[k].append(v)
        merged = {k: np.concatenate(v) for k, v in parts.items() if v}
        if fold is not None:
            merged["fold"] = acc
        return merged

    def metrics(self, model, optimise: bool | None = None) -> TaskMetrics:
        return task_metrics(self.reference, self.outputs(model, ["logits"], optimise)["logits"])


@dataclass(frozen=True)
class UnitEffect:
    """One unit's measured effect: the rest at low precision with it in float (`alone_float`),
    and it alone at low precision (`alone_low`); FP16 adds node-level numbers."""

    unit: Unit
    alone_float: TaskMetrics | None
    alone_low: TaskMetrics
    score: float  # nats: KL it causes alone + KL removed by keeping it in float
    node: dict | None = None  # FP16: output absmax in float32, overflow, non-finite share, relative error, internal peak

    def to_dict(self) -> dict:
        return {**self.unit.to_dict(), "score": self.score,
                "alone_float": self.alone_float.to_dict() if self.alone_float else None,
                "alone_low": self.alone_low.to_dict(), **({"node": self.node} if self.node else {})}


def rank(effects: list[UnitEffect]) -> list[UnitEffect]:
    """Most sensitive first: the most rows it alone makes inf/NaN; among those equal, a unit whose
    own output or internal steps leave FP16's range (the first layer that breaks is where to look:
    everything after it inherits inf/NaN, and their scores differ only in the finite rows' KL);
    then the score, then graph order."""

    def overflows(e: UnitEffect) -> bool:
        return bool((e.node or {}).get("overflows_fp16") or (e.node or {}).get("internal_overflow"))

    return sorted(effects, key=lambda e: (-e.alone_low.nonfinite, not overflows(e), -round(e.score, 9), e.unit.index))


def sweep_int8(ev: Evaluator, float_model, qdq_model, units: list[Unit], full: TaskMetrics,
               floats: frozenset[str] | set[str] = frozenset()) -> list[UnitEffect]:
    """Each unit's effect against `full`, the metrics of `units` quantized with `floats` (nodes a
    preset keeps in float) and everything else in float."""
    names = {n for u in units for n in u.nodes} - floats
    effects = []
    for u in units:
        alone_float = ev.metrics(mixed_int8(float_model, qdq_model, names - set(u.nodes)))
        alone_low = ev.metrics(mixed_int8(float_model, qdq_model, set(u.nodes) - floats))
        effects.append(UnitEffect(u, alone_float, alone_low, alone_low.kl + max(0.0, full.kl - alone_float.kl)))
    return effects


def sweep_fp16(ev: Evaluator, float_model, units: list[Unit], floats: set[str]) -> list[UnitEffect]:
    """Each unit alone in FP16 (`fp16_emulated`), with its last node's output measured against
    float32; for a node emulated step by step (a LayerNormalization), also its largest intermediate
    before rounding (`internal_absmax`: the squared deviations), which overflows FP16 inside the
    layer while its input and output fit (`internal_overflow`). Other nodes have no internal record
    (`internal_absmax` None)."""
    by_name = {n.name: n for n in float_model.graph.node}
    effects = []
    for u in units:
        last = by_name[u.nodes[-1]]
        outputs = [o for o in last.output if o in floats]
        internal = [last.output[0] + INTERNAL] if last.op_type in STEPWISE else []
        model = fp16_emulated(float_model, u.nodes, probe=u.nodes[-1], floats=floats)
        names = ["logits", *(x for o in outputs for x in (o, o + "__ref")), *internal]

        def fold(acc, res, outputs=outputs, internal=internal):
            acc = acc or {"absmax": 0.0, "nonfinite": 0, "size": 0, "err2": 0.0, "ref2": 0.0, "internal": 0.0}
            for t in internal:  # float32 squares of FP16-rounded deviations: finite, or NaN where X overflowed
                v = res[t]
                acc["internal"] = max(acc["internal"], float(np.abs(v[np.isfinite(v)]).max(initial=0.0)))
            for o in outputs:
                low, ref = res[o].astype(np.float64), res[o + "__ref"].astype(np.float64)
                fin = np.isfinite(low) & np.isfinite(ref)
                acc["absmax"] = max(acc["absmax"], float(np.abs(ref[np.isfinite(ref)]).max(initial=0.0)))
                acc["nonfinite"] += int((~np.isfinite(low)).sum())
                acc["size"] += low.size
                acc["err2"] += float(np.sum((low[fin] - ref[fin]) ** 2))
                acc["ref2"] += float(np.sum(ref[fin] ** 2))
            return acc

        res = ev.outputs(model, names, fold=fold)
        st = res["fold"]
        m = task_metrics(ev.reference, res["logits"])
        node = {"output_absmax": st["absmax"], "overflows_fp16": st["absmax"] > FP16_MAX,
                "nonfinite_share": st["nonfinite"] / max(1, st["size"]),
                "relative_error": (st["err2"] / st["ref2"]) ** 0.5 if st["ref2"] > 0 else 0.0,
                "internal_absmax": st["internal"] if internal else None, "internal_overflow": bool(internal) and st["internal"] > FP16_MAX}
        effects.append(UnitEffect(u, None, m, m.kl, node))
    return effects


def choose(orders: dict[str, list[Unit]], metrics_for: Callable[[list[Unit]], TaskMetrics], accept: Acceptance,
           limit: int, regions: Callable[[list[Unit]], int] | None = None) -> tuple[list[Unit], TaskMetrics, list[tuple[str, int, TaskMetrics]], bool]:
    """Units to keep in float, taken from the front of one of `orders` (e.g. the ranking and graph
    order), that `accept` passes: (units, their metrics, the search as (order, count, metrics),
    whether it passed). Counts grow together in every order. Among passes, the fewest `regions`
    (float/INT8 boundaries cost latency), then the fewest units: after a pass in several pieces,
    the orders that have not passed go on looking for one in fewer pieces. Without a pass, the mix
    with the lowest KL: on a few hundred images top-1 agreement moves in steps of one image, while
    KL tracks the error continuously (digits: the lowest held-out KL picked the mix with the best
    validation agreement for 7- and 8-bit weights)."""
    history: list[tuple[str, int, TaskMetrics]] = []
    best: tuple[list[Unit], TaskMetrics] | None = None
    passed: tuple[int, int, list[Unit], TaskMetrics] | None = None  # (regions, units, ...)
    done: set[str] = set()
    tried: dict[tuple[str, ...], TaskMetrics] = {}
    longest = max((len(o) for o in orders.values()), default=0)
    for k in range(0, min(limit, longest) + 1):
        for name, order in orders.items():
            if name in done:
                continue
            units = order[:k]
            key = tuple(sorted(u.name for u in units))
            if key in tried:
                continue
            m = tried[key] = metrics_for(units)
            history.append((name, k, m))
            log.info("  %d unit(s) kept in float (%s): top-1 agreement %.2f%%, KL %.2e on %d images", k, name, 100 * m.top1_agreement, m.kl, m.n)
            if accept.accepts(m):
                done.add(name)
                pieces = regions(units) if regions and units else min(1, len(units))
                if passed is None or (pieces, len(units)) < passed[:2]:
                    passed = (pieces, len(units), units, m)
                if pieces <= 1:
                    return units, m, history, True
            if best is None or (-m.nonfinite, -m.kl) > (-best[1].nonfinite, -best[1].kl):
                best = (units, m)
        if passed is not None and len(done) == len(orders):
            break
    if passed is not None:
        return passed[2], passed[3], history, True
    assert best is not None
    return best[0], best[1], history, False
