"""Units: what a builder keeps in higher precision as one piece.

A unit is a Conv, Gemm or MatMul with what runtimes fuse into it: a MatMul's bias Add (a linear
layer on tokens exports as MatMul + Add) and the Relu/Clip that alone consumes the output; the
elementwise nodes one PyTorch op decomposed into (an exact GELU: Div, Erf, Add, Mul, Mul); or any
other compute node (Add, Mul, Softmax, pooling, a normalisation). Units are named by ONNX node and
PyTorch module path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tldeploy.scopes import module_paths, op_instances, short_names

if TYPE_CHECKING:
    from tldeploy.records import PlanUnit

LEADS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FUSED_ACTIVATIONS = ("Relu", "Clip")
# Nodes that only move or index data: exact in any precision, never a unit of their own.
# Never merged into one op's unit: each is a unit of its own (the attention's two MatMuls and its
# Softmax come from one scaled_dot_product_attention call, and each is ranked apart).
OWN_UNIT = (*LEADS, "Softmax", "LayerNormalization")
DATA_MOVEMENT = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Shape", "Gather", "Slice", "Concat",
                 "Identity", "Cast", "Constant", "ArgMax", "ArgMin", "Expand", "Split", "Tile", "Pad", "Size")


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
    def from_plan(cls, u: PlanUnit) -> Unit:
        """A precision plan's unit (a hand-edited plan need give only its nodes)."""
        return cls(u.nodes[0] if u.name is None else u.name, u.nodes, u.op or "", u.module or "",
                   (u.module or "") if u.short is None else u.short, -1 if u.index is None else u.index)


def group_units(model, names: Iterable[str]) -> list[Unit]:
    """`names` (nodes of `model`) as units in graph order: the nodes of one elementwise PyTorch op
    together; a lead op with a MatMul's bias Add and the Relu/Clip that alone consumes its output."""
    wanted = set(names)
    nodes = list(model.graph.node)
    consumers: dict[str, list] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    constants = {i.name for i in model.graph.initializer}
    paths = module_paths(model)
    instance = op_instances(model)
    calls: dict[str, list] = {}  # PyTorch op call -> its nodes, in graph order
    for n in nodes:
        if n.name in instance:
            calls.setdefault(instance[n.name], []).append(n)
    taken: set[str] = set()
    raw: list[tuple[int, list]] = []

    def sole_user(node, ops: tuple[str, ...]):
        users = consumers.get(node.output[0], []) if node.output[0] not in graph_outputs else []
        return users[0] if len(users) == 1 and users[0].op_type in ops and users[0].name not in taken else None

    for i, n in enumerate(nodes):
        if n.name not in wanted or n.name in taken:
            continue
        group = [n]
        siblings = calls.get(instance.get(n.name, ""), [])
        if n.op_type not in OWN_UNIT and len(siblings) > 1 and not any(x.op_type in OWN_UNIT for x in siblings):
            group = [x for x in siblings if x.name not in taken and x.op_type not in DATA_MOVEMENT]
        elif n.op_type in LEADS:
            bias = sole_user(n, ("Add",)) if n.op_type == "MatMul" else None
            if bias is not None and any(t in constants for t in bias.input if t != n.output[0]):
                group.append(bias)
            act = sole_user(group[-1], FUSED_ACTIVATIONS)
            if act is not None:
                group.append(act)
        taken.update(g.name for g in group)
        raw.append((i, group))
    short = short_names([paths.get(g[0].name, "") for _, g in raw])
    return [Unit(g[0].name, tuple(x.name for x in g), "+".join(x.op_type for x in g), paths.get(g[0].name, ""),
                 short[paths.get(g[0].name, "")], i) for i, g in raw]


def int8_units(float_model, qdq_model) -> list[Unit]:
    """The units of `float_model` that `qdq_model` quantized (their inputs come from DequantizeLinear);
    a Reshape or Transpose between Q/DQ pairs (a transformer has many) moves data, never a unit."""
    qnodes = {n.name: n for n in qdq_model.graph.node}
    dq_out = {o for n in qdq_model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    names = [n.name for n in float_model.graph.node if n.name in qnodes and n.op_type not in DATA_MOVEMENT
             and any(i in dq_out for i in qnodes[n.name].input)]
    return group_units(float_model, names)


def fp16_units(float_model, exclude: set[str], floats: set[str] | None = None) -> list[Unit]:
    """The compute nodes an FP16 conversion would run in half precision (all but `exclude`);
    `floats`: the model's `float_tensors`, where the caller has them."""
    floats = float_tensors(float_model) if floats is None else floats
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
