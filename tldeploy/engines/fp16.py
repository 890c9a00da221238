"""FP16 ONNX from an FP32 export, for builders that need the precision in the graph (TensorRT's
strongly typed networks, ONNX Runtime CUDA). Same split as `tldeploy export --fp16`: the network
runs in half precision, inputs and outputs stay float32, and whatever only feeds `probs` and `cam`
(the softmax and the CAM normalisation) stays float32, and so does an audio model's log-mel front
end (a full-scale tone's power spectrum overflows half precision)."""

from __future__ import annotations

from tldeploy.engines.graph import ancestors, frontend_nodes, sort_topologically
from tldeploy.errors import ConfigError


def fp16_exclusions(model, contract) -> set[str]:
    """Nodes every FP16 build keeps in float32: whatever only feeds `probs` and `cam`, and an
    audio model's log-mel front end."""
    feeds_logits = ancestors(model, "logits")
    return {n.name for n in model.graph.node if n.name not in feeds_logits} | frontend_nodes(model, contract)


class Fp16FromOnnx:
    """A lazy build step: the FP16 ModelProto of an FP32 export (`OnnxFile`), made when called."""

    def __init__(self, source, keep_fp32: list[str] | tuple[str, ...] = ()) -> None:
        self.source, self.keep_fp32 = source, keep_fp32

    def __call__(self):
        return fp16_model(self.source.copy(), keep_fp32=self.keep_fp32)


def fp16_model(model, keep_fp32: list[str] | tuple[str, ...] = ()):
    """A converted copy of an FP32 tldeploy ModelProto (an FP16 one is returned as it is), with
    `keep_fp32` nodes (a precision plan's, checked by `PrecisionPlan.check_nodes`) also left in float32."""
    from dataclasses import replace

    from onnxruntime.transformers.float16 import convert_float_to_float16

    from tldeploy.contract import read_contract, write_contract

    contract = read_contract(model)
    if contract.precision == "fp16":
        return model
    if contract.precision != "fp32":
        raise ConfigError(f"cannot make FP16 from a {contract.precision} export; export FP32 or FP16 instead")
    block = sorted(fp16_exclusions(model, contract) | set(keep_fp32))
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=block)
    _drop_half_round_trips(converted)
    sort_topologically(converted.graph)
    write_contract(converted, replace(contract, precision="fp16"))
    return converted


def _drop_half_round_trips(model) -> None:
    """The converter casts each float32 node's output to float16 and back to float32 for the next
    float32 node, so a chain of them (the front end, the softmax and CAM tail) still rounds every
    tensor to half precision in between. Each such pair becomes an Identity of the float32 tensor."""
    from onnx import TensorProto

    graph = model.graph
    floats = {v.name for v in [*graph.input, *graph.value_info] if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    floats |= {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    producer = {o: n for n in graph.node for o in n.output}

    def cast_to(node, elem_type: int) -> bool:
        return node.op_type == "Cast" and any(a.name == "to" and a.i == elem_type for a in node.attribute)

    for node in graph.node:
        src = producer.get(node.input[0]) if node.input else None
        if cast_to(node, TensorProto.FLOAT) and src is not None and cast_to(src, TensorProto.FLOAT16) and src.input[0] in floats:
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = src.input[0]
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if cast_to(n, TensorProto.FLOAT16) and not any(o in used for o in n.output)]
    gone = {o for n in dead for o in n.output}
    for n in dead:
        graph.node.remove(n)
    kept = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(kept)
