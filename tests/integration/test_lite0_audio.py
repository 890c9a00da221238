"""Audio through the real EfficientNet-Lite0 (issue 7's acceptance): ImageNet weights against the
same network trained from scratch on a few clips per class, and ONNX Runtime FP32/INT8 against
PyTorch on the trained model.

To keep the suite short both runs see 20 clips per class for 6 epochs (2 head-only), without
augmentation, on 64-band spectrograms (the default is 96 bands, half as much work again)."""

import time

import pytest

from tldeploy.bench.bench import BenchConfig, run_bench
from tldeploy.bench.latency import LatencyConfig
from tldeploy.data.tones import write_tones
from tldeploy.engines.builder import BuildConfig, build
from tldeploy.export.onnx_export import ExportConfig, export_onnx
from tldeploy.modalities.audio import AudioAugmentConfig, LogMelConfig
from tldeploy.train.training import TrainConfig, train

FEW = 20  # clips per class in training (the issue allows up to 50)


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones") / "tones"
    write_tones(root, per_class=60)  # 45 training and 15 validation clips per class
    return root


def _finetune(tones, out, weights: str):
    t0 = time.perf_counter()
    result = train(TrainConfig(
        data=tones, out_dir=out, modality="audio", logmel=LogMelConfig(n_mels=64), weights=weights, mode="finetune",
        epochs=6, warmup_epochs=2, limit_per_class=FEW, augment=AudioAugmentConfig.off(), quiet=True,
    ))
    print(f"\naudio, efficientnet_lite0 weights={weights}, {FEW} clips/class: accuracy {result.metrics['accuracy']:.4f} "
          f"in {time.perf_counter() - t0:.0f} s")
    return result


@pytest.fixture(scope="module")
def pretrained(tones, tmp_path_factory):
    return _finetune(tones, tmp_path_factory.mktemp("audio_pre") / "run", "default")


def test_imagenet_weights_beat_training_from_scratch(pretrained, tones, tmp_path):
    scratch = _finetune(tones, tmp_path / "scratch", "none")
    pre, base = pretrained.metrics["accuracy"], scratch.metrics["accuracy"]
    assert pretrained.metrics["train_images"] == scratch.metrics["train_images"] == 7 * FEW
    assert pre >= 0.6 and pre >= base + 0.25, (pre, base)  # chance is 1/7


def test_onnx_runtime_agrees_with_pytorch_on_the_audio_model(pretrained, tones, tmp_path):
    onnx_path = export_onnx(ExportConfig(pretrained.checkpoint, tmp_path / "tones.onnx", data=tones / "val")).path
    fp32 = build(BuildConfig(onnx_path, "fp32", backend="ort")).path
    int8 = build(BuildConfig(onnx_path, "int8", backend="ort", calib_data=tones / "train")).path
    doc = run_bench(BenchConfig(
        artifacts=(fp32, int8), output=tmp_path / "bench.json", reference=pretrained.checkpoint, data=tones / "val",
        batch_sizes=(1,), latency=LatencyConfig(warmup=2, iters=5, rounds=2), quiet=True,
    )).document
    ref, f32, i8 = doc["results"]
    print(f"\naudio bench on {doc['data']['images']} clips: reference {ref['accuracy']:.4f}; ORT FP32 {f32['accuracy']:.4f}, "
          f"agreement {f32['parity']['top1_agreement']:.4f}; ORT INT8 {i8['accuracy']:.4f}, agreement {i8['parity']['top1_agreement']:.4f}")
    assert f32["parity"]["top1_agreement"] >= 0.995 and f32["parity"]["logits_max_abs"] < 1e-3
    assert i8["accuracy"] >= ref["accuracy"] - 0.05
