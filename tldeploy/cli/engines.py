"""The build stage's commands: `tldeploy build` and `tldeploy diagnose`."""

from __future__ import annotations

import inspect
from pathlib import Path

import click

from tldeploy.cli._common import CONTEXT, _setup_logging, cli
from tldeploy.engines.capabilities import BACKENDS, CALIB_METHODS, DEVICES, PRECISIONS
from tldeploy.engines.tensorrt import HARDWARE_COMPAT

# ---------------------------------------------------------------- build


def _build_help() -> str:
    from tldeploy.engines.capabilities import capability_table

    table = "\n".join("      " + line for line in capability_table().splitlines())
    return inspect.cleandoc(f"""Build a deployable artifact from an exported ONNX file.

    TensorRT engines are strongly typed networks made from the FP32, FP16 or Q/DQ (INT8) ONNX;
    ONNX Runtime artifacts are ONNX files (INT8: Q/DQ with U8 activations and S8 weights). INT8
    calibrates on real images preprocessed by the contract inside the ONNX and keeps the CAM head
    and the softmax in float.

    \b
    The INT8 guard (--int8-keep-float auto) keeps the fewest units in float, the most sensitive
    first (measured on the task, anywhere in the network; leading convolutions are tried too),
    until the INT8 graph's top-1 agrees with the FP32 ONNX:
      with --check-data DIR: on >= 99% of those images (--int8-min-agreement), the promise is
        about them, so give it validation images the model was not trained on;
      without: on 100% of up to 256 calibration-folder images held out from calibration and with
        mean KL <= 0.002, a stricter bar because training images are easier than the ones the
        model will meet.
    8-bit weights on a CPU without VNNI are checked as the Q/DQ graph computes when evaluated as
    written (what a VNNI CPU or TensorRT computes). --precision-plan PLAN.json (from tldeploy
    diagnose) replaces the search with the plan's units (INT8: left out of Q/DQ; FP16: kept FP32).
    Each artifact gets a build record ARTIFACT.json; an unchanged build is reused.

    \b
    What builds what:
{table}

    \b
    Examples:
      tldeploy build digits.onnx --precision fp16
      tldeploy build digits.onnx --precision int8 --backend ort --calib-data data/digits/train
      tldeploy build digits.onnx --precision int8 --calib-data data/digits/train --batch 1,8,32
    """)


