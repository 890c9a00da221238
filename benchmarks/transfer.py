"""What ImageNet weights buy on few examples, measured and recorded (not gated: how much a trained
model gains is a property of one training run, and training numerics differ between CPU classes):

    python benchmarks/transfer.py            # about 3 minutes on 2 cores

- digits, 20 images per class, 64 px, finetune 15 epochs (2 head-only): EfficientNet-Lite0 from the
  packaged ImageNet weights against the same network from random weights;
- tones (audio), 20 clips per class, 64 mel bands, finetune 6 epochs (2 head-only), no augmentation:
  the same pair.
Writes results/transfer.json with validation accuracies, seconds and the CPU's name and class. The
tests check instead that training starts from the packaged weights (tests/unit) and that those
weights are real (tests/integration/test_lite0_digits.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tldeploy._io import write_json
from tldeploy.data.folders import write_digits
from tldeploy.data.tones import write_tones
from tldeploy.modalities.audio import AudioAugmentConfig, LogMelConfig
from tldeploy.modalities.preprocessing import AugmentConfig
from tldeploy.runtime.host import cpu_info
from tldeploy.train.training import TrainConfig, train

FEW = 20


def _run(cfg: TrainConfig) -> dict:
    t0 = time.perf_counter()
    accuracy = train(cfg).metrics["accuracy"]
    return {"accuracy": round(accuracy, 4), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "transfer.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="transfer-"))
    write_digits(work / "digits", size=64, val_fraction=0.2, seed=0)
    write_tones(work / "tones", per_class=60)
    result: dict = {"cpu": cpu_info().get("name"), "cpu_class": cpu_info().get("class"), "per_class": FEW}
    for weights in ("default", "none"):
        key = "imagenet" if weights == "default" else "scratch"
        result.setdefault("digits", {})[key] = _run(TrainConfig(
            data=work / "digits", out_dir=work / f"digits-{key}", mode="finetune", weights=weights, image_size=64,
            limit_per_class=FEW, epochs=15, warmup_epochs=2, batch_size=32, augment=AugmentConfig(hflip=False), quiet=True))
        result.setdefault("tones", {})[key] = _run(TrainConfig(
            data=work / "tones", out_dir=work / f"tones-{key}", modality="audio", logmel=LogMelConfig(n_mels=64), weights=weights,
            mode="finetune", epochs=6, warmup_epochs=2, limit_per_class=FEW, augment=AudioAugmentConfig.off(), quiet=True))
        print(key, result["digits"][key], result["tones"][key], flush=True)
    for task in ("digits", "tones"):
        result[task]["gain_points"] = round(100 * (result[task]["imagenet"]["accuracy"] - result[task]["scratch"]["accuracy"]), 1)
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
