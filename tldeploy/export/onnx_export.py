"""`tldeploy export`: checkpoint -> ONNX with the CAM head and the preprocessing contract.

The exported graph maps `images` (or `audio`, with the log-mel front end inside) to `logits`,
`probs` and `cam` (see `contract.py`). It is built
in memory, checked (onnx.checker full check, shape inference), optionally simplified (onnxslim),
compared with the PyTorch checkpoint on ONNX Runtime, and only then written (temporary file, then
rename), so a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import tldeploy
from tldeploy._io import atomic_path, check_writable, sha256_file
from tldeploy.contract import OUTPUT_NAMES, Contract, write_contract
from tldeploy.errors import ConfigError, MissingDependencyError, TldeployError
from tldeploy.modalities.base import Modality
from tldeploy.modalities.preprocessing import INPUT_FORMATS
from tldeploy.models.heads import AdaptedModel, ChannelAttention, normalise_cam
from tldeploy.parity import ParityReport, Tolerance, compare_outputs, parity_inputs
from tldeploy.records import CheckpointMeta
from tldeploy.scopes import strip_build_machine

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
FP32_TOLERANCE = Tolerance(max_logit_diff=1e-4)  # an FP32 export computes what the checkpoint does, to rounding


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path
    output: Path
    opset: int = DEFAULT_OPSET
    static_batch: int | None = None
    simplify: bool = False
    fp16: bool = False
    attention_plugin: bool = False
    data: Path | None = None  # real images for the parity check; random inputs otherwise
    parity_samples: int = 32
    parity_batches: tuple[int, ...] = (1, 7)
    input_format: str = "normalized"  # raw: the graph takes RGB 0-255 at the resize size (raw_input.py)
    force: bool = False

    def __post_init__(self) -> None:
        if not 17 <= self.opset <= 23:
            raise ConfigError(f"--opset must be between 17 and 23, got {self.opset}")
        if self.static_batch is not None and self.static_batch < 1:
            raise ConfigError(f"--static-batch must be at least 1, got {self.static_batch}")
        if self.parity_samples < 1:
            raise ConfigError(f"--parity-samples must be at least 1, got {self.parity_samples}")
        if Path(self.output).suffix != ".onnx":
            raise ConfigError(f"output {self.output} should end in .onnx")
        if self.input_format not in INPUT_FORMATS:
            raise ConfigError(f"--input-format must be one of {', '.join(INPUT_FORMATS)}, got {self.input_format!r}")
        if self.input_format == "raw" and self.attention_plugin:
            raise ConfigError("--input-format raw cannot be combined with --attention-plugin (its parity check needs ONNX Runtime)")


@dataclass
class ExportResult:
    path: Path
    contract: Contract
    parity: list[tuple[int, ParityReport]]  # (batch size, report); empty when parity cannot run
    seconds: float
    note: str = ""


class _CamGraph(nn.Module):
    """input -> (logits, probs, cam); with fp16 the network runs in half precision and the
    softmax and the CAM normalisation run in float32 on float32 inputs and outputs. An audio front
    end stays float32: a full-scale tone's power spectrum overflows half precision."""

    def __init__(self, model: AdaptedModel, fp16: bool) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half() if fp16 else model
        if fp16:
            self.model.frontend.float()
        self.fp16 = fp16

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.model.frontend(inputs)
        x = x.half() if self.fp16 else x
        logits, raw = self.model.head.logits_and_raw_cam(self.model.backbone(x))
        logits, raw = logits.float(), raw.float()
        return logits, torch.softmax(logits, dim=1), normalise_cam(raw)


def export_onnx(cfg: ExportConfig) -> ExportResult:
    """Export, check, compare and write; see the module docstring."""
    from tldeploy.models.checkpoints import load_checkpoint

    t0 = time.perf_counter()
    onnx = _require("onnx")
    _require("onnxscript")
    out = Path(cfg.output)
    check_writable(out, force=cfg.force)
    model, raw_meta = load_checkpoint(cfg.checkpoint)
    meta = CheckpointMeta.from_json(raw_meta, str(cfg.checkpoint))
    prep = meta.preprocessing
    if meta.qat and cfg.input_format == "raw":
        raise ConfigError(f"{cfg.checkpoint} is quantization-aware trained on normalised inputs; export it without --input-format raw")
    contract = meta.contract(
        sha256_file(Path(cfg.checkpoint)), tldeploy_version=tldeploy.__version__, precision="fp16" if cfg.fp16 else "fp32",
        attention="plugin" if cfg.attention_plugin else "standard",
        # A quantization-aware trained checkpoint's record (tldeploy qat) goes on to the build.
        extra={"opset": str(cfg.opset), "batch": str(cfg.static_batch) if cfg.static_batch else "dynamic",
               **({"qat": json.dumps(meta.qat)} if meta.qat else {})},
    )
    proto = _export_proto(model, prep, cfg)
    write_contract(proto, contract)
    _check(proto, onnx)
    if cfg.simplify:
        proto = _simplify(proto)
        write_contract(proto, contract)
        _check(proto, onnx)

    parity: list[tuple[int, ParityReport]] = []
    note = ""
    if cfg.attention_plugin:
        note = "parity not checked: ChannelAttention nodes run only in TensorRT with the cpp_plugins library"
    else:
        parity = _parity(proto, model, prep, cfg)
        if not cfg.fp16:
            bad = [f"batch {b}: {'; '.join(r.failures)}" for b, r in parity if not r]
            if bad:
                raise TldeployError(f"FP32 export differs from the checkpoint beyond {FP32_TOLERANCE.max_logit_diff:g} ({', '.join(bad)}); nothing written")
    if cfg.input_format == "raw":
        proto, contract = _raw_variant(proto, contract, onnx)
    strip_build_machine(proto)
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
    return ExportResult(out, contract, parity, time.perf_counter() - t0, note)


