"""What `tldeploy train` takes (`TrainConfig`, checked as it is made) and gives back (`TrainResult`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tldeploy.errors import ConfigError
from tldeploy.modalities.audio import AudioAugmentConfig, AudioPreprocessing, LogMelConfig
from tldeploy.modalities.preprocessing import AugmentConfig
from tldeploy.ood import OodGate
from tldeploy.train.options import BALANCE, BN_POLICIES, IN_CHANNELS, MODALITIES, MODES, OOD_CHOICES, SELECT_METRICS

if TYPE_CHECKING:
    from tldeploy.modalities.base import Modality
    from tldeploy.models.base import Backbone

# Each modality's training augmentation, by the modality's name.
AUGMENTS: dict[str, type[AugmentConfig] | type[AudioAugmentConfig]] = {c.modality: c for c in (AugmentConfig, AudioAugmentConfig)}


@dataclass(frozen=True)
class TrainConfig:
    """Everything `tldeploy train` takes. Defaults are the CLI's defaults."""

    data: Path
    out_dir: Path
    val: Path | None = None
    modality: str = "image"
    # Audio: the front end's parameters, and how the one-channel spectrogram meets an RGB stem.
    # 1 (default): the stem's pretrained RGB filters summed; the same function as repeating the
    # channel three times, at a third of the stem's input work and with a plain spectrogram input.
    logmel: LogMelConfig | None = None  # None: LogMelConfig() for audio
    in_channels: int = 1
    backbone: str = "efficientnet_lite0"
    weights: str = "default"
    mode: str = "feature-extract"
    epochs: int = 10  # finetune: total, warm-up included
    warmup_epochs: int = 3  # finetune stage 1: head only
    unfreeze: int = 0  # finetune stage 2: last N backbone blocks; 0 = all
    bn: str = "train"  # finetune stage 2: BatchNorm statistics of unfrozen blocks, train or frozen
    batch_size: int = 32
    lr: float = 2e-3  # head
    backbone_lr: float | None = None  # top backbone block in stage 2; default lr / 2
    layer_decay: float = 0.9  # each block below the top gets this factor more
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    reduction: int = 16
    dropout: float = 0.2
    augment: AugmentConfig | AudioAugmentConfig | None = None  # None: off for feature-extract (caching), on for finetune
    image_size: int | None = None
    val_fraction: float = 0.2
    limit_per_class: int | None = None
    balance: str = "none"
    unlabeled: Path | None = None
    pseudo_threshold: float = 0.9
    pseudo_rounds: int = 1
    pseudo_epochs: int | None = None  # default: epochs of the last phase
    select_metric: str = "f1_macro"
    ood_score: str = "energy"  # the unknown-input score fitted at the end of training: energy, msp, or none
    ood_tpr: float = 0.95  # share of in-distribution validation inputs its threshold keeps
    ood_temperature: float = 1.0
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    resume: bool = False
    force: bool = False
    strict: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(self.mode in MODES, f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        need(self.modality in MODALITIES, f"--modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        need(self.in_channels in IN_CHANNELS, f"--in-channels must be 1 or 3, got {self.in_channels}")
        if self.modality == "image":
            need(self.logmel is None and self.in_channels == 1, "--in-channels and the log-mel options need --modality audio")
        else:
            need(self.image_size is None, "--image-size is for images; an audio model's input follows --n-mels, --hop and --clip-s")
        if self.augment is not None:
            kind = self.augment.modality
            need(kind == self.modality, f"{kind} augmentation options do not apply to --modality {self.modality}")
        need(self.bn in BN_POLICIES, f"--bn must be one of {', '.join(BN_POLICIES)}, got {self.bn!r}")
        need(self.balance in BALANCE, f"--balance must be one of {', '.join(BALANCE)}, got {self.balance!r}")
        need(self.select_metric in SELECT_METRICS, f"--select-metric must be one of {', '.join(SELECT_METRICS)}")
        need(self.ood_score in OOD_CHOICES, f"--ood-score must be one of {', '.join(OOD_CHOICES)}, got {self.ood_score!r}")
        OodGate.check(self.ood_tpr, self.ood_temperature)
        need(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        need(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        need(self.lr > 0, f"--lr must be positive, got {self.lr}")
        need(0 < self.layer_decay <= 1, f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        need(self.unfreeze >= 0, f"--unfreeze must be 0 (all) or a positive block count, got {self.unfreeze}")
        need(0 < self.pseudo_threshold < 1, f"--pseudo-threshold must be in (0, 1), got {self.pseudo_threshold}")
        need(self.pseudo_rounds >= 1, f"--pseudo-rounds must be at least 1, got {self.pseudo_rounds}")
        need(self.workers >= 0, f"--workers must be 0 or more, got {self.workers}")
        need(self.device == "cpu" or self.device.startswith("cuda"), f"--device must be cpu or cuda, got {self.device!r}")
        if self.mode == "finetune":
            need(
                self.epochs > self.warmup_epochs >= 0,
                f"finetune needs --epochs ({self.epochs}) greater than --warmup-epochs ({self.warmup_epochs})",
            )

    @property
    def effective_augment(self) -> AugmentConfig | AudioAugmentConfig:
        if self.augment is not None:
            return self.augment
        kind = AUGMENTS[self.modality]
        return kind.off() if self.mode == "feature-extract" else kind()

    @property
    def effective_logmel(self) -> LogMelConfig:
        return self.logmel if self.logmel is not None else LogMelConfig()

    def create_backbone(self, train_paths: list[Path]) -> tuple[Backbone, Modality]:
        """The pretrained backbone to adapt and the preprocessing contract it is trained under: for
        images the backbone's own (at --image-size); for audio the log-mel contract with the
        spectrogram's statistics over the training clips (`train_paths`), the backbone built for
        that spectrogram and its stem adapted to --in-channels."""
        from tldeploy.models.backbones import adapt_stem, check_patch_multiple, create_backbone

        if self.modality == "audio":
            audio = AudioPreprocessing.fit(self.effective_logmel, self.in_channels, train_paths)
            return adapt_stem(create_backbone(self.backbone, self.weights, input_size=audio.backbone_size), self.in_channels), audio
        side = self.image_size
        backbone = create_backbone(self.backbone, self.weights, input_size=(side, side) if side else None)
        if side:
            check_patch_multiple(backbone, side)
        prep = backbone.spec.preprocessing
        return backbone, prep.with_input_size(side) if side else prep

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["augment"] = dataclasses.asdict(self.effective_augment)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    def check_resumes(self, old: dict[str, Any]) -> None:
        """Refuse to resume a run whose interrupted config (`old`, its to_dict) differs in a key that
        shapes training; a state from before a key existed holds that key's default."""
        new = self.to_dict()
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        changed = [k for k in RESUME_KEYS if old.get(k, defaults.get(k)) != new.get(k)]
        if changed:
            raise ConfigError(
                f"--resume: {', '.join(f'--{k.replace(chr(95), chr(45))} was {old.get(k)!r}' for k in changed)} "
                "in the interrupted run; pass the same values"
            )


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    pseudo_labels: list[dict[str, Any]] = field(default_factory=list)


# Keys of the config that must match when a run is resumed.
RESUME_KEYS = ("modality", "logmel", "in_channels", "backbone", "weights", "mode", "epochs", "warmup_epochs", "unfreeze", "bn", "image_size", "seed", "batch_size")
