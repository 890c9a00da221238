"""`tldeploy demo`."""

from __future__ import annotations

from pathlib import Path

import click

from tldeploy.cli._common import CONTEXT, _int_list, _setup_logging, cli
from tldeploy.train.options import MODALITIES

# ---------------------------------------------------------------- demo


@cli.command("demo", context_settings=CONTEXT)
@click.option("--workdir", default=Path("demo-run"), show_default=True, type=click.Path(path_type=Path), help="Where everything is written and kept.")
@click.option("--modality", type=click.Choice(MODALITIES), default="image", show_default=True, help="audio: synthetic tones through the same image backbone.")
@click.option("--epochs", type=click.IntRange(1), help="Training epochs [default: 10 for images, 8 for audio].")
@click.option("--batch-sizes", default="1,8", show_default=True, help="Batch sizes the bench times.")
@click.option("--iters", default=50, show_default=True, type=click.IntRange(5), help="Timed iterations per artifact and batch size.")
@click.option("--force", is_flag=True, help="Replace the outputs of an earlier demo in --workdir.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; warnings only.")
def demo_cmd(workdir: Path, modality: str, epochs: int | None, batch_sizes: str, iters: int, force: bool, quiet: bool) -> None:
    """The whole pipeline offline on built-in data, in a few minutes on a laptop CPU.

    scikit-learn's handwritten digits -> train EfficientNet-Lite0 (ImageNet weights, feature
    extractor) -> export to ONNX -> build ONNX Runtime FP32 and INT8 (and TensorRT FP16 and INT8
    where TensorRT and a GPU exist) -> bench against the PyTorch model -> report and plots.
    With --modality audio: synthetic tones (tldeploy data tones) -> EfficientNet-Lite0 fine-tuned
    on log-mel spectrograms -> the same stages, plus CAM overlays of one clip per class.

    \b
    Examples:
      tldeploy demo --workdir demo-run
      tldeploy demo --modality audio --workdir demo-audio
    """
    from tldeploy.bench.report import summary_text
    from tldeploy.demo import DemoConfig, run_demo

    _setup_logging(quiet)
    result = run_demo(DemoConfig(workdir=workdir, modality=modality, epochs=epochs, batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
                                 iters=iters, force=force, quiet=quiet))
    click.echo("\n" + summary_text(result.bench.document))
    for line in result.skipped:
        click.echo(f"skipped: {line}")
    click.echo("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()))
    click.echo(f"report: {result.bench.report}")
    click.echo(f"plots:  {', '.join(str(p) for p in result.bench.plots)}")
    click.echo(f"bench:  {result.bench.path}")
    if result.cams:
        click.echo(f"CAMs:   {result.cams[0].parent}/ ({len(result.cams)} spectrograms)")
