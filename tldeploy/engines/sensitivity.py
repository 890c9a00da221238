"""Which layers lose accuracy at lower precision, measured where it matters: on the task.

A *unit* is what a builder keeps in higher precision as one piece: a Conv, Gemm or MatMul with
the Relu/Clip that alone consumes its output (runtimes fuse the pair), or any other compute node
(Add, Mul, pooling, a normalisation). Units are named by ONNX node and PyTorch module path.

- INT8: `mixed_int8(float, qdq, units)` is the float graph with the Q/DQ of those units' inputs
  (activations and weights) copied in from the fully quantized graph, so one calibration serves
  every mix. Activations keep their float producers (a Clip that ONNX Runtime folded into a
  quantization range stays a Clip), so any unit can be float or quantized independently.
- FP16: `fp16_emulated(float, nodes)` rounds those nodes' inputs, weights and outputs to FP16
  (Cast pairs) and computes in float32: FP16 storage with FP32 arithmetic, which is what ONNX
  Runtime's CPU provider does with an FP16 graph and what TensorRT's FP16 convolutions and matrix
  products do (FP32 accumulation). Values beyond FP16's range become inf, as on the device.

`Evaluator` runs such models on fixed inputs and compares their logits with the float model's:
top-1 agreement, KL divergence of the probabilities, logit cosine (`TaskMetrics`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from tldeploy.scopes import module_paths, short_names

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
KL_NONFINITE = float(np.log(1e12))  # a row whose output is inf/NaN counts as the worst KL the clip allows
LEADS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FUSED_ACTIVATIONS = ("Relu", "Clip")
# Nodes that only move or index data: exact in any precision, never a unit of their own.
DATA_MOVEMENT = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Shape", "Gather", "Slice", "Concat",
                 "Identity", "Cast", "Constant", "ArgMax", "ArgMin", "Expand", "Split", "Tile", "Pad", "Size")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Unit:
    name: str  # the unit's first node
    nodes: tuple[str, ...]
    op: str  # e.g. "Conv+Clip"
    module: str  # PyTorch module path relative to the adapted model ("" when none was recorded)
    short: str  # the module path without the backbone's common prefix ("blocks.1.0.conv_pw")
    index: int  # position of the first node in graph order

    def to_dict(self) -> dict:
        return {"name": self.name, "nodes": list(self.nodes), "op": self.op, "module": self.module, "short": self.short, "index": self.index}

    @classmethod
    def from_dict(cls, d: dict) -> Unit:
        """A unit as `to_dict` (or a hand-edited plan) writes it; only `nodes` is required."""
        return cls(str(d.get("name", d["nodes"][0])), tuple(d["nodes"]), str(d.get("op", "")), str(d.get("module", "")),
                   str(d.get("short", d.get("module", ""))), int(d.get("index", -1)))


@dataclass(frozen=True)
class TaskMetrics:
    n: int
    top1_agreement: float
    kl: float  # mean KL(float || test) of the softmax probabilities, nats
    cosine: float  # mean cosine similarity of the logits
    nonfinite: int  # rows whose logits hold inf or NaN

    def to_dict(self) -> dict:
        return {"n": self.n, "top1_agreement": self.top1_agreement, "kl": self.kl, "cosine": self.cosine, "nonfinite_rows": self.nonfinite}


def task_metrics(reference: np.ndarray, logits: np.ndarray) -> TaskMetrics:
    """Metrics of `logits` against the float model's `reference` logits (same inputs)."""
    ref = reference.astype(np.float64)
    out = logits.astype(np.float64)
    bad = ~np.all(np.isfinite(out), axis=1)
    safe = np.where(bad[:, None], 0.0, out)
    p, q = _softmax(ref), _softmax(safe)
    p, q = np.clip(p, 1e-12, 1.0), np.clip(q, 1e-12, 1.0)
    kl_rows = np.where(bad, KL_NONFINITE, np.sum(p * (np.log(p) - np.log(q)), axis=1))
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(safe, axis=1)
    cos = np.where(bad, 0.0, np.sum(ref * safe, axis=1) / np.maximum(norms, 1e-30))
    agree = (ref.argmax(1) == safe.argmax(1)) & ~bad
    return TaskMetrics(len(ref), float(agree.mean()), float(kl_rows.mean()), float(cos.mean()), int(bad.sum()))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Acceptance:
    """When a mixed-precision model is good enough: agreement at least `min_agreement` and, when
    set, mean KL at most `max_kl`, on the images named by `images`."""

    min_agreement: float
    max_kl: float | None
    images: str  # what the check images are, for logs and records

    def accepts(self, m: TaskMetrics) -> bool:
        return m.nonfinite == 0 and m.top1_agreement >= self.min_agreement and (self.max_kl is None or m.kl <= self.max_kl)

    def describe(self) -> str:
        kl = f" and KL <= {self.max_kl:g}" if self.max_kl is not None else ""
        return f"top-1 agreement >= {self.min_agreement:.2%}{kl} on {self.images}"

    def to_dict(self) -> dict:
        return {"min_top1_agreement": self.min_agreement, "max_kl": self.max_kl, "images": self.images}


