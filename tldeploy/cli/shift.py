"""`tldeploy shift`."""

from __future__ import annotations

from pathlib import Path

import click

from tldeploy.cli._common import CONTEXT, _setup_logging, cli


@cli.command("shift", context_settings=CONTEXT)
@click.option("--reference", type=click.Path(path_type=Path), required=True, help="The trained model (RUN_DIR/model.pt).")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Target inputs: class folders (accuracy too) or a flat folder.")
@click.option("--source-data", type=click.Path(path_type=Path), help="Source inputs instead of the feature sample the checkpoint keeps from training.")
@click.option("-o", "--out", "output", type=click.Path(path_type=Path), default=Path("shift.json"), show_default=True, help="Report (JSON; .md and the score plot beside it).")
@click.option("--limit", type=click.IntRange(1), help="At most N target (and source-folder) inputs.")
@click.option("--max-auc", type=float, help="Gate: exit 1 when the domain classifier's AUC is above this (0.5 = no shift).")
@click.option("--folds", default=5, show_default=True, type=int, help="Cross-validation folds of the domain classifier.")
@click.option("--force", is_flag=True, help="Overwrite an existing report.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings only.")
def shift_cmd(reference: Path, data: Path, source_data: Path | None, output: Path, limit: int | None, max_auc: float | None,
              folds: int, force: bool, quiet: bool) -> None:
    """How far target data is from the training data: Fréchet distance of pooled features, a domain
    classifier's cross-validated AUC, the share the OOD gate calls unknown, and accuracy.

    \b
    Examples:
      tldeploy shift --reference runs/digits/model.pt --data data/field-images
      tldeploy shift --reference runs/digits/model.pt --data data/new --max-auc 0.75   # CI: fail on drift
    """
    _setup_logging(quiet)
    from tldeploy.shift import ShiftConfig, shift

    result = shift(ShiftConfig(reference=reference, data=data, output=output, source_data=source_data, limit=limit,
                               max_auc=max_auc, folds=folds, force=force))
    d = result.document
    click.echo(f"domain classifier AUC {d['domain_auc']:.4f} (0.5 = indistinguishable), Fréchet distance {d['frechet_distance']:.4g}"
               + (f", unknown {d['unknown_share']:.2%}" if d["unknown_share"] is not None else "")
               + (f", accuracy {d['accuracy']:.4f}" if d["accuracy"] is not None else ""))
    click.echo(f"wrote {result.path} and {result.path.with_suffix('.md').name}")
    if not result.passed:
        click.echo(f"error: the target has drifted: domain AUC {d['domain_auc']:.4f} > --max-auc {max_auc}", err=True)
        raise click.exceptions.Exit(1)
