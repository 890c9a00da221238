"""FP16 ONNX from an FP32 export, for builders that need the precision in the graph (TensorRT's
strongly typed networks, ONNX Runtime CUDA). Same split as `tldeploy export --fp16`: the network
runs in half precision, inputs and outputs stay float32, and whatever only feeds `probs` and `cam`
(the softmax and the CAM normalisation) stays float32, and so does an audio model's log-mel front
end (a full-scale tone's power spectrum overflows half precision)."""

from __future__ import annotations

from tldeploy.build.graph import ancestors, frontend_nodes
from tldeploy.errors import ConfigError


def fp16_exclusions(model, contract) -> set[str]:
    """Nodes every FP16 build keeps in float32: whatever only feeds `probs` and `cam`, and an
    audio model's log-mel front end."""
    feeds_logits = ancestors(model, "logits")
    return {n.name for n in model.graph.node if n.name not in feeds_logits} | frontend_nodes(model, contract)


def fp16_model(model, keep_fp32: list[str] | tuple[str, ...] = ()):
    """A converted copy of an FP32 tldeploy ModelProto (an FP16 one is returned as it is), with
    `keep_fp32` nodes (a precision plan's, checked by `PrecisionPlan.check_nodes`) also left in float32."""
    from dataclasses import replace

    from onnxruntime.transformers.float16 import convert_float_to_float16

    from tldeploy.export.contract import read_contract, write_contract

    contract = read_contract(model)
    if contract.precision == "fp16":
        return model
    if contract.precision != "fp32":
        raise ConfigError(f"cannot make FP16 from a {contract.precision} export; export FP32 or FP16 instead")
    block = sorted(fp16_exclusions(model, contract) | set(keep_fp32))
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=block)
    write_contract(converted, replace(contract, precision="fp16"))
    return converted
