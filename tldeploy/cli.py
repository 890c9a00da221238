"""The `tldeploy` command line: each command is a thin wrapper over a library function."""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path

import click

from tldeploy import __version__
from tldeploy.engines.capabilities import BACKENDS, CALIB_METHODS, DEVICES, PRECISIONS
from tldeploy.engines.tensorrt import HARDWARE_COMPAT
from tldeploy.errors import TldeployError
from tldeploy.train.options import BALANCE, BN_POLICIES, MODALITIES, MODES, SELECT_METRICS

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s" if not quiet else "%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # Warnings (skipped files, ...) must show even with --quiet.
    logging.getLogger("tldeploy").setLevel(logging.INFO if not quiet else logging.WARNING)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="tldeploy")
def cli() -> None:
    """tldeploy: transfer learning to a deployed, verified image classifier.

    \b
    Example, the whole train stage offline:
      tldeploy data digits data/digits
      tldeploy train data/digits -o runs/digits
    \b
    Audio through the same image backbone:
      tldeploy data tones data/tones
      tldeploy train data/tones -o runs/tones --modality audio --mode finetune
    """


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
    from tldeploy.modalities.audio import write_tones

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
    from tldeploy.models.backbones import describe_backbone, list_backbones

    for name in list_backbones(pattern):
        click.echo(f"{name:20s} {describe_backbone(name)}")


# ---------------------------------------------------------------- train


