"""Training throughput (images/s) of both modes, and what feature reuse buys.

Runs the real training loop on the offline digits with EfficientNet-Lite0 and reports, per setting,
the steady-state epoch throughput and the wall time of the whole run (data loading, feature
caching, validation and checkpointing included).

    python benchmarks/train_throughput.py                       # 224 px, 30 images/class, 4 epochs
    python benchmarks/train_throughput.py --image-size 64 --limit-per-class 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from tldeploy.data.folders import write_digits
from tldeploy.modalities.preprocessing import AugmentConfig
from tldeploy.train.training import TrainConfig, train

SETTINGS = {
    # name: (mode, augmentation) -- feature-extract without augmentation caches feature maps
    "feature-extract, cached features": ("feature-extract", AugmentConfig.off()),
    "feature-extract, augmentation (no cache)": ("feature-extract", AugmentConfig(hflip=False)),
    "finetune (whole network)": ("finetune", AugmentConfig(hflip=False)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--limit-per-class", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_throughput.json")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits"
        write_digits(data, size=64)
        for name, (mode, aug) in SETTINGS.items():
            cfg = TrainConfig(
                data=data, out_dir=Path(tmp) / name.replace(" ", "_"), mode=mode, augment=aug,
                epochs=args.epochs, warmup_epochs=1 if mode == "finetune" else 3, image_size=args.image_size,
                limit_per_class=args.limit_per_class, batch_size=args.batch_size, quiet=True,
            )
            t0 = time.perf_counter()
            result = train(cfg)
            wall = time.perf_counter() - t0
            trained = [h for h in result.history if h["phase"] != "warmup"]
            steady = trained[1:] or trained  # the first epoch pays for warm-up
            ips = sum(h["images_per_s"] for h in steady) / len(steady)
            n = result.metrics["train_images"]
            rows.append({
                "setting": name, "mode": mode, "augment": aug.enabled, "epochs": args.epochs,
                "train_images": n, "epoch_images_per_s": round(ips, 1), "run_seconds": round(wall, 1),
                "run_images_per_s": round(n * args.epochs / wall, 1), "val_accuracy": round(result.metrics["accuracy"], 4),
            })
            print(f"{name}: {ips:.1f} img/s per epoch, {wall:.1f} s for the run", flush=True)

    cached, uncached = rows[0], rows[1]
    report = {
        "image_size": args.image_size, "limit_per_class": args.limit_per_class, "batch_size": args.batch_size,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": str(torch.__version__), "rows": rows,
        "feature_reuse_speedup_epoch": round(cached["epoch_images_per_s"] / uncached["epoch_images_per_s"], 1),
        "feature_reuse_speedup_run": round(uncached["run_seconds"] / cached["run_seconds"], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print("| setting | epoch img/s | run s | run img/s | val acc |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['epoch_images_per_s']} | {r['run_seconds']} | {r['run_images_per_s']} | {r['val_accuracy']} |")
    print(f"\nfeature reuse: {report['feature_reuse_speedup_epoch']}x per epoch, "
          f"{report['feature_reuse_speedup_run']}x for a {args.epochs}-epoch run; wrote {args.out}")


if __name__ == "__main__":
    main()
