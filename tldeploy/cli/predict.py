"""`tldeploy predict`."""

from __future__ import annotations

from pathlib import Path

import click

from tldeploy.cli._common import CONTEXT, _setup_logging, cli

# ---------------------------------------------------------------- predict


@cli.command("predict", context_settings=CONTEXT)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("images", metavar="FILES", nargs=-1, type=click.Path(path_type=Path))
@click.option("-k", "--top-k", default=5, show_default=True, type=int)
@click.option("--cam-out", type=click.Path(path_type=Path), help="Write each image with its CAM overlaid (audio: the clip's spectrogram with its CAM), as PNG, here.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.option("--force", is_flag=True, help="Overwrite existing CAM images.")
@click.option("--no-ood", is_flag=True, help="Do not mark inputs beyond the artifact's OOD threshold as unknown.")
def predict_cmd(artifact: Path, images: tuple[Path, ...], top_k: int, cam_out: Path | None, as_json: bool, force: bool, no_ood: bool) -> None:
    """Top-k classes for FILES (images, or audio clips for an audio model) from a checkpoint (.pt),
    an ONNX file or an engine, with the artifact's own preprocessing.

    \b
    Examples:
      tldeploy predict runs/digits/model.pt data/digits/val/3/0012.png
      tldeploy predict digits.onnx img1.png img2.png --top-k 3 --cam-out cams/ --json
      tldeploy predict tones.onnx data/tones/val/chirp_up/chirp_up_000.wav --cam-out cams/
    """
    import json

    from tldeploy.predict import predict

    _setup_logging(as_json)
    results = predict(artifact, list(images), top_k=top_k, cam_out=cam_out, force=force, ood=not no_ood)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    for r in results:
        click.echo(r.image + (f"  (CAM: {r.cam_png})" if r.cam_png else ""))
        if r.unknown:
            click.echo(f"  unknown: OOD score {r.ood_score:.4g} > threshold {r.ood_threshold:.4g} (the classes below are its nearest)")
        for t in r.top:
            click.echo(f"  {t['prob']:.4f}  {t['class']}")