@cli.command("build", context_settings=CONTEXT, help=_build_help())
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--backend", type=click.Choice(("auto", *BACKENDS)), default="auto", show_default=True, help="auto: TensorRT where it and a GPU exist (always for fp16), else ONNX Runtime.")
@click.option("--device", type=click.Choice(DEVICES), help="[default: cuda for TensorRT, cpu for ONNX Runtime]")
@click.option("-o", "--out", "output", type=click.Path(path_type=Path), help="Artifact path [default: beside the ONNX, e.g. model.int8.ort.onnx, model.fp16.engine].")
@click.option("--calib-data", type=click.Path(path_type=Path), help="int8: folder of real images (or clips, for an audio model) to calibrate on.")
@click.option("--calib-samples", default=256, show_default=True, type=int, help="int8: images used (all if fewer).")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default="minmax", show_default=True)
@click.option("--int8-keep-float", "keep_float", default="auto", show_default=True, help="int8: units kept in float, most sensitive first: a number, or auto (as few as pass the guard, see above).")
@click.option("--int8-preset", "int8_preset", type=click.Choice(("auto", "none")), default="auto", show_default=True, help="int8: auto: for a transformer backbone (LayerNorms, Softmaxes) only the matrix products are quantized and searched (measured better than quantizing all); none: every unit.")
@click.option("--int8-min-agreement", "min_agreement", type=float, help="int8 auto: top-1 agreement with the FP32 ONNX to reach [default: 0.99 on --check-data, 1.0 on held-out calibration images].")
@click.option("--int8-max-kl", "max_kl", type=float, help="int8 auto: mean KL divergence to stay under as well [default: none on --check-data, 0.002 on held-out images].")
@click.option("--check-data", type=click.Path(path_type=Path), help="Images the model was not trained on (the validation set) to check the artifact on; the INT8 guard's promise is about them.")
@click.option("--precision-plan", type=click.Path(path_type=Path), help="int8/fp16: plan.json from tldeploy diagnose: the units to keep in higher precision.")
@click.option("--reduce-range/--no-reduce-range", default=None, help="ONNX Runtime int8: 7-bit weights [default: on for CPUs without VNNI, which saturate 8-bit].")
@click.option("--batch", default="1,8,32", show_default=True, help="TensorRT: optimisation profile MIN,OPT,MAX for the dynamic batch.")
@click.option("--workspace", default=4096, show_default=True, type=int, help="TensorRT: workspace limit in MiB.")
@click.option("--timing-cache", type=click.Path(path_type=Path), help="TensorRT: timing cache file [default: one per TensorRT version and GPU in the cache].")
@click.option("--plugins", multiple=True, type=click.Path(path_type=Path), help="TensorRT: plugin library to load, or auto (the one 'tldeploy plugins build' made); needed for ChannelAttention nodes.")
@click.option("--version-compatible", is_flag=True, help="TensorRT: an engine later TensorRT versions can run (lean runtime).")
@click.option("--hardware-compat", type=click.Choice(HARDWARE_COMPAT), default="none", show_default=True, help="TensorRT: run on other GPU architectures (same-compute-capability needs TensorRT 10.9+).")
@click.option("--force", is_flag=True, help="Rebuild even if an artifact is there (up to date or not).")
@click.option("--json", "as_json", is_flag=True, help="Print the build record as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings only.")
def build_cmd(onnx_file: Path, precision: str, backend: str, device: str | None, keep_float: str, int8_preset: str,
              calib_samples: int, calib_method: str, min_agreement: float | None, max_kl: float | None, reduce_range: bool | None,
              batch: str, workspace: int, timing_cache: Path | None, plugins: tuple[Path, ...], version_compatible: bool,
              hardware_compat: str, as_json: bool, quiet: bool, **kw) -> None:
    import json

    _setup_logging(quiet)
    from tldeploy.engines.builder import BuildConfig, build
    from tldeploy.engines.capabilities import PrecisionTarget
    from tldeploy.engines.quantize import Int8Options
    from tldeploy.engines.tensorrt import BatchProfile, TrtConfig

    int8 = Int8Options.from_cli(keep_float=keep_float, preset=int8_preset, calib_samples=calib_samples, calib_method=calib_method,
                                min_agreement=min_agreement, max_kl=max_kl, reduce_range=reduce_range)
    if any(str(p) == "auto" for p in plugins):
        from tldeploy.engines.plugins import find_plugin_library

        plugins = tuple(find_plugin_library() if str(p) == "auto" else p for p in plugins)
    trt = TrtConfig(batch=BatchProfile.parse(batch), workspace_mib=workspace, timing_cache=timing_cache,
                    plugins=tuple(plugins), version_compatible=version_compatible, hardware_compat=hardware_compat)
    result = build(BuildConfig(onnx=onnx_file, target=PrecisionTarget(precision, backend, device), int8=int8, trt=trt, **kw))
    if as_json:
        click.echo(json.dumps({"path": str(result.path), "reused": result.reused, "record": result.record.to_json()}, indent=2))
        return
    r = result.record
    if result.reused:
        click.echo(f"{result.path} is up to date (record {result.path}.json); --force rebuilds it")
        return
    q = r.quantization
    if q:
        kept = [u["short"] or u["name"] for u in q["float_units"]]
        preset = q.get("preset")
        click.echo(f"int8 {q['flavour']}: {q['activations']} activations, {q['weights']} weights; {q['qdq']['quantize']} Q / "
                   f"{q['qdq']['dequantize']} DQ nodes; {len(kept)} unit(s) in float{': ' + ', '.join(kept) if kept else ''}"
                   + (f"; the transformer preset keeps {len(preset['float_units'])} more and the bias Adds in float "
                      "(only the matrix products quantized)" if preset else ""))
    check = r.check or {}
    if "top1_agreement" in check:
        click.echo(f"check vs FP32 ONNX on {check['images']}: top-1 agreement {check['top1_agreement']:.2%}, KL {check['kl']:.2e}"
                   + ("" if check.get("passed", True) else "  (short of the guard's bar; see the warning above)"))
    click.echo(f"wrote {result.path} ({(r.size_bytes or 0) / 1e6:.1f} MB) and its record {result.path}.json in {result.seconds:.1f} s")


