from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tldeploy._io import sha256_file
from tldeploy.contract import OUTPUT_NAMES, ContractError, load_onnx, read_contract
from tldeploy.errors import OutputExistsError, TldeployError
from tldeploy.export.onnx_export import ExportConfig, export_onnx
from tldeploy.models.checkpoints import load_checkpoint
from tldeploy.parity import parity_inputs
from tldeploy.predict import predict
from tldeploy.runtime.runners import OrtRunner, run_batches


@pytest.fixture
def ckpt_val(tiny):
    """(checkpoint, validation folder) of the session's ckpt_val CNN."""
    return tiny[0], tiny[2] / "val"


def test_fp32_export_contract_and_parity(ckpt_val, tmp_path):
    ckpt, val = ckpt_val
    result = export_onnx(ExportConfig(ckpt, tmp_path / "m.onnx", data=val))
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    model = onnx.load(str(result.path))
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["logits", "probs", "cam"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert {o.version for o in model.opset_import if o.domain == ""} == {18}
    c = read_contract(result.path)
    _, meta = load_checkpoint(ckpt)
    assert c.classes == ["green", "red"] and c.backbone == "tiny_cnn"
    assert c.preprocessing.to_dict() == meta["preprocessing"]
    assert c.checkpoint_sha256 == sha256_file(ckpt)
    assert [b for b, _ in result.parity] == [1, 7]
    assert all(r and r.logits_max_abs <= 1e-4 and r.top1_agreement == 1.0 for _, r in result.parity)
    assert result.parity[0][1].n == 16  # the real validation images


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(sess, x):
    return dict(zip(OUTPUT_NAMES, sess.run(list(OUTPUT_NAMES), {sess.get_inputs()[0].name: x}), strict=True))


def test_static_batch(ckpt_val, tmp_path):
    ckpt, val = ckpt_val
    result = export_onnx(ExportConfig(ckpt, tmp_path / "s.onnx", static_batch=3, opset=17))
    model = onnx.load(str(result.path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    # 32 parity inputs in batches of 3: the last batch is padded; all 32 rows are compared.
    [(batch, report)] = result.parity
    assert batch == 3 and report.n == 32 and report.logits_max_abs <= 1e-4 and report.top1_agreement == 1.0
    # The static graph itself, on three real images, gives the checkpoint's outputs.
    x = parity_inputs(result.contract.preprocessing, val, 3)
    model_pt, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        ref = [t.numpy() for t in model_pt.eval().forward_with_cam(torch.from_numpy(x))]
    out = _run(_session(result.path), x)
    for name, r in zip(OUTPUT_NAMES, ref, strict=True):
        np.testing.assert_allclose(out[name], r, rtol=0, atol=1e-4, err_msg=name)


def test_fp16_keeps_io_and_sensitive_parts_in_float32(ckpt_val, tmp_path):
    result = export_onnx(ExportConfig(ckpt_val[0], tmp_path / "h.onnx", fp16=True, simplify=True))
    model = onnx.load(str(result.path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    assert types[softmax.input[0]] == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    conv_w = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer if i.name in conv_w)
    assert read_contract(result.path).precision == "fp16"


FP16_UNIT = 2.0**-11  # unit roundoff of IEEE half precision (11-bit significand)


def test_fp16_logits_stay_within_half_precision_of_fp32(ckpt_val, tmp_path):
    """Against the FP32 export, on the real validation images and random inputs: each logit
    l_c = sum_i W_ci g_i + b_c (g: the pooled, attended features) moves by at most 8 half-precision
    roundings of its terms' scale S_c = sum_i |W_ci g_i| + |b_c|. 8u is the roundoff of a format
    three bits coarser (bfloat16's 2^-8), so a graph that lost that much precision anywhere fails.
    Top-1 agrees wherever the FP32 margin exceeds both logits' bounds, and probs are the float32
    softmax of the returned logits. (A softmax in half precision would not show in the values here:
    ONNX Runtime's CPU provider drops the cast pair around it; the graph check above catches it.)"""
    ckpt, val = ckpt_val
    f32 = export_onnx(ExportConfig(ckpt, tmp_path / "f.onnx")).path
    f16 = export_onnx(ExportConfig(ckpt, tmp_path / "h.onnx", fp16=True)).path
    prep = read_contract(f32).preprocessing
    x = np.concatenate([parity_inputs(prep, val, 16), parity_inputs(prep, None, 32)])
    a, b = _run(_session(f32), x), _run(_session(f16), x)
    model, _ = load_checkpoint(ckpt)
    head = model.eval().head
    with torch.no_grad():
        g = head.attention(model.embed(torch.from_numpy(x))).mean(dim=(2, 3))
        scale = (g.abs() @ head.classifier.weight.abs().T + head.classifier.bias.abs()).double().numpy()
    bound = 8 * FP16_UNIT * scale
    diff = np.abs(a["logits"].astype(np.float64) - b["logits"])
    assert (diff <= bound).all(), f"logit error up to {(diff / (FP16_UNIT * scale)).max():.1f} half-precision units"
    assert diff.max() > 0  # the network did run in half precision
    order = np.sort(a["logits"], axis=1)
    clear = order[:, -1] - order[:, -2] > 2 * bound.max(axis=1)  # most inputs: the check is not vacuous
    assert clear.sum() >= 40 and (a["logits"].argmax(1) == b["logits"].argmax(1))[clear].all()
    logits = b["logits"].astype(np.float64)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(b["probs"], softmax / softmax.sum(1, keepdims=True), rtol=0, atol=1e-6)


def test_attention_plugin_nodes(ckpt_val, tmp_path):
    result = export_onnx(ExportConfig(ckpt_val[0], tmp_path / "p.onnx", attention_plugin=True))
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["ChannelAttention"] == 1 and ops["Sigmoid"] == 0 and ops["ReduceMax"] == 1
    assert result.parity == [] and "TensorRT" in result.note
    with pytest.raises(TldeployError, match="only TensorRT runs"):
        predict(result.path, [next(ckpt_val[1].rglob("*.png"))])


def test_bad_outputs_and_inputs(ckpt_val, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="--force"):
        export_onnx(ExportConfig(ckpt_val[0], out))
    assert out.read_bytes() == b"old"
    with pytest.raises(TldeployError, match="should end in .onnx"):
        ExportConfig(ckpt_val[0], tmp_path / "m.txt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": torch.zeros(1)}, foreign)
    with pytest.raises(TldeployError, match="not a checkpoint written by tldeploy"):
        export_onnx(ExportConfig(foreign, tmp_path / "f.onnx"))
    assert not (tmp_path / "f.onnx").exists()


def test_onnx_without_contract_or_truncated_is_refused(ckpt_val, tmp_path):
    result = export_onnx(ExportConfig(ckpt_val[0], tmp_path / "m.onnx"))
    model = onnx.load(str(result.path))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ContractError, match="no tldeploy preprocessing contract"):
        read_contract(bare)
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(result.path.read_bytes()[:3000])
    with pytest.raises(TldeployError, match="truncated"):
        load_onnx(trunc)


def test_predict_checkpoint_and_onnx_agree_and_draw_cams(ckpt_val, tmp_path):
    ckpt, val = ckpt_val
    onnx_path = export_onnx(ExportConfig(ckpt, tmp_path / "m.onnx")).path
    images = sorted(val.rglob("*.png"))[:4]
    a = predict(ckpt, images, top_k=2)
    b = predict(onnx_path, images, top_k=2, cam_out=tmp_path / "cams")
    for ra, rb in zip(a, b):
        assert [t["class"] for t in ra.top] == [t["class"] for t in rb.top]
        assert abs(ra.top[0]["prob"] - rb.top[0]["prob"]) < 1e-5
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == sorted(f"{p.stem}_cam.png" for p in images)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(TldeployError, match="cannot decode image"):
        predict(ckpt, [bad])


def test_run_batches_pads_static_batches(ckpt_val, tmp_path):
    static = OrtRunner(export_onnx(ExportConfig(ckpt_val[0], tmp_path / "s.onnx", static_batch=4)).path).activate()
    dynamic = _session(export_onnx(ExportConfig(ckpt_val[0], tmp_path / "d.onnx")).path)
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    out = run_batches(static, x, 4)  # batches of 4: rows 4 and 5 run beside two rows of zeros
    assert out["logits"].shape == (6, 2) and out["probs"].shape == (6, 2) and out["cam"].shape == (6, 8, 8)
    whole = _run(dynamic, x)
    for i in range(len(x)):  # each real row's outputs are its own, as if run alone
        alone = _run(dynamic, x[i : i + 1])
        for name in OUTPUT_NAMES:
            np.testing.assert_allclose(out[name][i], alone[name][0], rtol=0, atol=1e-5, err_msg=f"{name} row {i}")
            np.testing.assert_allclose(whole[name][i], alone[name][0], rtol=0, atol=1e-5, err_msg=f"{name} row {i}")
    zeros = _run(dynamic, np.zeros((1, 3, 32, 32), np.float32))  # what a padded row would give
    assert np.abs(out["logits"][4:] - zeros["logits"]).max() > 1e-3  # so a leak would show above


def test_exports_carry_nothing_of_the_build_machine(ckpt_val, tmp_path):
    """The exporter's stack traces (absolute paths of this checkout) are stripped; the name scopes
    that diagnosis reads stay."""
    from tldeploy.scopes import SCOPES_KEY

    ckpt, _ = ckpt_val
    path = export_onnx(ExportConfig(ckpt, tmp_path / "m.onnx")).path
    blob = path.read_bytes()
    import tldeploy

    checkout = str(Path(tldeploy.__file__).resolve().parent.parent).encode()
    assert checkout not in blob and str(tmp_path).encode() not in blob and b"stack_trace" not in blob
    model = onnx.load(str(path))
    assert sum(any(p.key == SCOPES_KEY for p in n.metadata_props) for n in model.graph.node) > len(model.graph.node) // 2


def test_raw_input_export_crops_and_normalises_inside(ckpt_val, tmp_path):
    ckpt, val = ckpt_val
    result = export_onnx(ExportConfig(ckpt, tmp_path / "raw.onnx", input_format="raw", data=val))
    c = read_contract(result.path)
    assert c.preprocessing.input_format == "raw" and "in the graph: centre-crop" in c.preprocessing.describe()
    # A file's raw input is the whole image scaled, RGB 0-255; the graph gives what the normalised
    # export gives on the contract's own input for it.
    normal = export_onnx(ExportConfig(ckpt, tmp_path / "m.onnx")).path
    files = sorted(val.rglob("*.png"))[:6]
    raw_x = np.stack([c.preprocessing.load(f) for f in files])
    assert raw_x.min() >= 0 and raw_x.max() > 1.5 and raw_x.max() <= 255
    host_x = np.stack([read_contract(normal).preprocessing.load(f) for f in files])
    with OrtRunner(result.path) as raw_runner, OrtRunner(normal) as normal_runner:
        a, b = run_batches(raw_runner, raw_x), run_batches(normal_runner, host_x)
    assert np.abs(a["logits"] - b["logits"]).max() <= 1e-4


def test_raw_input_graph_crops_at_the_contracts_offsets(ckpt_val, tmp_path):
    """With a resize larger than the crop (as for ImageNet models: 256 -> 224), the Slice takes the
    centre at torchvision's offsets and the per-channel normalisation is exact."""
    from dataclasses import replace

    from tldeploy.raw_input import raw_input_model

    ckpt, _ = ckpt_val
    model = load_onnx(export_onnx(ExportConfig(ckpt, tmp_path / "m.onnx")).path)
    prep = replace(read_contract(model).preprocessing, resize_size=43, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    raw = raw_input_model(model, prep)
    assert [d.dim_value for d in raw.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 43, 43]
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 3, 43, 43)).astype(np.float32)
    top = round((43 - 32) / 2)  # 6 (torchvision: int(round(5.5)) = 6)
    host = (pixels[:, :, top : top + 32, top : top + 32] / 255 - np.reshape(prep.mean, (1, 3, 1, 1))) / np.reshape(prep.std, (1, 3, 1, 1))
    with OrtRunner(raw) as r, OrtRunner(model) as m:
        assert np.abs(run_batches(r, pixels)["logits"] - run_batches(m, host.astype(np.float32))["logits"]).max() <= 1e-4
    with pytest.raises(TldeployError, match="takes raw pixels already"):
        raw_input_model(raw, prep.as_raw())
