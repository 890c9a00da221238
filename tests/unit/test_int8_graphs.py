"""The INT8 writer never writes a cyclic or invalid graph: a squeeze-excite + hard-swish block
(what broke a timm MobileNetV3: ONNX Runtime's optimiser splits each HardSwish into unnamed nodes,
and the mixes match nodes by name) builds guarded and fully quantized, and every INT8 graph is
checked before it is written."""

from __future__ import annotations

import onnx
import pytest
from _images import make_blob_images
from onnx import TensorProto, helper
from torch import nn

from tldeploy.engines.builder import BuildConfig, build
from tldeploy.engines.capabilities import PrecisionTarget
from tldeploy.engines.graph import check_written_graph, name_every_node
from tldeploy.engines.quantize import Int8Options
from tldeploy.export.onnx_export import ExportConfig, export_onnx
from tldeploy.modalities.preprocessing import AugmentConfig, Preprocessing
from tldeploy.models.backbones import Backbone, BackboneSpec, Weights, register_backbone
from tldeploy.train.training import TrainConfig, train


class _SqueezeExciteHardSwish(nn.Module):
    """Two MobileNetV3-like stages: conv, BatchNorm, hard-swish, squeeze-excite with a hard-sigmoid gate."""

    def __init__(self) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.ModuleDict:
            return nn.ModuleDict({"conv": nn.Conv2d(cin, cout, 3, 2, 1, bias=False), "bn": nn.BatchNorm2d(cout), "act": nn.Hardswish(),
                                  "reduce": nn.Conv2d(cout, cout // 2, 1), "expand": nn.Conv2d(cout // 2, cout, 1)})

        self.stages = nn.ModuleList([stage(3, 8), stage(8, 16)])

    def forward(self, x):
        for s in self.stages:
            x = s["act"](s["bn"](s["conv"](x)))
            x = x * nn.functional.hardsigmoid(s["expand"](nn.functional.relu(s["reduce"](x.mean((2, 3), keepdim=True)))))
        return x


@register_backbone("test_se_hardswish", "squeeze-excite + hard-swish blocks (tests only)")
def _se_hardswish(weights: Weights) -> Backbone:
    prep = Preprocessing(input_size=32, resize_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    return Backbone(_SqueezeExciteHardSwish(), BackboneSpec("test_se_hardswish", prep, "", "none", "SE + hard-swish"), 16)


@pytest.fixture(scope="module")
def se_onnx(tmp_path_factory):
    root = tmp_path_factory.mktemp("se")
    make_blob_images(root / "data" / "train", 24, seed=0)
    make_blob_images(root / "data" / "val", 8, seed=1)
    ckpt = train(TrainConfig(data=root / "data", out_dir=root / "run", backbone="test_se_hardswish", mode="finetune", epochs=2,
                             warmup_epochs=1, batch_size=8, lr=1e-2, quiet=True, augment=AugmentConfig.off())).checkpoint
    return export_onnx(ExportConfig(ckpt, root / "se.onnx")).path, root / "data"


@pytest.mark.parametrize("keep_float", ["auto", 0])
def test_squeeze_excite_hard_swish_builds_int8_guarded_and_fully_quantized(se_onnx, tmp_path, keep_float):
    onnx_path, data = se_onnx
    result = build(BuildConfig(onnx_path, PrecisionTarget("int8", "ort"), calib_data=data / "train", check_data=data / "val",
                               int8=Int8Options(keep_float=keep_float), output=tmp_path / "se.int8.ort.onnx"))
    model = onnx.load(str(result.path))
    check_written_graph(model, "INT8")  # what build checked before writing, on the file it wrote
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) >= 4
    if keep_float == 0:
        assert result.record.quantization["float_units"] == []


def test_every_node_gets_a_name_of_its_own():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"], name="n"),
             helper.make_node("Relu", ["b"], ["y"], name="n")]
    model = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    assert name_every_node(model) == 2
    assert [n.name for n in model.graph.node] == ["Relu_0", "n", "Relu_2"]
    assert name_every_node(model) == 0


def test_a_graph_that_reads_a_tensor_before_it_is_computed_is_refused_before_writing():
    x, y = (helper.make_tensor_value_info(t, TensorProto.FLOAT, [1]) for t in "xy")
    ordered = [helper.make_node("Relu", ["x"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["y"], name="second")]
    good = helper.make_model(helper.make_graph(ordered, "g", [x], [y]))
    check_written_graph(good, "INT8")
    bad = helper.make_model(helper.make_graph(ordered[::-1], "g", [x], [y]))
    with pytest.raises(RuntimeError, match="node second \\(Relu\\) reads a before it is computed"):
        check_written_graph(bad, "INT8")
