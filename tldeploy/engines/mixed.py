"""Models with some units at another precision, written from the float graph.

- INT8: `mixed_int8(float, qdq, units)` is the float graph with the Q/DQ of those units' inputs
  (activations and weights) copied in from the fully quantized graph, so one calibration serves
  every mix. Activations keep their float producers (a Clip that ONNX Runtime folded into a
  quantization range stays a Clip), so any unit can be float or quantized independently.
- FP16: `fp16_emulated(float, nodes)` rounds those nodes' inputs, weights and outputs to FP16
  (Cast pairs) and computes in float32: FP16 storage with FP32 arithmetic, which is what ONNX
  Runtime's CPU provider does with an FP16 graph and what TensorRT's FP16 convolutions and matrix
  products do (FP32 accumulation). Values beyond FP16's range become inf, as on the device.
  A LayerNormalization is computed step by step with every intermediate rounded to FP16, as
  TensorRT's normalization does in FP16 (it warns "layernorm ... in FP16 may cause overflow"):
  a transformer's residual stream past about 256 squares to more than 65504 inside the layer
  while its input and output fit, and only the steps show it (`_layer_norm_fp16`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import numpy as np

from tldeploy.engines.units import float_tensors

# The probe's largest FP16 intermediate, before rounding, is exposed as `<output>` + INTERNAL for
# the ops emulated step by step (a LayerNormalization's squared deviations).
INTERNAL = "__internal"
STEPWISE = ("LayerNormalization",)


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
    if len(qnodes) != len(qdq_model.graph.node):  # a mix matches nodes by name: see graph.name_every_node
        raise ValueError("mixed_int8 needs unique node names; name the float model's nodes before quantizing it")
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
    FP16-rounded outputs; a LayerNormalization among them also rounds each of its steps
    (`_layer_norm_fp16`). With `probe` (a node name), its output is also exposed as `<output>`
    (rounded) and `<output>__ref` (the same node on unrounded inputs), and for a LayerNormalization
    `<output>__internal` (its squared deviations before rounding: beyond 65504 they overflow)."""
    import onnx

    wanted = set(nodes)
    floats = floats if floats is not None else float_tensors(float_model)
    inits = {i.name: i for i in float_model.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(float_model)
    del out.graph.node[:]
    rounded: dict[str, str] = {}
    opset = next((o.version for o in float_model.opset_import if o.domain in ("", "ai.onnx")), 0)
    ranks: dict[str, int] = {}

    def rank_of(tensor: str) -> int:
        if not ranks:  # shape inference only for a LayerNormalization with a non-negative axis
            inferred = onnx.shape_inference.infer_shapes(float_model)
            for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
                if vi.type.tensor_type.HasField("shape"):
                    ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
        return ranks.get(tensor, -1)

    for n in float_model.graph.node:
        if n.name not in wanted:
            out.graph.node.append(n)
            continue
        node = onnx.NodeProto()
        node.CopyFrom(n)
        _round_inputs(node, floats, inits, rounded, out.graph)
        tail = []
        for j, o in enumerate(n.output):
            if o in floats:
                node.output[j] = o + "__f32"
                tail += _cast_pair(o + "__f32", o)
                rounded[o] = o  # already rounded: consumers in FP16 need no second cast
        internal = None
        if n.op_type == "LayerNormalization":
            steps, consts, internal = _layer_norm_fp16(node, opset, partial(rank_of, n.input[0]))
            out.graph.node.extend(steps)
            out.graph.initializer.extend(consts)
        else:
            out.graph.node.append(node)
        out.graph.node.extend(tail)
        if n.name == probe:
            _expose_probe(n, floats, internal, out.graph)
    return out


def _cast_pair(src: str, dst: str) -> list:
    """`src` rounded to FP16 and back to float32 as `dst`."""
    from onnx import TensorProto, helper

    return [helper.make_node("Cast", [src], [dst + "__h"], to=TensorProto.FLOAT16, name=dst + "__to_fp16"),
            helper.make_node("Cast", [dst + "__h"], [dst], to=TensorProto.FLOAT, name=dst + "__to_fp32")]


def _round_inputs(node, floats: set[str], inits: dict, rounded: dict[str, str], graph) -> None:
    """Point `node`'s float inputs at FP16-rounded copies, adding to `graph` each copy not made yet
    (in `rounded`): a weight rounded once as an initializer, an activation through a Cast pair."""
    from onnx import numpy_helper

    for i, t in enumerate(node.input):
        if not t or t not in floats:
            continue
        if t not in rounded:
            if t in inits:
                r = numpy_helper.to_array(inits[t]).astype(np.float16).astype(np.float32)
                graph.initializer.append(numpy_helper.from_array(r, t + "__fp16"))
                rounded[t] = t + "__fp16"
            else:
                graph.node.extend(_cast_pair(t, t + "__fp16"))
                rounded[t] = t + "__fp16"
        node.input[i] = rounded[t]


def _expose_probe(n, floats: set[str], internal: str | None, graph) -> None:
    """The probed node `n` once more on unrounded inputs (`<output>__ref`), its float outputs and
    their references as graph outputs, and a stepwise op's `internal` tensor as `<output>__internal`."""
    from onnx import NodeProto, TensorProto, helper

    ref = NodeProto()
    ref.CopyFrom(n)
    ref.name = n.name + "__ref"
    del ref.output[:]
    ref.output.extend([o + "__ref" for o in n.output])
    graph.node.append(ref)
    for o in n.output:
        if o in floats:
            graph.output.extend([helper.make_tensor_value_info(o, TensorProto.FLOAT, None),
                                 helper.make_tensor_value_info(o + "__ref", TensorProto.FLOAT, None)])
    if n.op_type in STEPWISE:
        graph.node.append(helper.make_node("Identity", [internal], [n.output[0] + INTERNAL], name=n.name + INTERNAL))
        graph.output.append(helper.make_tensor_value_info(n.output[0] + INTERNAL, TensorProto.FLOAT, None))


def _layer_norm_fp16(node, opset: int, rank: Callable[[], int]) -> tuple[list, list, str]:
    """A LayerNormalization (`node`, its inputs already rounded) as the ONNX function that defines
    it, each step computed in float32 and rounded to FP16: mean, d = X - mean, d*d, variance (their
    mean), + epsilon, sqrt, d / sqrt, * Scale, + B. This is TensorRT's normalization running in
    FP16: d*d beyond 65504 (|d| past about 256, common in a transformer's residual stream) is inf,
    although X and Y fit. stash_type is not followed, so this is the worst case: TensorRT's ONNX
    parser sets the layer's compute precision from it (FLOAT, torch's export, asks for float32),
    while a LayerNorm exported before opset 17 (ReduceMean, Pow, ...) runs in FP16 as it stands.
    A variance that overflowed makes the layer's output NaN: on the device the row collapses to
    the bias (d / inf = 0) or turns NaN (E[x^2] - E[x]^2 = inf - inf, as fused kernels compute it),
    meaningless either way, so the emulation marks it non-finite for the ranking to count it.
    `rank()` gives X's rank (asked only for a non-negative axis). Returns (nodes, initializers,
    the squared deviations' tensor before rounding)."""
    from onnx import TensorProto, helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axes = _normalized_axes(node.name, int(attrs.get("axis", -1)), rank)
    eps = float(attrs.get("epsilon", 1e-5))
    p = node.name + "__fp16"
    consts = [helper.make_tensor(p + "_eps", TensorProto.FLOAT, [], [eps]),
              helper.make_tensor(p + "_nan", TensorProto.FLOAT, [], [float("nan")])]
    if opset >= 18:  # ReduceMean's axes became an input in opset 18
        consts.append(helper.make_tensor(p + "_axes", TensorProto.INT64, [len(axes)], axes))
        reduce = {"inputs": [p + "_axes"], "attrs": {"keepdims": 1}}
    else:
        reduce = {"inputs": [], "attrs": {"keepdims": 1, "axes": axes}}
    nodes: list = []

    def step(op: str, inputs: list[str], out: str, rounded: bool = True, **kw) -> str:
        """`op` in float32 writing `out`, then rounded to FP16 (unless `out` is the node's own
        output, which the caller rounds)."""
        nodes.append(helper.make_node(op, inputs, [out + "__f32" if rounded else out], name=out, **kw))
        if rounded:
            nodes.extend(_cast_pair(out + "__f32", out))
        return out

    x, scale = node.input[0], node.input[1]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    y = node.output[0]
    mean = step("ReduceMean", [x, *reduce["inputs"]], p + "_mean", **reduce["attrs"])
    d = step("Sub", [x, mean], p + "_d")
    sq = step("Mul", [d, d], p + "_sq")
    var = step("ReduceMean", [sq, *reduce["inputs"]], p + "_var", **reduce["attrs"])
    nodes.append(helper.make_node("IsInf", [var], [p + "_overflow"], name=p + "_overflow"))
    var = step("Where", [p + "_overflow", p + "_nan", var], p + "_var_checked", rounded=False)
    std = step("Sqrt", [step("Add", [var, p + "_eps"], p + "_var_eps")], p + "_std")
    normed = step("Div", [d, std], p + "_normed")
    step("Mul", [normed, scale], p + "_scaled" if bias else y, rounded=bias is not None)
    if bias:
        step("Add", [p + "_scaled", bias], y, rounded=False)
    if len(node.output) > 1 and node.output[1]:
        nodes.append(helper.make_node("Identity", [mean], [node.output[1]], name=p + "_mean_out"))
    if len(node.output) > 2 and node.output[2]:
        nodes.append(helper.make_node("Reciprocal", [std], [node.output[2]], name=p + "_inv_std_out"))
    return nodes, consts, sq + "__f32"


def _normalized_axes(name: str, axis: int, rank: Callable[[], int]) -> list[int]:
    """The axes a LayerNormalization with `axis` normalizes over (ReduceMean's axes)."""
    r = rank() if axis >= 0 else -1  # a negative axis needs no rank
    if axis < 0:
        return list(range(axis, 0))
    if r >= 0:
        return list(range(axis, r))
    raise ValueError(f"LayerNormalization {name!r} has axis {axis} and an input of unknown rank; "
                     "FP16 emulation needs the rank (run onnx shape inference on the model, or export with a negative axis)")
