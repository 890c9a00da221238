"""`tldeploy export`."""

from __future__ import annotations

from pathlib import Path

import click

from tldeploy.cli._common import CONTEXT, cli
from tldeploy.modalities.preprocessing import INPUT_FORMATS

# ---------------------------------------------------------------- export


@cli.command("export", context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--out", "output", type=click.Path(path_type=Path), required=True, help="The .onnx file to write.")
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset (17-23).")
@click.option("--static-batch", type=click.IntRange(1), help="Fix the batch size [default: dynamic batch].")
@click.option("--simplify", is_flag=True, help="Run onnxslim on the exported graph.")
@click.option("--fp16", is_flag=True, help="FP16 network with float32 inputs and outputs; the softmax and the CAM normalisation stay float32.")
@click.option("--attention-plugin", is_flag=True, help="Emit each channel-attention block as one trt.plugins::ChannelAttention node (TensorRT with cpp_plugins only).")
@click.option("--input-format", type=click.Choice(INPUT_FORMATS), default="normalized", show_default=True, help="raw: the graph takes RGB 0-255 of the whole image scaled to the resize size and crops and normalises inside (for DeepStream and Triton clients, whose scalers cannot crop or normalise per channel).")
@click.option("--data", type=click.Path(path_type=Path), help="Images (or clips, for an audio model) for the parity check [default: random inputs].")
@click.option("--parity-samples", default=32, show_default=True, type=int, help="Inputs in the parity check.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export_cmd(checkpoint: Path, output: Path, as_json: bool, **kw) -> None:
    """Export a checkpoint to ONNX: input `images` (audio models: `audio`, N x samples, with the
    log-mel front end in the graph), outputs `logits`, `probs` and `cam`.

    The preprocessing contract (classes, input size, mean/std, resize and crop rule, colour order,
    layout, or an audio model's log-mel parameters; checkpoint SHA-256) goes into the file's metadata. After writing in memory the graph is
    checked with onnx.checker and compared with the checkpoint on ONNX Runtime at batch 1 and 7;
    an FP32 export beyond 1e-4 on the logits is an error and nothing is written.

    \b
    Examples:
      tldeploy export runs/digits/model.pt -o digits.onnx
      tldeploy export runs/digits/model.pt -o digits_fp16.onnx --fp16 --data data/digits/val
      tldeploy export runs/digits/model.pt -o digits_trt.onnx --attention-plugin --static-batch 8
      tldeploy export runs/digits/model.pt -o digits_raw.onnx --input-format raw
    """
    import json

    from tldeploy.export.onnx_export import ExportConfig, export_onnx

    result = export_onnx(ExportConfig(checkpoint=checkpoint, output=output, **kw))
    if as_json:
        click.echo(json.dumps({
            "path": str(result.path), "seconds": result.seconds, "note": result.note,
            "parity": [{"batch": b, **r.to_dict()} for b, r in result.parity],
        }, indent=2))
        return
    for b, report in result.parity:
        click.echo(report.table(f"parity vs PyTorch, ONNX Runtime CPU, batch {b} ({result.contract.precision})"))
    if result.note:
        click.echo(result.note)
    click.echo(f"wrote {result.path} in {result.seconds:.1f} s")
