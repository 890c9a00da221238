"""Models with some units at another precision, written from the float graph.

- INT8: `mixed_int8(float, qdq, units)` is the float graph with the Q/DQ of those units' inputs
  (activations and weights) copied in from the fully quantized graph, so one calibration serves
  every mix. Activations keep their float producers (a Clip that ONNX Runtime folded into a
  quantization range stays a Clip), so any unit can be float or quantized independently.
- FP16: `fp16_emulated(float, nodes)` rounds those nodes' inputs, weights and outputs to FP16
  (Cast pairs) and computes in float32: FP16 storage with FP32 arithmetic, which is what ONNX
  Runtime's CPU provider does with an FP16 graph and what TensorRT's FP16 convolutions and matrix
  products do (FP32 accumulation). Values beyond FP16's range become inf, as on the device.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from tldeploy.engines.units import float_tensors


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