# ---------------------------------------------------------------- diagnose

from tldeploy.engines.diagnose import BACKENDS as DIAGNOSE_BACKENDS  # noqa: E402  (light: no torch, onnx or runtime)
from tldeploy.engines.diagnose import PRECISIONS as DIAGNOSE_PRECISIONS  # noqa: E402


@cli.command("diagnose", context_settings=CONTEXT)
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(DIAGNOSE_PRECISIONS), required=True)
@click.option("--backend", type=click.Choice(DIAGNOSE_BACKENDS), default="ort", show_default=True, help="Whose INT8 Q/DQ flavour to diagnose (tensorrt: symmetric INT8, evaluated as written).")
@click.option("--calib-data", type=click.Path(path_type=Path), help="int8: folder of real images to calibrate on (the training folder).")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Validation images (class folders give accuracy): what units are ranked and the plan is checked on.")
@click.option("-o", "--out", "output", type=click.Path(path_type=Path), help="Report folder [default: beside the ONNX, NAME.diagnose-PRECISION/].")
@click.option("--calib-samples", default=256, show_default=True, type=int, help="int8: calibration images (as for build).")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default="minmax", show_default=True)
@click.option("--reduce-range/--no-reduce-range", default=None, help="ort int8: 7-bit weights [default: as build, on for CPUs without VNNI].")
@click.option("--rank-images", default=128, show_default=True, type=int, help="Validation images the per-unit sweep runs on (the plan is checked on all).")
@click.option("--min-agreement", default=0.99, show_default=True, type=float, help="Plan: top-1 agreement with the FP32 ONNX to reach on --data.")
@click.option("--max-kl", type=float, help="Plan: mean KL divergence to stay under as well.")
@click.option("--max-units", default=16, show_default=True, type=int, help="Plan: most units to keep in higher precision.")
@click.option("--force", is_flag=True, help="Replace an existing report folder.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings only.")
def diagnose_cmd(onnx_file: Path, precision: str, backend: str, quiet: bool, **kw) -> None:
    """Find the layers that lose accuracy at INT8 or FP16, named by ONNX node and PyTorch module,
    and write a precision plan that keeps the fewest of them in higher precision.

    \b
    Writes REPORT/diagnose.json, diagnose.md, sensitivity.png and plan.json.
    \b
    Examples:
      tldeploy diagnose digits.onnx --precision int8 --calib-data data/digits/train --data data/digits/val
      tldeploy build digits.onnx --precision int8 --calib-data data/digits/train \\
          --precision-plan digits.diagnose-int8/plan.json --check-data data/digits/val
      tldeploy diagnose digits.onnx --precision fp16 --data data/digits/val
    """
    _setup_logging(quiet)
    from tldeploy.engines.capabilities import PrecisionTarget
    from tldeploy.engines.diagnose import DiagnoseConfig, diagnose

    result = diagnose(DiagnoseConfig(onnx=onnx_file, target=PrecisionTarget(precision, backend), **kw))
    doc = result.document
    for u in result.ranking[:5]:
        click.echo(f"#{u['rank']:<3} {u['short'] or '(no module)':40s} {u['op']:12s} {u['name']:24s} score {u['score']:.2e}")
    plan = doc["plan"]
    m = plan["metrics"]
    click.echo(f"all {precision}: top-1 agreement {doc['all_low']['top1_agreement']:.2%}; plan: {len(plan['units'])} unit(s) in higher "
               f"precision, top-1 agreement {m['top1_agreement']:.2%}, KL {m['kl']:.2e} on {doc['images']['n']} images"
               + ("" if plan["passed"] else f" (short of {plan['acceptance']['min_top1_agreement']:.2%})"))
    click.echo(f"wrote {result.report_dir}/ (diagnose.json, diagnose.md, sensitivity.png, plan.json) in {result.seconds:.0f} s")
