"""Reading a Q/DQ graph: what it quantized and how (`qdq_stats`), and where the backbone ends and
the head (kept float) begins (`head_nodes`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tldeploy.engines.graph import ancestors
from tldeploy.errors import TldeployError


@dataclass
class QdqStats:
    quantize: int
    dequantize: int
    activation_zero_point_types: list[str]
    weight_zero_point_types: list[str]
    per_channel_weights: int
    all_zero_points_zero: bool

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def head_nodes(model, frontend: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Names of the nodes after the backbone (attention head, pooling, classifier, CAM), which
    INT8 keeps in float; `frontend` nodes (an audio model's log-mel) belong to neither.

    The backbone is every node its modules' name scopes place in it (`backbone.…`) and every node
    those read: a transformer's blocks after its one convolution (the patch embedding) included.
    A graph without scopes falls back on the last convolution: what feeds it, and the activation
    right after it (so that convolution stays fused with its activation)."""
    from tldeploy.scopes import module_paths

    nodes = list(model.graph.node)
    paths = module_paths(model)
    body = [n for n in nodes if paths.get(n.name, "").startswith("backbone.") and n.name not in frontend]
    if body:
        keep = {n.name for n in body} | ancestors(model, *(t for n in body for t in n.input))
    else:
        conv_idx = [i for i, n in enumerate(nodes) if n.op_type == "Conv" and n.name not in frontend]
        if not conv_idx:
            raise TldeployError("the ONNX graph has no Conv node and no backbone name scopes; INT8 here needs a tldeploy export "
                                "or a convolutional backbone")
        last = nodes[conv_idx[-1]]
        keep = {last.name} | ancestors(model, *last.input)
        consumers = [n for n in nodes if last.output[0] in n.input]
        if len(consumers) == 1 and consumers[0].op_type in ("Clip", "Relu"):
            keep.add(consumers[0].name)
    return [n.name for n in nodes if n.name not in keep and n.name not in frontend]


def qdq_stats(model) -> QdqStats:
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nq = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    ndq = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    act, wt, per_channel, zero = set(), set(), 0, True
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or len(n.input) < 3 or n.input[2] not in inits:
            continue
        zp = numpy_helper.to_array(inits[n.input[2]])
        zero = zero and not np.any(zp)
        if n.input[0] in inits:  # a stored weight (or bias)
            if zp.dtype == np.int32:
                continue  # biases are int32 by definition
            wt.add(str(zp.dtype))
            per_channel += zp.size > 1
        else:
            act.add(str(zp.dtype))
    return QdqStats(nq, ndq, sorted(act), sorted(wt), per_channel, bool(zero))
