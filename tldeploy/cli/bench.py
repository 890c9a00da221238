"""`tldeploy bench` and `tldeploy compare`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from tldeploy.cli._common import CONTEXT, _float_list, _int_list, _setup_logging, cli
from tldeploy.engines.capabilities import DEVICES

if TYPE_CHECKING:
    from tldeploy.records import BenchDocument

# ---------------------------------------------------------------- bench


@cli.command("bench", context_settings=CONTEXT)
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path), help="The PyTorch reference: RUN_DIR/model.pt from 'tldeploy train'.")
@click.option("--data", type=click.Path(path_type=Path), help="Images (or clips) for parity and accuracy: class folders (labelled) or a flat folder.")
@click.option("-o", "--out", "output", type=click.Path(path_type=Path), required=True, help="The bench.json to write.")
@click.option("--report", type=click.Path(path_type=Path), help="Markdown report [default: OUT with .md].")
@click.option("--plots", type=click.Path(path_type=Path), help="Folder for the PNG plots [default: OUT's name + _plots].")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Batch sizes to time, comma-separated.")
@click.option("--warmup", default=10, show_default=True, type=int, help="Warm-up iterations per artifact and batch size.")
@click.option("--warmup-s", type=float, help="Warm-up seconds instead of iterations.")
@click.option("--iters", default=100, show_default=True, type=int, help="Timed iterations per artifact and batch size.")
@click.option("--duration", type=float, help="Timed seconds per artifact and batch size instead of iterations.")
@click.option("--rounds", default=10, show_default=True, type=int, help="Rounds the timing is split into; artifacts take turns in each.")
@click.option("--threads", type=int, help="CPU threads for ONNX Runtime and PyTorch [default: theirs].")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True, help="Where the reference and plain ONNX files run.")
@click.option("--limit", type=int, help="Use at most N images for parity and accuracy.")
@click.option("--no-reference-latency", is_flag=True, help="Do not time the PyTorch reference (parity only).")
@click.option("--max-top1-drop", type=float, help="Gate: fail if an artifact's accuracy is more than this many points below the reference's.")
@click.option("--min-top1-agreement", type=float, help="Gate: fail if an artifact agrees with the reference's top-1 on less than this share (0-1).")
@click.option("--min-cosine", type=float, help="Gate: fail if the mean cosine similarity of the logits is below this.")
@click.option("--ood-data", type=click.Path(path_type=Path), help="Inputs of no known class: per artifact, AUROC of its OOD score against --data, FPR at the stored TPR, and how often its unknown/known decision differs from the reference's.")
@click.option("--max-ood-disagreement", type=float, help="Gate (with --ood-data): fail if an artifact's unknown/known decisions differ from the reference's on more than this share (0-1) of inputs.")
@click.option("--robustness", metavar="[SUITE]", is_flag=False, flag_value="all", default=None,
              help="Corruptions at 3 severities and FGSM/PGD attacks crafted on the reference: accuracy, and each artifact's top-1 flips against the reference on the same inputs. "
                   "SUITE: all (the default), corruptions, attacks, or names, e.g. jpeg,gaussian_noise,pgd.")
@click.option("--epsilon", "epsilons", default="1,4", show_default=True, help="Attack and search budgets (L-infinity), comma-separated: pixel levels of 255, or 1/255 of full scale for audio.")
@click.option("--disagreement", type=int, metavar="N", help="Search N inputs for nudges within each --epsilon on which an artifact's top-1 differs from the reference's; alone, without the --robustness suite.")
@click.option("--max-robustness-flip", type=float, help="Gate (implies --robustness): fail if a corruption flips more than this share (0-1) of an artifact's top-1 answers against the reference.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; warnings only.")
def bench_cmd(artifacts: tuple[Path, ...], output: Path, batch_sizes: str, warmup: int, warmup_s: float | None, iters: int,
              duration: float | None, rounds: int, no_reference_latency: bool, max_top1_drop: float | None,
              min_top1_agreement: float | None, min_cosine: float | None, epsilons: str, **kw) -> None:
    """Latency and parity of ARTIFACTS (.onnx, .engine, .pt) against the PyTorch reference.

    Every artifact runs on the same preprocessed images as the reference: logits and probs
    differences, cosine similarity, top-1 agreement, KL divergence, CAM agreement, and accuracy
    when --data has class folders. Latency per batch size (mean, std, min, p50-p99, max,
    images/s; raw samples kept) is timed with the artifacts taking turns in rounds, so machine
    drift hits them all alike. Writes OUT (bench.json), a Markdown report and PNG plots; a failed
    gate exits 1 after writing them.

    \b
    Examples:
      tldeploy bench digits.fp32.ort.onnx digits.int8.ort.onnx --reference runs/digits/model.pt \\
          --data data/digits/val -o bench.json --max-top1-drop 1 --min-top1-agreement 0.99
      tldeploy bench digits.fp16.engine --reference runs/digits/model.pt --data data/digits/val \\
          --device cuda --batch-sizes 1,32 --duration 5 -o bench_gpu.json
      tldeploy bench digits.int8.ort.onnx --reference runs/digits/model.pt --data data/digits/val \\
          --limit 200 --epsilon 1,4 --disagreement 50 --max-robustness-flip 0.05 -o robust.json --robustness
    """
    from tldeploy.bench.bench import BenchConfig, run_bench
    from tldeploy.bench.latency import LatencyConfig
    from tldeploy.bench.report import summary_text
    from tldeploy.parity import Tolerance

    _setup_logging(kw["quiet"])
    cfg = BenchConfig(
        artifacts=artifacts, output=output, batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
        latency=LatencyConfig(warmup=warmup, warmup_s=warmup_s, iters=iters, duration_s=duration, rounds=rounds),
        time_reference=not no_reference_latency, epsilons=_float_list(epsilons, "--epsilon"),
        gates=Tolerance(max_top1_drop=max_top1_drop, min_top1_agreement=min_top1_agreement, min_cosine=min_cosine), **kw,
    )
    result = run_bench(cfg)
    click.echo(summary_text(result.document))
    click.echo(f"wrote {result.path}, {result.report}" + "".join(f", {p}" for p in result.plots))
    if result.failures:
        for line in result.failures:
            click.echo(f"gate failed: {line}", err=True)
        raise click.exceptions.Exit(1)


# ---------------------------------------------------------------- compare


def _bench_side(spec: str) -> tuple[BenchDocument, str | None]:
    from tldeploy.bench.bench import load_bench

    path, _, name = spec.partition("#")
    return load_bench(Path(path)), name or None


@cli.command("compare", context_settings=CONTEXT)
@click.argument("baseline", metavar="BASELINE.json[#NAME]")
@click.argument("current", metavar="CURRENT.json[#NAME]")
@click.option("--max-slowdown", default=0.10, show_default=True, type=float, help="Latency regression: median slower by more than this share, and significantly.")
@click.option("--confidence", default=0.99, show_default=True, type=float, help="Confidence of the interval for the ratio of medians.")
@click.option("--max-accuracy-drop", default=0.5, show_default=True, type=float, help="Accuracy regression: points lost against the baseline.")
@click.option("--max-agreement-drop", default=0.5, show_default=True, type=float, help="Top-1 agreement with the reference: points lost.")
@click.option("--max-robustness-drop", default=1.0, show_default=True, type=float, help="Robustness (bench --robustness on both sides): points of corruption or attack accuracy lost, or of flip rate or disagreements gained.")
@click.option("--allow-env-mismatch", is_flag=True, help="Compare results from different environments (CPU, GPU, driver, threads, backend versions).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--junit", type=click.Path(path_type=Path), help="Also write a JUnit XML file for CI systems.")
def compare_cmd(baseline: str, current: str, as_json: bool, junit: Path | None, **kw) -> None:
    """Flag latency, accuracy, parity and robustness regressions between two bench results; exit 1 on any.

    Entries are matched by name. A latency regression needs the ratio of medians above
    1 + --max-slowdown and its bootstrap confidence interval (rounds resampled) above 1. Name
    one entry on each side with FILE.json#NAME, e.g. two artifacts timed in turns by one
    'tldeploy bench' run, which is immune to the machine's drift between runs.

    \b
    Examples:
      tldeploy compare main/bench.json bench.json --max-slowdown 0.10 --junit compare.xml
      tldeploy compare bench.json#old.int8.ort.onnx bench.json#new.int8.ort.onnx
    """
    import json

    from tldeploy._io import write_text
    from tldeploy.bench.compare import CompareConfig, compare_bench

    base, base_pick = _bench_side(baseline)
    cur, cur_pick = _bench_side(current)
    result = compare_bench(base, cur, CompareConfig(**kw), base_pick, cur_pick)
    if junit is not None:
        write_text(junit, result.junit())
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.table())
    for line in result.unmatched:
        click.echo(f"warning: {line}", err=True)
    if result.environment_differences:
        click.echo("warning: environments differ (--allow-env-mismatch): " + "; ".join(result.environment_differences), err=True)
    if result.regressions:
        raise click.exceptions.Exit(1)
