"""The fake-quantized PyTorch model beside the Q/DQ graph it simulates: integer codes at every
activation quantizer, and the logits."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from tldeploy.qat.fakequant import FakeQuantModel


def codes_side_by_side(fq: FakeQuantModel, qdq, images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """({activation tensor: |torch code - graph code|}, torch logits, graph logits as written)."""
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    qnodes = {n.input[0]: n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    m.graph.output.extend(onnx.ValueInfoProto(name=n.output[0]) for n in qnodes.values())
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as written
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = ["logits", *(n.output[0] for n in qnodes.values())]
    outs = dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: images}), strict=True))

    seen: dict[str, torch.Tensor] = {}
    by_site = {a.site: a for a in fq.placement.activations}
    original = fq._on_output

    def capture(site, t):
        out = original(site, t)
        if site in by_site:
            seen[by_site[site].tensor] = out.detach()
        return out

    fq._on_output = capture
    try:
        with torch.no_grad():
            x = torch.from_numpy(images)
            a = by_site.get("<input>")
            if a is not None:
                seen[a.tensor] = fq.quantizer(a.range)(x)
            logits = fq(x).numpy()
    finally:
        fq._on_output = original
    diffs = {}
    for tensor, n in qnodes.items():
        scale, zp = float(inits[n.input[1]]), int(inits[n.input[2]])
        mine = np.round(seen[tensor].numpy().reshape(outs[n.output[0]].shape) / scale) + zp
        diffs[tensor] = np.abs(mine - outs[n.output[0]].astype(np.int64))
    return diffs, logits, outs["logits"]
