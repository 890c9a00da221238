"""The engine inspector's document (OUT.layers.json) read for TensorRT 10.x and 11.x: the same engine
described by either gives the same summary; a names-only document (ProfilingVerbosity other than
DETAILED) is counted; a corrupt one is refused in one line naming the file."""

import json
import logging

import pytest

from tldeploy.engines.builder import _layer_summary
from tldeploy.engines.inspector import LayerSummary, precision_of, read_layer_summary, summarize_layers
from tldeploy.errors import TldeployError

# (layer name, LayerType, each output's type as 10.x's "Format/Datatype" says it, as 11.x's "Datatype")
# 10.x spellings are TensorRT's format descriptions (Polygraphy's and trex's readers parse them); the
# 11.x values follow the "Datatype" words of NVIDIA's trt-perf-analysis reader on TensorRT's main branch.
LAYERS = [
    ("Reformatting CopyNode for Input Tensor 0 to /stem/conv/Conv + /stem/act/Relu", "Reformat",
     [("Channel major FP16 format where channel % 8 == 0", "Half")]),
    ("/stem/conv/Conv + /stem/act/Relu", "CaskConvolution", [("Channel major FP16 format where channel % 8 == 0", "Half")]),
    ("/blocks.0/conv/Conv", "CaskConvolution", [("Four wide channel vectorized row major Int8 format", "Int8")]),
    ("/head/pool/GlobalAveragePool", "CaskPooling", [("Channel major FP16 format where channel % 8 == 0", "Half")]),
    ("/head/split", "Shuffle", [("Row major linear FP16 format", "Half"), ("Row major linear FP32 format", "Float")]),
    ("{ForeignNode[/head/fc/Gemm]}", "Myelin", [("Float", "Float")]),
    ("Reformatting CopyNode for Output Tensor 0 to embedding", "Reformat", [("Row major linear FP32 format", "Float")]),
]
IO = [("input", "Input"), ("logits", "Output"), ("embedding", "Output")]
EXPECTED = LayerSummary(
    layers=7, io_tensors=("input", "logits", "embedding"), detailed=True,
    by_type={"CaskConvolution": 2, "Reformat": 2, "CaskPooling": 1, "Shuffle": 1, "Myelin": 1},
    by_output_precision={"FP16": 3, "FP32": 2, "INT8": 1, "FP16+FP32": 1},
)


def _doc(version: int) -> dict:
    def tensor(name: str, fmt10: str, type11: str) -> dict:
        if version == 10:
            return {"Name": name, "Location": "Device", "Dimensions": [-1, 8, 4, 4], "Format/Datatype": fmt10}
        return {"Name": name, "Location": "Device", "Dimensions": [-1, 8, 4, 4], "Format": "kLINEAR", "Datatype": type11}

    layers = [{"Name": name, "LayerType": kind, "Inputs": [tensor("x", "Row major linear FP32 format", "Float")],
               "Outputs": [tensor(f"{name}_out{i}", *t) for i, t in enumerate(outs)],
               "TacticName": "sm80_xmma_fprop_implicit_gemm", "StreamId": 0, "Metadata": ""} for name, kind, outs in LAYERS]
    if version == 10:
        return {"Layers": layers, "Bindings": [n for n, _ in IO]}
    return {"Layers": layers, "I/O Tensors": [{"Name": n, "IOMode": mode, "DataType": "Float", "Dimensions": [-1, 3, 32, 32],
                                              "Location": "Device", "IsShapeInferenceIO": False} for n, mode in IO]}


@pytest.mark.parametrize("version", [10, 11])
def test_tensorrt_10_and_11_documents_give_one_summary(tmp_path, version):
    path = tmp_path / f"m.trt{version}.engine.layers.json"
    path.write_text(json.dumps(_doc(version)))
    summary = read_layer_summary(path)
    assert summary == EXPECTED
    assert summary.to_dict() == {"count": 7, "by_type": EXPECTED.by_type, "by_output_precision": EXPECTED.by_output_precision,
                                 "io_tensors": ["input", "logits", "embedding"], "detailed": True}


def test_names_only_and_later_profiles():
    """Without DETAILED verbosity a layer is its name; layers of a second optimization profile
    ("[profile 1]") are the same engine again and are not counted twice."""
    names_only = {"Layers": ["/stem/conv/Conv + /stem/act/Relu", "/head/pool/GlobalAveragePool", "/head/fc/Gemm",
                             "/stem/conv/Conv + /stem/act/Relu [profile 1]"], "Bindings": ["input", "logits", "input [profile 1]"]}
    assert summarize_layers(json.dumps(names_only), "m.engine.layers.json") == LayerSummary(3, ("input", "logits"), False, {}, {})
    doc = _doc(10)
    doc["Layers"].append({**doc["Layers"][0], "Name": doc["Layers"][0]["Name"] + " [profile 1]"})
    assert summarize_layers(json.dumps(doc), "m.engine.layers.json") == EXPECTED


def test_precision_words():
    assert [precision_of({"Format/Datatype": f}) for f in (
        "Row major linear BFloat16 format", "Row major linear FP8 format", "Row major linear UInt8 format", "Row major Int32 format",
        "Row major linear Bool format", "N/A due to dynamic shapes")] == ["BF16", "FP8", "UINT8", "INT32", "BOOL", "unknown"]


@pytest.mark.parametrize(("content", "why"), [
    ("{not json", "invalid JSON"),
    ('{"Bindings": ["input"]}', 'no "Layers" list'),
    ('{"Layers": [{"LayerType": "Reformat"}], "Bindings": []}', "neither a name nor an object with one"),
    ('{"Layers": [], "I/O Tensors": "input"}', "is not a list"),
    ('{"Layers": [], "Bindings": [3]}', "neither a name nor an object with one"),
])
def test_corrupt_document_is_one_line_naming_the_file(tmp_path, content, why):
    path = tmp_path / "m.fp16.engine.layers.json"
    path.write_text(content)
    with pytest.raises(TldeployError) as err:
        read_layer_summary(path)
    message = str(err.value)
    assert message.startswith(f"{path} is not TensorRT engine-inspector JSON") and why in message and "\n" not in message
    assert message.endswith("'tldeploy build --force' writes it again beside the engine")
    with pytest.raises(TldeployError, match="cannot read .*absent.layers.json"):
        read_layer_summary(tmp_path / "absent.layers.json")


def test_build_record_summary_is_none_with_a_warning_for_an_unreadable_document(tmp_path, caplog):
    path = tmp_path / "m.fp16.engine.layers.json"
    assert _layer_summary(json.dumps(_doc(11)), path) == EXPECTED.to_dict()
    with caplog.at_level(logging.WARNING, logger="tldeploy.engines.builder"):
        assert _layer_summary("{not json", path) is None
    assert f"{path} is not TensorRT engine-inspector JSON" in caplog.text and "no layer summary" in caplog.text
