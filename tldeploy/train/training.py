"""The training loop: feature caching, the phases (`phases`), pseudo-labels, resume, DDP.

While the backbone is frozen and augmentation is off, every image's feature map is computed once
and reused by later epochs: on a CPU that is most of the cost of an epoch.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tldeploy._io import probe_output, write_json
from tldeploy.data.folders import MEDIA, even_spread, find_files, limit_per_class, resolve_train_val
from tldeploy.errors import ConfigError, OutputExistsError
from tldeploy.modalities.base import Modality
from tldeploy.models.checkpoints import load_train_state, plain, save_checkpoint, save_train_state
from tldeploy.models.heads import AdaptedModel, create_model
from tldeploy.ood import OodGate
from tldeploy.train.config import TrainConfig, TrainResult
from tldeploy.train.distributed import Dist, seed_everything
from tldeploy.train.loaders import balanced_sampler, class_weights, make_loader
from tldeploy.train.metrics import classification_metrics, write_plots
from tldeploy.train.phases import Phase, optimizer_for, plan_phases, set_train_modes
from tldeploy.train.progress import Progress

__all__ = ["TrainConfig", "TrainResult", "train"]

log = logging.getLogger(__name__)

SHIFT_SAMPLE = 512  # training inputs whose pooled features the checkpoint keeps for `tldeploy shift`


def train(cfg: TrainConfig) -> TrainResult:
    """Train an adapted model as `cfg` says; writes RUN_DIR/model.pt, metrics.json and plots/."""
    dist = Dist(cfg.device)
    try:
        return _Trainer(cfg, dist).run()
    finally:
        dist.close()


class _Trainer:
    def __init__(self, cfg: TrainConfig, dist: Dist) -> None:
        self.cfg, self.dist = cfg, dist
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        if dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if dist.enabled and cfg.balance == "sampler":
            raise ConfigError("--balance sampler cannot be combined with torchrun; use --balance weights")
        self.run_dir = Path(cfg.out_dir)
        self.ckpt_path = self.run_dir / "model.pt"
        self.state_path = self.run_dir / "last.pt"
        self._check_run_dir()
        seed_everything(cfg.seed)

        media = MEDIA[cfg.modality]
        self.train_set, self.val_set = resolve_train_val(
            cfg.data, cfg.val, val_fraction=cfg.val_fraction, seed=cfg.seed, strict=cfg.strict, media=media
        )
        if cfg.limit_per_class:
            self.train_set = limit_per_class(self.train_set, cfg.limit_per_class, cfg.seed)
        self.classes = self.train_set.classes
        self.unlabeled = find_files(cfg.unlabeled, strict=cfg.strict, flag="--unlabeled", media=media) if cfg.unlabeled else []

        self.prep: Modality
        backbone, self.prep = cfg.create_backbone(self.train_set.paths)
        self.backbone_spec = backbone.spec
        self.augment = cfg.effective_augment
        frontend = self.prep.frontend(self.augment)  # audio's SpecAugment masks act there, in training mode only
        self.model: AdaptedModel = create_model(backbone, len(self.classes), cfg.reduction, cfg.dropout, frontend).to(self.device)
        self.blocks = backbone.blocks()
        self.cache: dict[Path, torch.Tensor] = {}
        self.progress = Progress()
        self.ood: OodGate | None = None  # fitted on the validation set at the end (`_finish`)
        self.val_logits = np.zeros((0, len(self.classes)), np.float32)
        self.resumed = self._load_state() if cfg.resume else None

    # ------------------------------------------------------------ setup

    def _check_run_dir(self) -> None:
        cfg = self.cfg
        if cfg.resume:
            if not self.state_path.is_file():
                raise ConfigError(f"--resume: {self.state_path} does not exist; start the run without --resume")
            return
        if self.run_dir.exists() and any(self.run_dir.iterdir()) and not cfg.force:
            raise OutputExistsError(
                f"run folder {self.run_dir} already holds files; pass --force to overwrite or --resume to continue"
            )
        probe_output(self.ckpt_path)  # an unwritable -o is found before the training, not after it

    def _configure(self, phase: Phase) -> tuple[torch.optim.Optimizer, nn.Module]:
        opt = optimizer_for(self.model, self.blocks, phase, self.cfg)
        trained: nn.Module = self.model if phase.train_backbone else self.model.head
        if self.dist.enabled:
            trained = nn.parallel.DistributedDataParallel(trained)
        return opt, trained

    # ------------------------------------------------------------ data

    def _train_items(self) -> tuple[list[Path], list[int]]:
        return self.train_set.paths + self.progress.pseudo_paths, self.train_set.labels + self.progress.pseudo_labels

    def _use_cache(self, phase: Phase) -> bool:
        return not phase.train_backbone and not self.augment.enabled

    def _features(self, paths: list[Path], desc: str) -> torch.Tensor:
        """Backbone feature maps for `paths`, computed once per image while the backbone is frozen."""
        missing = [p for p in paths if p not in self.cache]
        if missing:
            loader = self._loader(missing, [0] * len(missing), augment=False, shuffle=False, infer=True)
            self.model.backbone.eval()
            done = 0
            with torch.no_grad():
                for x, _ in self._bar(loader, desc):
                    feats = self.model.embed(x.to(self.device)).cpu()
                    for i, f in enumerate(feats):
                        self.cache[missing[done + i]] = f
                    done += len(feats)
        return torch.stack([self.cache[p] for p in paths])

    def _loader(self, paths, labels, *, augment: bool, shuffle: bool, sampler=None, infer: bool = False) -> DataLoader:
        ds: Dataset = self.prep.dataset(paths, labels, self.augment if augment else None)
        return self._make_loader(ds, shuffle=shuffle, sampler=sampler, infer=infer)

    def _make_loader(self, ds: Dataset, *, shuffle: bool, sampler=None, infer: bool = False) -> DataLoader:
        c = self.cfg
        return make_loader(
            ds, batch_size=c.batch_size, seed=c.seed, workers=c.workers, distributed=self.dist.enabled,
            shuffle=shuffle, sampler=sampler, infer=infer, pin_memory=self.device.type == "cuda",
        )

    def _train_loader(self, phase: Phase) -> DataLoader:
        paths, labels = self._train_items()
        sampler = None
        if self.cfg.balance == "sampler":
            sampler = balanced_sampler(labels, self.cfg.seed + len(self.progress.history))
        if self._use_cache(phase):
            ds: Dataset = TensorDataset(self._features(paths, "features (train)"), torch.tensor(labels))
            return self._make_loader(ds, shuffle=True, sampler=sampler)
        return self._loader(paths, labels, augment=True, shuffle=True, sampler=sampler)

    def _class_weights(self) -> torch.Tensor | None:
        if self.cfg.balance != "weights":
            return None
        return class_weights(self._train_items()[1], len(self.classes), self.device)

    # ------------------------------------------------------------ loops

    def _bar(self, it, desc: str, **kw):
        from tqdm.auto import tqdm

        return tqdm(it, desc=desc, leave=False, disable=self.cfg.quiet or not self.dist.main, dynamic_ncols=True, **kw)

    def _predict(self, paths: list[Path], cached: bool, desc: str) -> np.ndarray:
        return _softmax(self._logits(paths, cached, desc))

    def _logits(self, paths: list[Path], cached: bool, desc: str) -> np.ndarray:
        self.model.eval()
        with torch.no_grad():
            if cached:
                feats = self._features(paths, desc)
                logits = torch.cat([self.model.head(f.to(self.device)) for f in feats.split(256)])
            else:
                loader = self._loader(paths, [0] * len(paths), augment=False, shuffle=False, infer=True)
                logits = torch.cat([self.model(x.to(self.device)).cpu() for x, _ in self._bar(loader, desc)])
        return logits.float().cpu().numpy()

    def _evaluate(self, cached: bool) -> tuple[dict[str, Any], np.ndarray]:
        self.val_logits = self._logits(self.val_set.paths, cached, "validate")  # the last pass's; the OOD gate is fitted on them
        probs = _softmax(self.val_logits)
        return classification_metrics(np.array(self.val_set.labels), probs, self.classes), probs

    def _run_epoch(self, phase_idx: int, phase: Phase, opt, trained: nn.Module, loader: DataLoader, epoch: int) -> dict[str, Any]:
        cached = self._use_cache(phase)
        set_train_modes(self.model, self.blocks, phase, self.cfg)
        # Each epoch's shuffle depends only on (seed, phase, epoch), so a resumed run repeats it.
        epoch_seed = self.cfg.seed + 1000 * phase_idx + epoch
        if isinstance(loader.sampler, torch.utils.data.DistributedSampler):
            loader.sampler.set_epoch(epoch_seed)
        for g in (loader.generator, getattr(loader.sampler, "generator", None)):
            if g is not None:
                g.manual_seed(epoch_seed)
        loss_fn = nn.CrossEntropyLoss(weight=self._class_weights(), label_smoothing=self.cfg.label_smoothing)
        total, seen, t0 = 0.0, 0, time.perf_counter()
        for x, y in self._bar(loader, f"{phase.name} {epoch + 1}/{phase.epochs}"):
            x, y = x.to(self.device), y.to(self.device)
            if not phase.train_backbone and not cached:
                with torch.no_grad():
                    x = self.model.embed(x)
            logits = trained(x)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            seen += len(y)
        secs = time.perf_counter() - t0
        return {"train_loss": total / max(seen, 1), "seconds": secs, "images_per_s": seen * self.dist.world / secs}

    def _label_unlabeled(self, phase: Phase) -> None:
        """Confident predictions on not-yet-used unlabelled images join the training set."""
        used = set(self.progress.pseudo_paths)
        todo = [p for p in self.unlabeled if p not in used]
        added: dict[str, int] = {c: 0 for c in self.classes}
        if todo:
            cached = self.cfg.mode == "feature-extract"
            probs = self._predict(todo, cached, f"pseudo-label round {phase.pseudo_round}")
            conf, pred = probs.max(axis=1), probs.argmax(axis=1)
            for p, c, y in zip(todo, conf, pred, strict=True):
                if c >= self.cfg.pseudo_threshold:
                    self.progress.pseudo_paths.append(p)
                    self.progress.pseudo_labels.append(int(y))
                    added[self.classes[int(y)]] += 1
        n = sum(added.values())
        self.progress.pseudo_report.append(
            {"round": phase.pseudo_round, "added": n, "per_class": added, "total": len(self.progress.pseudo_paths), "remaining": len(todo) - n}
        )
        self._info(
            "pseudo-label round %d: %d of %d unlabelled images joined (threshold %.2f): %s",
            phase.pseudo_round, n, len(todo), self.cfg.pseudo_threshold,
            ", ".join(f"{k}={v}" for k, v in added.items() if v) or "none",
        )
        if n == 0:
            self.progress.pseudo_done = True

    def _info(self, *args) -> None:
        if self.dist.main:
            log.info(*args)

    # ------------------------------------------------------------ checkpoints

    def _metadata(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "backbone": {
                "name": self.backbone_spec.name,
                "weights": self.backbone_spec.weights,
                "num_features": self.model.backbone.num_features,
                "classifier_name": self.backbone_spec.classifier_name,
            },
            "classes": list(self.classes),
            "preprocessing": self.prep.to_dict(),
            "head": self.model.head.cfg.to_dict(),
            "mode": self.cfg.mode,
            "metrics": {k: metrics[k] for k in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "roc_auc_ovr")},
            "train_config": self.cfg.to_dict(),
            "ood": self.ood.to_dict() if self.ood is not None else None,
        }

    def _shift_tensors(self) -> dict[str, torch.Tensor]:
        """What `tldeploy shift` compares target data with, so the training data is not needed:
        pooled backbone features of up to SHIFT_SAMPLE training inputs (float16), and the
        validation set's OOD scores."""
        paths = self.train_set.paths
        if len(paths) > SHIFT_SAMPLE:
            paths = [paths[i] for i in even_spread(len(paths), SHIFT_SAMPLE)]
        if self.cfg.mode != "feature-extract":
            self.cache.clear()  # maps of an earlier backbone
        feats = self._features(list(paths), "features (shift sample)").float().mean(dim=(2, 3))
        out = {"source_features": feats.half()}
        if self.ood is not None:
            out["val_ood_scores"] = torch.from_numpy(self.ood.scores(self.val_logits).astype(np.float32))
        return out

    def _save_state(self, phase_idx: int, epoch_done: int, opt, sched) -> None:
        if not self.dist.main:
            return
        save_train_state(
            self.state_path,
            {
                "model": self.model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "phase": phase_idx,
                "epoch": epoch_done,
                **self.progress.to_state(),
                "config": plain(self.cfg.to_dict()),
                "rng": torch.get_rng_state(),
            },
        )

    def _load_state(self) -> dict[str, Any]:
        from tldeploy.models.checkpoints import CHECKPOINT_FORMAT, read_torch_file

        state = load_train_state(self.state_path)
        self.cfg.check_resumes(state["config"])
        self.model.load_state_dict(state["model"])
        torch.set_rng_state(state["rng"])
        best = None
        if self.ckpt_path.is_file():
            best = read_torch_file(self.ckpt_path, CHECKPOINT_FORMAT, "checkpoint")["state_dict"]
        self.progress = Progress.from_state(state, best)
        self._info("resuming %s at phase %d, epoch %d", self.run_dir, state["phase"], state["epoch"])
        return state

    # ------------------------------------------------------------ main

    def run(self) -> TrainResult:
        cfg = self.cfg
        self._info(
            "training %s (%d blocks, weights %s) on %d %s of %d classes, validating on %d; input %s; mode %s",
            self.backbone_spec.name, len(self.blocks), self.backbone_spec.weights, len(self.train_set),
            self.prep.media.noun, len(self.classes), len(self.val_set),
            self.prep.shape_text, cfg.mode,
        )
        if self.dist.enabled:
            self._info("distributed over %d processes (rank 0 writes)", self.dist.world)
        phases = plan_phases(self.cfg, bool(self.unlabeled))
        start_phase, start_epoch, resumed = 0, 0, self.resumed
        if resumed is not None:
            start_phase, start_epoch = int(resumed["phase"]), int(resumed["epoch"])
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        for pi, phase in enumerate(phases):
            if pi < start_phase or (pi == start_phase and start_epoch >= phase.epochs):
                continue
            fresh = not (resumed is not None and pi == start_phase)
            if phase.pseudo_round:
                if self.progress.pseudo_done:
                    break
                if fresh:
                    if self.progress.best_state is not None:
                        self.model.load_state_dict(self.progress.best_state)
                    self._label_unlabeled(phase)
                    if self.progress.pseudo_done:
                        break
            if phase.train_backbone:
                self.cache.clear()  # feature maps change from here on
            opt, trained = self._configure(phase)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=phase.epochs)
            first = 0
            if not fresh:
                opt.load_state_dict(resumed["optimizer"])
                sched.load_state_dict(resumed["scheduler"])
                first = start_epoch
            loader = self._train_loader(phase)
            for epoch in range(first, phase.epochs):
                stats = self._run_epoch(pi, phase, opt, trained, loader, epoch)
                sched.step()
                # Validation images always take the eval transform, so their feature maps stay
                # valid for as long as the backbone has not been trained.
                metrics, _ = self._evaluate(cached=not any(p.train_backbone for p in phases[: pi + 1]))
                self._record_epoch(phase, epoch, stats, metrics)
                self._save_state(pi, epoch + 1, opt, sched)
            resumed = None
        return self._finish()

    def _record_epoch(self, phase: Phase, epoch: int, stats: dict[str, Any], metrics: dict[str, Any]) -> None:
        # Ties on the metric (common once validation saturates) go to the lower log loss.
        score = (float(metrics[self.cfg.select_metric]), -float(metrics["log_loss"]))
        improved = score > self.progress.best_score
        row = {
            "phase": phase.name, "epoch": epoch + 1, **stats,
            "val_accuracy": metrics["accuracy"], "val_f1_macro": metrics["f1_macro"], "best": improved,
        }
        self.progress.history.append(row)
        self._info(
            "%s epoch %d/%d: loss %.4f, val acc %.4f, val f1 %.4f, %.0f img/s%s",
            phase.name, epoch + 1, phase.epochs, stats["train_loss"], metrics["accuracy"],
            metrics["f1_macro"], stats["images_per_s"], " *" if improved else "",
        )
        if improved:
            self.progress.best_score = score
            self.progress.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            if self.dist.main:
                save_checkpoint(self.ckpt_path, self.model, self._metadata(metrics))

    def _finish(self) -> TrainResult:
        if self.progress.best_state is not None:
            self.model.load_state_dict(self.progress.best_state)
        metrics, probs = self._evaluate(cached=self.cfg.mode == "feature-extract")
        if self.cfg.ood_score != "none":
            self.ood = OodGate.fit(self.val_logits, self.cfg.ood_score, self.cfg.ood_tpr, self.cfg.ood_temperature)
            metrics["ood"] = self.ood.to_dict()
            self._info("OOD gate: %s", self.ood.describe())
        metrics["selected_by"] = self.cfg.select_metric
        metrics["history"] = self.progress.history
        metrics["pseudo_labels"] = self.progress.pseudo_report
        metrics["train_images"] = len(self.train_set)
        metrics["train_counts"] = self.train_set.counts()
        if self.dist.main:
            write_json(self.run_dir / "metrics.json", metrics)
            write_plots(self.run_dir / "plots", np.array(self.val_set.labels), probs, self.classes)
            save_checkpoint(self.ckpt_path, self.model, self._metadata(metrics), self._shift_tensors())
            self.state_path.unlink(missing_ok=True)
        self.dist.barrier()
        self._info("best %s %.4f; accuracy %.4f; wrote %s", self.cfg.select_metric, self.progress.best_score[0], metrics["accuracy"], self.ckpt_path)
        return TrainResult(self.run_dir, self.ckpt_path, metrics, self.progress.history, self.progress.pseudo_report)


def _softmax(logits: np.ndarray) -> np.ndarray:
    return softmax(logits, axis=1).astype(np.float32)
