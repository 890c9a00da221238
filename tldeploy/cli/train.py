"""`tldeploy train`."""

from __future__ import annotations

from pathlib import Path

import click

from tldeploy.cli._common import CONTEXT, _setup_logging, cli
from tldeploy.errors import TldeployError
from tldeploy.train.options import BALANCE, BN_POLICIES, IN_CHANNELS, MODALITIES, MODES, OOD_CHOICES, SELECT_METRICS

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
@click.option("--in-channels", type=click.Choice([str(c) for c in IN_CHANNELS]), default="1", show_default=True, help="audio: 1 = the stem's RGB filters summed (same function, a third of the stem's input work); 3 = the spectrogram repeated.")
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
@click.option("--ood-score", type=click.Choice(OOD_CHOICES), default="energy", show_default=True, help="Unknown-input score whose threshold is fitted on the validation set and carried by every artifact (none: no gate).")
@click.option("--ood-tpr", default=0.95, show_default=True, type=float, help="Share of in-distribution validation inputs the OOD threshold keeps known.")
@click.option("--ood-temperature", default=1.0, show_default=True, type=float, help="Temperature T of the energy score -T*logsumexp(logits/T).")
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