@cli.command("train", context_settings=CONTEXT)
@click.argument("data_dir", metavar="DATA", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Run folder (model.pt, metrics.json, plots/).")
@click.option("--val", type=click.Path(path_type=Path), help="Validation folder; default DATA/val, else a stratified split.")
@click.option("--val-fraction", default=0.2, show_default=True, type=float, help="Share held out when there is no validation folder.")
@click.option("--modality", type=click.Choice(MODALITIES), default="image", show_default=True, help="audio: class folders of WAV/FLAC/OGG files, seen as log-mel spectrograms.")
@click.option("--backbone", default="efficientnet_lite0", show_default=True, help="Registered name, timm:NAME or a torchvision model.")
@click.option("--weights", default="default", show_default=True, help="default, none, a torchvision weights name, or a state-dict file.")
@click.option("--mode", type=click.Choice(MODES), default="feature-extract", show_default=True)
@click.option("--epochs", default=10, show_default=True, type=int, help="Epochs in all (finetune: warm-up included).")
@click.option("--warmup-epochs", default=3, show_default=True, type=int, help="finetune: head-only epochs before unfreezing.")
@click.option("--unfreeze", default=0, show_default=True, type=int, help="finetune: train the last N backbone blocks (0 = all).")
@click.option("--bn", type=click.Choice(BN_POLICIES), default="train", show_default=True, help="finetune: BatchNorm statistics of unfrozen blocks (frozen suits tiny batches).")
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--lr", default=2e-3, show_default=True, type=float, help="Learning rate of the head.")
@click.option("--backbone-lr", type=float, help="finetune: rate of the top backbone block [default: lr/2].")
@click.option("--layer-decay", default=0.9, show_default=True, type=float, help="finetune: rate factor per block below the top.")
@click.option("--weight-decay", default=1e-4, show_default=True, type=float)
@click.option("--label-smoothing", default=0.0, show_default=True, type=float)
@click.option("--reduction", default=16, show_default=True, type=int, help="Channel-attention MLP reduction ratio r.")
@click.option("--dropout", default=0.2, show_default=True, type=float)
@click.option("--augment/--no-augment", default=None, help="Training augmentation [default: off for feature-extract, so features are cached; on for finetune].")
@click.option("--crop-scale", default=0.6, show_default=True, type=float, help="Smallest area share of the random resized crop.")
@click.option("--hflip/--no-hflip", default=True, show_default=True, help="Random horizontal flips.")
@click.option("--color-jitter", default=0.2, show_default=True, type=float, help="Brightness/contrast/saturation jitter (0 = off).")
@click.option("--image-size", type=click.IntRange(8, 2048), help="Input size in px [default: the backbone's].")
@click.option("--in-channels", type=click.Choice(["1", "3"]), default="1", show_default=True, help="audio: 1 = the stem's RGB filters summed (same function, a third of the stem's input work); 3 = the spectrogram repeated.")
@click.option("--sample-rate", default=16_000, show_default=True, type=int, help="audio: clips are resampled to this rate.")
@click.option("--clip-s", default=1.0, show_default=True, type=float, help="audio: clip length in seconds (pad or crop).")
@click.option("--n-fft", default=512, show_default=True, type=int, help="audio: window and FFT length.")
@click.option("--hop", default=160, show_default=True, type=int, help="audio: samples between frames.")
@click.option("--n-mels", default=96, show_default=True, type=int, help="audio: mel bands (the spectrogram's height).")
@click.option("--fmin", default=20.0, show_default=True, type=float, help="audio: lowest mel frequency (Hz).")
@click.option("--fmax", type=float, help="audio: highest mel frequency (Hz) [default: sample rate / 2].")
@click.option("--log-offset", default=1e-6, show_default=True, type=float, help="audio: log(mel + offset).")
@click.option("--time-shift", default=0.1, show_default=True, type=float, help="audio augmentation: largest shift, share of the clip.")
@click.option("--gain-db", default=6.0, show_default=True, type=float, help="audio augmentation: random gain within +-dB.")
@click.option("--noise-prob", default=0.5, show_default=True, type=float, help="audio augmentation: share of clips given white noise.")
@click.option("--noise-snr-db", nargs=2, default=(10.0, 40.0), show_default=True, type=float, help="audio augmentation: SNR range MIN MAX of that noise.")
@click.option("--time-masks", default=2, show_default=True, type=int, help="audio augmentation (SpecAugment): time masks per clip.")
@click.option("--time-mask-frames", default=10, show_default=True, type=int, help="audio augmentation: widest time mask in frames.")
@click.option("--freq-masks", default=2, show_default=True, type=int, help="audio augmentation (SpecAugment): frequency masks per clip.")
@click.option("--freq-mask-bins", default=8, show_default=True, type=int, help="audio augmentation: widest frequency mask in mel bands.")
@click.option("--limit-per-class", type=click.IntRange(1), help="Train on at most N images per class (few-shot).")
@click.option("--balance", type=click.Choice(BALANCE), default="none", show_default=True, help="Class-imbalance handling.")
@click.option("--unlabeled", type=click.Path(path_type=Path), help="Folder of unlabelled images for pseudo-labels.")
@click.option("--pseudo-threshold", default=0.9, show_default=True, type=float, help="Confidence needed to join the training set.")
@click.option("--pseudo-rounds", default=1, show_default=True, type=int)
@click.option("--pseudo-epochs", type=int, help="Epochs per pseudo-label round [default: those of the last phase].")
@click.option("--select-metric", type=click.Choice(SELECT_METRICS), default="f1_macro", show_default=True, help="Validation metric that picks the best checkpoint.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--workers", default=0, show_default=True, type=int, help="Data-loading processes.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in the run folder.")
@click.option("--force", is_flag=True, help="Overwrite a run folder that holds files.")
@click.option("--strict", is_flag=True, help="Fail on unreadable images instead of skipping them.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; plain log lines only.")
def train_cmd(data_dir: Path, out_dir: Path, augment: bool | None, crop_scale: float, hflip: bool, color_jitter: float, **kw) -> None:
    """Adapt a pretrained backbone to the images (or, with --modality audio, the sound clips) in
    DATA (one folder per class).

    \b
    Examples:
      tldeploy train data/digits -o runs/fe                       # frozen backbone, cached features
      tldeploy train data/digits -o runs/ft --mode finetune --epochs 12 --image-size 64
      tldeploy train data/pets -o runs/pets --backbone resnet50 --weights ResNet50_Weights.IMAGENET1K_V2
      tldeploy train data/tones -o runs/tones --modality audio --mode finetune --epochs 8
      torchrun --nproc_per_node 2 -m tldeploy train data/digits -o runs/ddp
    """
    from tldeploy.modalities.audio import AudioAugmentConfig, LogMelConfig
    from tldeploy.modalities.preprocessing import AugmentConfig
    from tldeploy.train.training import TrainConfig, train

    _setup_logging(kw["quiet"])
    audio_keys = ("sample_rate", "clip_s", "n_fft", "hop", "n_mels", "fmin", "fmax", "log_offset")
    aug_keys = ("time_shift", "gain_db", "noise_prob", "noise_snr_db", "time_masks", "time_mask_frames", "freq_masks", "freq_mask_bins")
    audio = {k: kw.pop(k) for k in audio_keys}
    audio_aug = {k: kw.pop(k) for k in aug_keys}
    kw["in_channels"] = int(kw["in_channels"])
    ctx = click.get_current_context()
    given = [k for k in (*audio_keys, *aug_keys, "in_channels") if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE]
    aug: AugmentConfig | AudioAugmentConfig | None = None
    if kw["modality"] == "audio":
        image_only = [k for k in ("crop_scale", "hflip", "color_jitter") if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE]
        if image_only:
            raise TldeployError(f"--{image_only[0].replace('_', '-')} is image augmentation; audio has --time-shift, --gain-db, --noise-prob, --time-masks and --freq-masks")
        kw["logmel"] = LogMelConfig(**audio)
        if augment is not None or any(k in aug_keys for k in given):
            on = augment if augment is not None else kw["mode"] == "finetune"
            aug = AudioAugmentConfig(enabled=on, **audio_aug)
    else:
        if given:
            raise TldeployError(f"--{given[0].replace('_', '-')} applies to --modality audio only")
        if augment is not None:
            aug = AugmentConfig(enabled=augment, crop_scale=crop_scale, hflip=hflip, color_jitter=color_jitter)
    cfg = TrainConfig(data=data_dir, out_dir=out_dir, augment=aug, **kw)
    result = train(cfg)
    m = result.metrics
    click.echo(
        f"accuracy {m['accuracy']:.4f}  f1_macro {m['f1_macro']:.4f}  -> {result.checkpoint} "
        f"(metrics.json and plots/ beside it)"
    )


# ---------------------------------------------------------------- export


@cli.command("export", context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--out", "output", type=click.Path(path_type=Path), required=True, help="The .onnx file to write.")
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset (17-23).")
@click.option("--static-batch", type=click.IntRange(1), help="Fix the batch size [default: dynamic batch].")
@click.option("--simplify", is_flag=True, help="Run onnxslim on the exported graph.")
@click.option("--fp16", is_flag=True, help="FP16 network with float32 inputs and outputs; the softmax and the CAM normalisation stay float32.")
@click.option("--attention-plugin", is_flag=True, help="Emit each channel-attention block as one trt.plugins::ChannelAttention node (TensorRT with cpp_plugins only).")
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
@click.option("--hardware-compat", type=click.Choice(HARDWARE_COMPAT), default="none", show_default=True, help="TensorRT: run on other GPU architectures.")
@click.option("--force", is_flag=True, help="Rebuild even if an artifact is there (up to date or not).")
@click.option("--json", "as_json", is_flag=True, help="Print the build record as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings only.")
def build_cmd(onnx_file: Path, keep_float: str, batch: str, workspace: int, timing_cache: Path | None, plugins: tuple[Path, ...],
              version_compatible: bool, hardware_compat: str, as_json: bool, quiet: bool, **kw) -> None:
    import json

    _setup_logging(quiet)
    from tldeploy.engines.builder import BuildConfig, build
    from tldeploy.engines.tensorrt import BatchProfile, TrtConfig
    from tldeploy.errors import ConfigError

    if keep_float != "auto":
        try:
            keep: int | str = int(keep_float)
        except ValueError:
            raise ConfigError(f"--int8-keep-float must be 'auto' or a number, got {keep_float!r}") from None
    else:
        keep = "auto"
    if any(str(p) == "auto" for p in plugins):
        from tldeploy.engines.plugins import find_plugin_library

        plugins = tuple(find_plugin_library() if str(p) == "auto" else p for p in plugins)
    trt = TrtConfig(batch=BatchProfile.parse(batch), workspace_mib=workspace, timing_cache=timing_cache,
                    plugins=tuple(plugins), version_compatible=version_compatible, hardware_compat=hardware_compat)
    result = build(BuildConfig(onnx=onnx_file, keep_float=keep, trt=trt, **kw))
    if as_json:
        click.echo(json.dumps({"path": str(result.path), "reused": result.reused, "record": result.record}, indent=2))
        return
    r = result.record
    if result.reused:
        click.echo(f"{result.path} is up to date (record {result.path}.json); --force rebuilds it")
        return
    q = r.get("quantization")
    if q:
        kept = [u["short"] or u["name"] for u in q["float_units"]]
        click.echo(f"int8 {q['flavour']}: {q['activations']} activations, {q['weights']} weights; {q['qdq']['quantize']} Q / "
                   f"{q['qdq']['dequantize']} DQ nodes; {len(kept)} unit(s) in float{': ' + ', '.join(kept) if kept else ''}")
    check = r.get("check", {})
    if "top1_agreement" in check:
        click.echo(f"check vs FP32 ONNX on {check['images']}: top-1 agreement {check['top1_agreement']:.2%}, KL {check['kl']:.2e}"
                   + ("" if check.get("passed", True) else "  (short of the guard's bar; see the warning above)"))
    click.echo(f"wrote {result.path} ({r['size_bytes'] / 1e6:.1f} MB) and its record {result.path}.json in {result.seconds:.1f} s")


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
def diagnose_cmd(onnx_file: Path, quiet: bool, **kw) -> None:
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
    from tldeploy.engines.diagnose import DiagnoseConfig, diagnose

    result = diagnose(DiagnoseConfig(onnx=onnx_file, **kw))
    doc = result.document
    for u in result.ranking[:5]:
        click.echo(f"#{u['rank']:<3} {u['short'] or '(no module)':40s} {u['op']:12s} {u['name']:24s} score {u['score']:.2e}")
    plan = doc["plan"]
    m = plan["metrics"]
    click.echo(f"all {kw['precision']}: top-1 agreement {doc['all_low']['top1_agreement']:.2%}; plan: {len(plan['units'])} unit(s) in higher "
               f"precision, top-1 agreement {m['top1_agreement']:.2%}, KL {m['kl']:.2e} on {doc['images']['n']} images"
               + ("" if plan["passed"] else f" (short of {plan['acceptance']['min_top1_agreement']:.2%})"))
    click.echo(f"wrote {result.report_dir}/ (diagnose.json, diagnose.md, sensitivity.png, plan.json) in {result.seconds:.0f} s")


# ---------------------------------------------------------------- plugins


@cli.group("plugins", context_settings=CONTEXT)
def plugins_group() -> None:
    """The cpp_plugins libraries: fused channel-attention kernels and the TensorRT plugin.

    \b
    Example:
      tldeploy plugins build --tensorrt-root /opt/TensorRT
    """


@plugins_group.command("build", context_settings=CONTEXT)
@click.option("--build-dir", type=click.Path(path_type=Path), help="CMake build folder [default: $TLDEPLOY_CACHE/plugins, where --plugins auto looks].")
@click.option("--cuda", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True, help="Build the CUDA kernels (auto: where nvcc is found).")
@click.option("--tensorrt", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True, help="Build the TensorRT plugin (auto: where TensorRT's headers are found).")
@click.option("--tensorrt-root", type=click.Path(path_type=Path), help="TensorRT's folder, holding include/NvInferRuntime.h [default: $TENSORRT_ROOT].")
@click.option("--cuda-archs", default="87;90", show_default=True, help="GPU architectures to compile for (87 Jetson Orin, 90 Hopper).")
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(1), help="Parallel compile jobs.")
def plugins_build_cmd(build_dir: Path | None, cuda: str, tensorrt: str, tensorrt_root: Path | None, cuda_archs: str, jobs: int) -> None:
    """Build cpp_plugins with CMake into a known place and print the libraries' paths.

    \b
    Examples:
      tldeploy plugins build
      tldeploy plugins build --tensorrt-root /usr/src/tensorrt --cuda-archs "87"
      tldeploy build digits_trt.onnx --precision fp16 --plugins auto
    """
    from tldeploy.engines.plugins import PluginBuildConfig, build_plugins

    result = build_plugins(PluginBuildConfig(build_dir=build_dir, cuda=cuda, tensorrt=tensorrt, tensorrt_root=tensorrt_root,
                                             cuda_archs=cuda_archs, jobs=jobs))
    for line in result.summary:
        click.echo(line)
    click.echo(f"C ABI library:   {result.ca_library}")
    click.echo(f"TensorRT plugin: {result.plugin_library or 'not built (see above)'}")


# ---------------------------------------------------------------- bench


def _int_list(value: str, flag: str) -> tuple[int, ...]:
    from tldeploy.errors import ConfigError

    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers such as 1,8,32, got {value!r}") from None
    if not out:
        raise ConfigError(f"{flag} needs at least one value")
    return out


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
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; warnings only.")
def bench_cmd(artifacts: tuple[Path, ...], output: Path, batch_sizes: str, warmup: int, warmup_s: float | None, iters: int,
              duration: float | None, rounds: int, no_reference_latency: bool, max_top1_drop: float | None,
              min_top1_agreement: float | None, min_cosine: float | None, **kw) -> None:
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
    """
    from tldeploy.bench.bench import BenchConfig, Gates, run_bench
    from tldeploy.bench.latency import LatencyConfig
    from tldeploy.bench.report import summary_text

    _setup_logging(kw["quiet"])
    cfg = BenchConfig(
        artifacts=artifacts, output=output, batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
        latency=LatencyConfig(warmup=warmup, warmup_s=warmup_s, iters=iters, duration_s=duration, rounds=rounds),
        time_reference=not no_reference_latency,
        gates=Gates(max_top1_drop=max_top1_drop, min_top1_agreement=min_top1_agreement, min_cosine=min_cosine), **kw,
    )
    result = run_bench(cfg)
    click.echo(summary_text(result.document))
    click.echo(f"wrote {result.path}, {result.report}" + "".join(f", {p}" for p in result.plots))
    if result.failures:
        for line in result.failures:
            click.echo(f"gate failed: {line}", err=True)
        raise click.exceptions.Exit(1)


# ---------------------------------------------------------------- compare


def _bench_side(spec: str) -> tuple[dict, str | None]:
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
@click.option("--allow-env-mismatch", is_flag=True, help="Compare results from different environments (CPU, GPU, driver, threads, backend versions).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--junit", type=click.Path(path_type=Path), help="Also write a JUnit XML file for CI systems.")
def compare_cmd(baseline: str, current: str, as_json: bool, junit: Path | None, **kw) -> None:
    """Flag latency, accuracy and parity regressions between two bench results; exit 1 on any.

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


# ---------------------------------------------------------------- predict


@cli.command("predict", context_settings=CONTEXT)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("images", metavar="FILES", nargs=-1, type=click.Path(path_type=Path))
@click.option("-k", "--top-k", default=5, show_default=True, type=int)
@click.option("--cam-out", type=click.Path(path_type=Path), help="Write each image with its CAM overlaid (audio: the clip's spectrogram with its CAM), as PNG, here.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.option("--force", is_flag=True, help="Overwrite existing CAM images.")
def predict_cmd(artifact: Path, images: tuple[Path, ...], top_k: int, cam_out: Path | None, as_json: bool, force: bool) -> None:
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

    results = predict(artifact, list(images), top_k=top_k, cam_out=cam_out, force=force)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    for r in results:
        click.echo(r.image + (f"  (CAM: {r.cam_png})" if r.cam_png else ""))
        for t in r.top:
            click.echo(f"  {t['prob']:.4f}  {t['class']}")


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and a non-zero exit."""
    try:
        rc = cli.main(args=argv, prog_name="tldeploy", standalone_mode=False)
        if isinstance(rc, int):  # a command's click.exceptions.Exit(n), returned as n without standalone mode
            return rc
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        hint = ""
        if isinstance(e, click.UsageError) and e.ctx is not None:
            hint = f" (see '{e.ctx.command_path} --help')"
        click.echo(f"error: {e.format_message()}{hint}", err=True)
        return e.exit_code
    except TldeployError as e:
        click.echo(f"error: {e}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