# ---------------------------------------------------------------- units


def group_units(model, names: Iterable[str]) -> list[Unit]:
    """`names` (nodes of `model`) as units in graph order: a lead op takes the Relu/Clip that is the
    sole consumer of its output."""
    wanted = set(names)
    nodes = list(model.graph.node)
    consumers: dict[str, list] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    paths = module_paths(model)
    taken: set[str] = set()
    raw: list[tuple[int, list]] = []
    for i, n in enumerate(nodes):
        if n.name not in wanted or n.name in taken:
            continue
        group = [n]
        if n.op_type in LEADS and n.output[0] not in graph_outputs:
            users = consumers.get(n.output[0], [])
            if len(users) == 1 and users[0].op_type in FUSED_ACTIVATIONS:
                group.append(users[0])
        taken.update(g.name for g in group)
        raw.append((i, group))
    short = short_names([paths.get(g[0].name, "") for _, g in raw])
    return [Unit(g[0].name, tuple(x.name for x in g), "+".join(x.op_type for x in g), paths.get(g[0].name, ""),
                 short[paths.get(g[0].name, "")], i) for i, g in raw]


def int8_units(float_model, qdq_model) -> list[Unit]:
    """The units of `float_model` that `qdq_model` quantized (their inputs come from DequantizeLinear)."""
    qnodes = {n.name: n for n in qdq_model.graph.node}
    dq_out = {o for n in qdq_model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    names = [n.name for n in float_model.graph.node if n.name in qnodes and any(i in dq_out for i in qnodes[n.name].input)]
    return group_units(float_model, names)


def fp16_units(float_model, exclude: set[str]) -> list[Unit]:
    """The compute nodes an FP16 conversion would run in half precision (all but `exclude`)."""
    floats = float_tensors(float_model)
    names = [n.name for n in float_model.graph.node
             if n.name not in exclude and n.op_type not in DATA_MOVEMENT and any(o in floats for o in n.output)]
    return group_units(float_model, names)


def float_tensors(model) -> set[str]:
    """Names of the float32 tensors of `model` (inputs, initializers, inferred intermediates)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    elem = onnx.TensorProto.FLOAT
    out = {i.name for i in model.graph.initializer if i.data_type == elem}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if vi.type.tensor_type.elem_type == elem:
            out.add(vi.name)
    return out


# ---------------------------------------------------------------- mixed models


def _all_nodes(graph):
    """The graph's nodes and those of its subgraphs (If/Loop bodies), which may read its initializers."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _all_nodes(g)


def mixed_int8(float_model, qdq_model, quantized: Iterable[str]):
    """`float_model` with the nodes named in `quantized` reading their inputs through the Q/DQ
    pairs that `qdq_model` gives them; every other node computes in float."""
    import onnx

    wanted = set(quantized)
    qnodes = {n.name: n for n in qdq_model.graph.node}
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    qinits = {i.name: i for i in qdq_model.graph.initializer}
    have = {i.name for i in float_model.graph.initializer}
    taken = have | {o for n in float_model.graph.node for o in n.output} | {i.name for i in float_model.graph.input}
    out = onnx.ModelProto()
    out.CopyFrom(float_model)
    del out.graph.node[:]
    emitted: dict[str, str] = {}  # Q/DQ output in qdq_model -> its name here
    new_inits = []

    def emit(node) -> str:
        """Copy a Q or DQ node in; its output is renamed where the float graph uses the name
        (ONNX Runtime names a bias's DequantizeLinear output like the float bias)."""
        for t in node.input:
            if t in qinits and t not in have:
                new_inits.append(qinits[t])
                have.add(t)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[0] = emitted.get(node.input[0], node.input[0])
        name = node.output[0] + "__int8" if node.output[0] in taken else node.output[0]
        copy.output[0] = name
        out.graph.node.append(copy)
        emitted[node.output[0]] = name
        return name

    for n in float_model.graph.node:
        q = qnodes.get(n.name) if n.name in wanted else None
        if q is None or len(q.input) != len(n.input):
            out.graph.node.append(n)
            continue
        node = onnx.NodeProto()
        node.CopyFrom(n)
        for i, t in enumerate(q.input):
            dq = producer.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if t not in emitted:
                src = producer.get(dq.input[0])
                if src is not None and src.op_type == "QuantizeLinear" and src.output[0] not in emitted:
                    emit(src)
                emit(dq)
            node.input[i] = emitted[t]
        out.graph.node.append(node)
    out.graph.initializer.extend(new_inits)
    # a quantized node reads its weight through DequantizeLinear: the float copy is dead weight
    read = {t for n in _all_nodes(out.graph) for t in n.input} | {o.name for o in out.graph.output}
    kept = [i for i in out.graph.initializer if i.name in read]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out


def fp16_emulated(float_model, nodes: Iterable[str], probe: str | None = None, floats: set[str] | None = None):
    """`float_model` with `nodes` computing on FP16-rounded inputs and weights and writing
    FP16-rounded outputs. With `probe` (a node name), its output is also exposed as
    `<output>` (rounded) and `<output>__ref` (the same node on unrounded inputs)."""
    import onnx
    from onnx import helper, numpy_helper

    wanted = set(nodes)
    floats = floats if floats is not None else float_tensors(float_model)
    inits = {i.name: i for i in float_model.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(float_model)
    del out.graph.node[:]
    rounded: dict[str, str] = {}
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT

    def cast_pair(src: str, dst: str) -> list:
        return [helper.make_node("Cast", [src], [dst + "__h"], to=F16, name=dst + "__to_fp16"),
                helper.make_node("Cast", [dst + "__h"], [dst], to=F32, name=dst + "__to_fp32")]

    for n in float_model.graph.node:
        if n.name not in wanted:
            out.graph.node.append(n)
            continue
        node = onnx.NodeProto()
        node.CopyFrom(n)
        for i, t in enumerate(n.input):
            if not t or t not in floats:
                continue
            if t not in rounded:
                if t in inits:
                    r = numpy_helper.to_array(inits[t]).astype(np.float16).astype(np.float32)
                    out.graph.initializer.append(numpy_helper.from_array(r, t + "__fp16"))
                    rounded[t] = t + "__fp16"
                else:
                    out.graph.node.extend(cast_pair(t, t + "__fp16"))
                    rounded[t] = t + "__fp16"
            node.input[i] = rounded[t]
        tail = []
        for j, o in enumerate(n.output):
            if o in floats:
                node.output[j] = o + "__f32"
                tail += cast_pair(o + "__f32", o)
                rounded[o] = o  # already rounded: consumers in FP16 need no second cast
        out.graph.node.append(node)
        out.graph.node.extend(tail)
        if n.name == probe:
            ref = onnx.NodeProto()
            ref.CopyFrom(n)
            ref.name = n.name + "__ref"
            del ref.output[:]
            ref.output.extend([o + "__ref" for o in n.output])
            out.graph.node.append(ref)
            for o in n.output:
                if o in floats:
                    out.graph.output.extend([helper.make_tensor_value_info(o, F32, None),
                                             helper.make_tensor_value_info(o + "__ref", F32, None)])
    return out


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
    node: dict | None = None  # FP16: output absmax in float32, overflow, non-finite share, relative error

    def to_dict(self) -> dict:
        return {**self.unit.to_dict(), "score": self.score,
                "alone_float": self.alone_float.to_dict() if self.alone_float else None,
                "alone_low": self.alone_low.to_dict(), **({"node": self.node} if self.node else {})}


def rank(effects: list[UnitEffect]) -> list[UnitEffect]:
    """Most sensitive first; among equals, a unit whose own output leaves FP16's range, then graph
    order (the first layer that breaks is where to look: everything after it inherits inf/NaN)."""
    return sorted(effects, key=lambda e: (-round(e.score, 9), not (e.node or {}).get("overflows_fp16", False), e.unit.index))


def sweep_int8(ev: Evaluator, float_model, qdq_model, units: list[Unit], full: TaskMetrics) -> list[UnitEffect]:
    names = {n for u in units for n in u.nodes}
    effects = []
    for u in units:
        alone_float = ev.metrics(mixed_int8(float_model, qdq_model, names - set(u.nodes)))
        alone_low = ev.metrics(mixed_int8(float_model, qdq_model, u.nodes))
        effects.append(UnitEffect(u, alone_float, alone_low, alone_low.kl + max(0.0, full.kl - alone_float.kl)))
    return effects


def sweep_fp16(ev: Evaluator, float_model, units: list[Unit], floats: set[str]) -> list[UnitEffect]:
    effects = []
    for u in units:
        outputs = [o for n in float_model.graph.node if n.name == u.nodes[-1] for o in n.output if o in floats]
        model = fp16_emulated(float_model, u.nodes, probe=u.nodes[-1], floats=floats)
        names = ["logits", *(x for o in outputs for x in (o, o + "__ref"))]

        def fold(acc, res, outputs=outputs):
            acc = acc or {"absmax": 0.0, "nonfinite": 0, "size": 0, "err2": 0.0, "ref2": 0.0}
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
                "relative_error": (st["err2"] / st["ref2"]) ** 0.5 if st["ref2"] > 0 else 0.0}
        effects.append(UnitEffect(u, None, m, m.kl, node))
    return effects


def float_regions(model, units: list[Unit]) -> int:
    """How many connected pieces `units` form in `model` (units joined where one reads another's
    output). Each piece costs a float/INT8 boundary on either side: on ONNX Runtime's CPU kernels a
    quantized producer feeding a float reader loses its fused int8 output (digits Lite0, 8-bit
    weights: 7 scattered float units ran at 4.2 ms, 8 contiguous ones at 2.5 ms, FP32 3.5 ms)."""
    owner = {n: u.name for u in units for n in u.nodes}
    producer = {o: n.name for n in model.graph.node for o in n.output}
    parent = {u.name: u.name for u in units}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for n in model.graph.node:
        if n.name not in owner:
            continue
        for t in n.input:
            p = owner.get(producer.get(t, ""))
            if p is not None and p != owner[n.name]:
                parent[find(p)] = find(owner[n.name])
    return len({find(u.name) for u in units})


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
