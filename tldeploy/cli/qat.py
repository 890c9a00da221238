"""`tldeploy qat`."""

from __future__ import annotations

from pathlib import Path

import click

from tldeploy.cli._common import CONTEXT, _setup_logging, cli


@cli.command("qat", context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--calib-data", type=click.Path(path_type=Path), required=True, help="Training images (labels not needed): calibrated on, then fine-tuned on.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Validation images, one folder per class: pick the best epoch and report.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="QAT run folder (model.pt, metrics.json).")
@click.option("--flavour", type=click.Choice(("ort-x86", "tensorrt")), default="ort-x86", show_default=True, help="The INT8 target: ONNX Runtime on x86 CPUs (uint8 activations) or TensorRT (symmetric int8).")
@click.option("--reduce-range/--no-reduce-range", default=None, help="ort-x86: 7-bit weights [default: on for CPUs without VNNI, as build decides].")
@click.option("--keep-float", type=click.Path(path_type=Path), help="plan.json from tldeploy diagnose: its units stay float in QAT and in the build.")
@click.option("--int8-preset", "preset", type=click.Choice(("auto", "none")), default="auto", show_default=True, help="auto: for a transformer backbone only the matrix products are quantized, as build does.")
@click.option("--epochs", default=2, show_default=True, type=int)
@click.option("--lr", default=5e-6, show_default=True, type=float, help="Learning rate of the biases and BatchNorm parameters (of every parameter with --step-lr 0); cosine decay to 0 over the run.")
@click.option("--step-lr", default=3e-3, show_default=True, type=float, help="Learning rate of each quantized weight in its own code steps: its mean quantization step times this (0: --lr).")
@click.option("--range-lr", default=1e-3, show_default=True, type=float, help="Learning rate of the activation ranges (0: keep the calibrated ones).")
@click.option("--clip-lr", default=1e-3, show_default=True, type=float, help="Learning rate of each weight channel's clipping value, relative to its largest magnitude (0: clip at the largest, as post-training quantization does).")
@click.option("--batch-size", default=8, show_default=True, type=int, help="Images per step: more, smaller steps for the same images (16 measured worse on the digits model).")
@click.option("--samples-per-epoch", type=int, help="Training images per epoch [default: all].")
@click.option("--calib-samples", default=256, show_default=True, type=int, help="Images the starting ranges are calibrated on.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--workers", default=0, show_default=True, type=int, help="Data-loading processes.")
@click.option("--force", is_flag=True, help="Replace an existing QAT run folder.")
@click.option("-q", "--quiet", is_flag=True, help="Plain log lines only.")
def qat_cmd(**kw) -> None:
    """Quantization-aware training: fine-tune CHECKPOINT (from tldeploy train) with fake
    quantization exactly where `build --precision int8` puts Q/DQ for the target, so that every
    unit can be INT8 without the accuracy post-training quantization loses.

    \b
    Examples:
      tldeploy qat runs/digits/model.pt --calib-data data/digits/train --data data/digits/val -o runs/digits-qat
      tldeploy export runs/digits-qat/model.pt -o digits-qat.onnx
      tldeploy build digits-qat.onnx --precision int8 --backend ort --check-data data/digits/val
      torchrun --nproc_per_node 2 -m tldeploy qat runs/digits/model.pt --calib-data data/digits/train --data data/digits/val -o runs/ddp-qat
    """
    from tldeploy.qat import QatConfig, qat

    _setup_logging(kw["quiet"])
    result = qat(QatConfig(**kw))
    if not result.wrote:  # a torchrun process other than rank 0
        return
    m = result.metrics
    click.echo(f"INT8 ({m['target']}) as built from it: top-1 agreement with FP32 {100 * m['qat']['top1_agreement']:.2f}% "
               f"(post-training quantization: {100 * m['ptq']['top1_agreement']:.2f}%), accuracy {m['qat']['accuracy']:.4f} "
               f"(FP32 {m['fp32_accuracy']:.4f}) -> {result.checkpoint}")
