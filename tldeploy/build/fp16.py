"""FP16 ONNX from an FP32 export, for builders that need the precision in the graph (TensorRT's
strongly typed networks, ONNX Runtime CUDA). Same split as `tldeploy export --fp16`: the network
runs in half precision, inputs and outputs stay float32, and whatever only feeds `probs` and `cam`
(the softmax and the CAM normalisation) stays float32, and so does an audio model's log-mel front
end (a full-scale tone's power spectrum overflows half precision)."""

from __future__ import annotations

from tldeploy.build.graph import ancestors, frontend_nodes
from tldeploy.errors import ConfigError


def fp16_model(model):
    """A converted copy of an FP32 tldeploy ModelProto (an FP16 one is returned as it is)."""
    from dataclasses import replace

    from onnxruntime.transformers.float16 import convert_float_to_float16

    from tldeploy.export.contract import read_contract, write_contract

    contract = read_contract(model)
    if contract.precision == "fp16":
        return model
    if contract.precision != "fp32":
        raise ConfigError(f"cannot make FP16 from a {contract.precision} export; export FP32 or FP16 instead")
    feeds_logits = ancestors(model, "logits")
    tail = [n.name for n in model.graph.node if n.name not in feeds_logits]
    front = sorted(frontend_nodes(model, contract))
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=tail + front)
    write_contract(converted, replace(contract, precision="fp16"))
    return converted
