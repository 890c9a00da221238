"""The `ChannelAttention` custom ONNX node for TensorRT builds with the cpp_plugins library.

With `tldeploy export --attention-plugin`, every channel-attention block is exported as one node
(the contract is documented in cpp_plugins/README.md):

    Y = trt.plugins::ChannelAttention(X, W1, B1, W2, B2)   attributes: plugin_version = "1"

    X  (N, C, H, W)   float32 or float16 feature map
    W1 (C/r, C)       first MLP layer weight (nn.Linear layout: out x in), B1 (C/r)
    W2 (C, C/r)       second MLP layer weight, B2 (C)
    Y  (N, C, H, W)   X * sigmoid(MLP(avgpool(X)) + MLP(maxpool(X))), MLP(v) = W2 relu(W1 v + B1) + B2

The weights are initializers, so TensorRT's ONNX parser hands them to the plugin as inputs.
"""

from __future__ import annotations

import torch

PLUGIN_DOMAIN = "trt.plugins"
PLUGIN_OP = "ChannelAttention"
PLUGIN_VERSION = "1"


@torch.library.custom_op("tldeploy::channel_attention", mutates_args=())
def channel_attention(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Reference semantics of the plugin (also what PyTorch runs while exporting)."""

    def mlp(v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(v, w1, b1)), w2, b2)

    att = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
    return x * att[:, :, None, None]


@channel_attention.register_fake
def _(x, w1, b1, w2, b2):
    return torch.empty_like(x)


def onnx_translation_table() -> dict:
    """Map the custom op to one `trt.plugins::ChannelAttention` node for torch.onnx.export."""
    from onnxscript import values

    register_onnx_schema()
    op = values.Opset(PLUGIN_DOMAIN, 1).ChannelAttention

    def translate(x, w1, b1, w2, b2):
        return op(x, w1, b1, w2, b2, plugin_version=PLUGIN_VERSION)

    return {torch.ops.tldeploy.channel_attention.default: translate}


def register_onnx_schema() -> None:
    """Declare the node's signature to onnx, so that onnx.checker validates its use."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has(PLUGIN_OP, PLUGIN_DOMAIN):
        return
    param = OpSchema.FormalParameter
    schema = OpSchema(
        PLUGIN_OP,
        PLUGIN_DOMAIN,
        1,
        doc=__doc__ or "",
        inputs=[param("X", "T"), param("W1", "T"), param("B1", "T"), param("W2", "T"), param("B2", "T")],
        outputs=[param("Y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "feature map and weights")],
        attributes=[OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "plugin version", required=True)],
    )
    onnx.defs.register_schema(schema)