def _raw_variant(proto, contract: Contract, onnx):
    """The raw-input graph of a checked export, itself checked: on random pixels it gives what the
    normalised graph gives on the same pixels cropped and normalised on the host."""
    from dataclasses import replace

    import numpy as np

    from tldeploy.raw_input import RawInputFromOnnx, centre_offset
    from tldeploy.runtime.runners import OrtRunner, run_batches

    prep = contract.preprocessing.nvinfer_image  # raw pixels are what an image serving stack's scaler gives
    if prep is None:
        raise ConfigError("--input-format raw is for image models; an audio model's input is the waveform already")
    raw = RawInputFromOnnx(proto, prep)()
    contract = replace(contract, preprocessing=prep.as_raw())
    write_contract(raw, contract)
    _check(raw, onnx)
    pixels = contract.preprocessing.random_inputs(8, seed=1)
    top, s = centre_offset(prep.resize_size, prep.input_size), prep.input_size
    crop = pixels[:, :, top : top + s, top : top + s] / 255.0
    host = ((crop - np.reshape(prep.mean, (1, 3, 1, 1))) / np.reshape(prep.std, (1, 3, 1, 1))).astype(np.float32)
    with OrtRunner(proto) as normal, OrtRunner(raw) as inside:
        report = compare_outputs(run_batches(normal, host), run_batches(inside, pixels), tolerance=FP32_TOLERANCE)
    if not report:
        raise TldeployError(f"the raw-input graph differs from the exported one ({'; '.join(report.failures)}); nothing written")
    return raw, contract


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(module, purpose="ONNX export") from None


def _export_proto(model: AdaptedModel, prep: Modality, cfg: ExportConfig):
    graph = _CamGraph(model, cfg.fp16).eval()
    batch = cfg.static_batch or 2
    example = torch.randn(batch, *prep.input_shape)
    dynamic = None if cfg.static_batch else {"inputs": {0: torch.export.Dim("batch", min=1, max=65536)}}
    kwargs = {}
    if cfg.attention_plugin:
        from tldeploy.export.plugin import onnx_translation_table

        kwargs["custom_translation_table"] = onnx_translation_table()
    with _attention_as_plugin(model, cfg.attention_plugin), _quiet_exporter():
        try:
            program = torch.onnx.export(
                graph,
                (example,),
                input_names=[prep.input_name],
                output_names=list(OUTPUT_NAMES),
                opset_version=cfg.opset,
                dynamo=True,
                dynamic_shapes=dynamic,
                verbose=False,
                **kwargs,
            )
        except Exception as e:  # the exporter's own errors are long; keep the first line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TldeployError(f"torch.onnx.export failed for {cfg.checkpoint}: {first}") from e
    proto = program.model_proto
    proto.producer_name, proto.producer_version = "tldeploy", tldeploy.__version__
    proto.doc_string = f"tldeploy export: {prep.input_name} -> logits, probs, cam"
    return proto


@contextlib.contextmanager
def _attention_as_plugin(model: AdaptedModel, enabled: bool) -> Iterator[None]:
    """Route every ChannelAttention through the `tldeploy::channel_attention` custom op."""
    if not enabled:
        yield
        return
    from tldeploy.export.plugin import channel_attention

    blocks = [m for m in model.modules() if isinstance(m, ChannelAttention)]
    for m in blocks:
        m.forward = (lambda mod: lambda x: channel_attention(x, mod.fc1.weight, mod.fc1.bias, mod.fc2.weight, mod.fc2.bias))(m)
    try:
        yield
    finally:
        for m in blocks:
            del m.forward


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints progress lines through logging and print; keep the CLI's output ours."""
    import io
    import warnings
    from contextlib import redirect_stdout

    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _check(proto, onnx) -> None:
    try:
        # check_model(full_check=True) is this pair; doing it by hand keeps the inferred shapes.
        onnx.checker.check_model(proto)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as e:
        raise TldeployError(f"the exported graph failed onnx.checker: {str(e).splitlines()[0]}") from e
    proto.graph.ClearField("value_info")
    proto.graph.value_info.extend(inferred.graph.value_info)


def _simplify(proto):
    try:
        import onnxslim
    except ImportError:
        raise MissingDependencyError("onnxslim", purpose="--simplify") from None
    from tldeploy.scopes import keep_name_scopes

    with _quiet_exporter():
        slim = onnxslim.slim(proto)
    keep_name_scopes(proto, slim)  # onnxslim drops node metadata; diagnose names layers by it
    return slim


def _parity(proto, model: AdaptedModel, prep: Modality, cfg: ExportConfig) -> list[tuple[int, ParityReport]]:
    _require("onnxruntime")
    from tldeploy.runtime.runners import OrtRunner, run_batches

    x = parity_inputs(prep, cfg.data, cfg.parity_samples)
    with torch.no_grad():
        ref = dict(zip(OUTPUT_NAMES, (t.numpy() for t in model.forward_with_cam(torch.from_numpy(x))), strict=True))
    batches = (cfg.static_batch,) if cfg.static_batch else cfg.parity_batches
    with OrtRunner(proto) as runner:
        return [(b, compare_outputs(ref, run_batches(runner, x, b), tolerance=Tolerance() if cfg.fp16 else FP32_TOLERANCE))
                for b in batches]
