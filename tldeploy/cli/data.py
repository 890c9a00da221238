"""Built-in data sets (`tldeploy data digits|tones`) and the backbone list."""

from __future__ import annotations

from pathlib import Path

import click

from tldeploy.cli._common import CONTEXT, cli

# ---------------------------------------------------------------- data


@cli.group(context_settings=CONTEXT)
def data() -> None:
    """Built-in offline data sets.

    \b
    Examples:
      tldeploy data digits data/digits --size 64
      tldeploy data tones data/tones --per-class 60
    """


@data.command("digits", context_settings=CONTEXT)
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--size", default=64, show_default=True, type=click.IntRange(8, 1024), help="Image side in pixels (upscaled from 8x8).")
@click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0.01, 0.99), help="Stratified validation share.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the split.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it holds files.")
def data_digits(out_dir: Path, size: int, val_fraction: float, seed: int, force: bool) -> None:
    """Write scikit-learn's handwritten digits (1,797 real scans) as OUT_DIR/train and OUT_DIR/val.

    \b
    Example:
      tldeploy data digits data/digits --size 64 --val-fraction 0.2
    """
    from tldeploy.data.folders import write_digits

    n = write_digits(out_dir, size=size, val_fraction=val_fraction, seed=seed, force=force)
    click.echo(f"wrote {n['train']} training and {n['val']} validation images ({size} px) to {out_dir}")


@data.command("tones", context_settings=CONTEXT)
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--per-class", default=60, show_default=True, type=click.IntRange(2, 10_000), help="Clips per class, validation included.")
@click.option("--val-fraction", default=0.25, show_default=True, type=click.FloatRange(0.01, 0.99), help="Validation share of each class.")
@click.option("--sample-rate", default=16_000, show_default=True, type=click.IntRange(4000, 192_000), help="Rate of most files (every third is at 22,050 Hz).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the sounds.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it holds files.")
def data_tones(out_dir: Path, per_class: int, val_fraction: float, sample_rate: int, seed: int, force: bool) -> None:
    """Write a synthetic audio set as WAV files under OUT_DIR/train and OUT_DIR/val.

    Seven classes (tone, chirp_up, chirp_down, am_tone, fm_tone, noise_band, clicks) with random
    pitch, length (0.6-1.4 s), onset, level and background noise; some files stereo or at 22,050 Hz.

    \b
    Example:
      tldeploy data tones data/tones --per-class 60
    """
    from tldeploy.data.tones import write_tones

    n = write_tones(out_dir, per_class=per_class, val_fraction=val_fraction, sample_rate=sample_rate, seed=seed, force=force)
    click.echo(f"wrote {n['train']} training and {n['val']} validation clips to {out_dir}")


# ---------------------------------------------------------------- backbones


@cli.command("backbones", context_settings=CONTEXT)
@click.argument("pattern", default="*")
def backbones_cmd(pattern: str) -> None:
    """List the registered backbones (timm:NAME and torchvision names work too).

    \b
    Example:
      tldeploy backbones 'efficientnet*'
    """
    from tldeploy.models.backbones import TIMM_FAMILIES, describe_backbone, list_backbones

    for name in list_backbones(pattern):
        click.echo(f"{name:20s} {describe_backbone(name)}")
    click.echo(f"\nalso timm:NAME: {TIMM_FAMILIES}.\nand torchvision's classification CNNs by name (resnet50, mobilenet_v3_large, efficientnet_b0, ...).")
