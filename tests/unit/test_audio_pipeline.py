"""Audio through the whole pipeline on the tiny backbone: reading and resampling, the built-in
tones, the front end as a module, the one-channel stem, train -> export -> build (ORT FP32/INT8)
-> bench -> predict with spectrogram CAMs, and bad input."""

import json

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch

from tldeploy.bench.bench import BenchConfig, run_bench
from tldeploy.bench.latency import LatencyConfig
from tldeploy.cli import main
from tldeploy.contract import read_contract
from tldeploy.data.folders import AUDIO, scan_class_folders
from tldeploy.data.tones import TONE_CLASSES, write_tones
from tldeploy.engines.builder import BuildConfig, build
from tldeploy.engines.capabilities import PrecisionTarget
from tldeploy.engines.fp16 import fp16_model
from tldeploy.engines.graph import frontend_nodes
from tldeploy.engines.quant_config import Int8Options
from tldeploy.errors import ConfigError, DataError
from tldeploy.export.onnx_export import ExportConfig, export_onnx
from tldeploy.modalities.audio import (
    AudioAugmentConfig,
    AudioPreprocessing,
    LogMelConfig,
    augment_waveform,
    log_mel,
    read_audio,
)
from tldeploy.modalities.audio.frontend import LogMelFrontEnd
from tldeploy.models.backbones import adapt_stem, create_backbone
from tldeploy.ood import OodGate
from tldeploy.predict import predict
from tldeploy.runtime.runners import OrtRunner, TorchRunner, run_batches
from tldeploy.train.training import TrainConfig, train


@pytest.fixture(scope="session")
def tones(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones") / "tones"
    write_tones(root, per_class=8)
    return root


@pytest.fixture(scope="session")
def tiny_audio(tones, tmp_path_factory):
    """(checkpoint, FP32 ONNX) of tiny_cnn trained on the tones for a few epochs."""
    root = tmp_path_factory.mktemp("tinyaudio")
    cfg = TrainConfig(data=tones, out_dir=root / "run", modality="audio", backbone="tiny_cnn", mode="finetune", epochs=3,
                      warmup_epochs=1, batch_size=8, lr=1e-2, quiet=True)
    ckpt = train(cfg).checkpoint
    return ckpt, export_onnx(ExportConfig(ckpt, root / "tiny_audio.onnx", data=tones / "val")).path


def test_read_audio_mixes_down_and_resamples(tmp_path):
    t = np.arange(22_050) / 22_050
    left, right = np.sin(2 * np.pi * 1000 * t), 0.5 * np.sin(2 * np.pi * 1000 * t)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 22_050, subtype="FLOAT")
    x = read_audio(tmp_path / "s.wav", 16_000)
    assert x.dtype == np.float32 and len(x) == 16_000
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) - 1000) <= 1  # 1 Hz bins: the tone is still at 1 kHz
    assert abs(np.sqrt(2) * x[1000:15000].std() - 0.75) < 0.01  # (1 + 0.5) / 2 after the mix-down


def test_tones_set_has_every_class_and_varied_files(tones):
    listing = scan_class_folders(tones / "train", media=AUDIO)
    assert listing.classes == sorted(TONE_CLASSES) and len(listing) == 7 * 6
    infos = [sf.info(str(p)) for p in listing.paths]
    assert {i.samplerate for i in infos} == {16_000, 22_050} and {i.channels for i in infos} == {1, 2}
    assert min(i.duration for i in infos) < 1.0 < max(i.duration for i in infos)


def test_front_end_normalises_repeats_and_masks_only_in_training():
    prep = AudioPreprocessing(LogMelConfig(), mean=-5.0, std=2.0, in_channels=3)
    front = LogMelFrontEnd(prep)
    x = torch.randn(2, prep.logmel.num_samples) * 0.1
    z = front(x)
    assert z.shape == (2, 3, 96, prep.logmel.num_frames) and torch.equal(z[:, 0], z[:, 2])
    assert torch.allclose(z[:, 0], (log_mel(x, prep.logmel) + 5.0) / 2.0)
    front.augment = AudioAugmentConfig(time_masks=2, time_mask_frames=20, freq_masks=2, freq_mask_bins=10)
    assert torch.equal(front.eval()(x), z)  # eval: no masks
    masked = front.train()(x)
    assert (masked == 0).float().mean() > 0.02 and front.state_dict() == {}  # nothing of the front end is saved


def test_waveform_augmentation_shifts_scales_and_adds_noise():
    aug = AudioAugmentConfig(time_shift=0.2, gain_db=6.0, noise_prob=1.0, noise_snr_db=(20.0, 20.0))
    wave = np.zeros(1000, np.float32)
    wave[400:600] = 0.5
    out = augment_waveform(wave, aug, np.random.default_rng(1))
    assert out.dtype == np.float32 and out.shape == wave.shape and not np.allclose(out, wave)
    loud = np.abs(out) > 0.2
    assert 150 <= loud.sum() <= 200 and abs(np.argmax(loud) - 400) <= 200  # moved by at most 20% of the clip


def test_one_channel_stem_is_the_pretrained_stem_on_a_repeated_input():
    three = create_backbone("tiny_cnn").eval()
    one = adapt_stem(create_backbone("tiny_cnn").eval(), 1)
    one.load_state_dict({k: (v.sum(1, keepdim=True) if v.ndim == 4 and v.shape[1] == 3 else v) for k, v in three.state_dict().items()})
    x = torch.randn(2, 1, 32, 40)
    with torch.no_grad():
        assert torch.allclose(one(x), three(x.expand(-1, 3, -1, -1)), atol=1e-5)
    with pytest.raises(ConfigError, match="--in-channels"):
        adapt_stem(create_backbone("tiny_cnn"), 2)


def test_audio_export_contract_and_graph(tiny_audio):
    ckpt, onnx_path = tiny_audio
    contract = read_contract(onnx_path)
    prep = contract.preprocessing
    assert isinstance(prep, AudioPreprocessing) and contract.input_name == "audio" and prep.in_channels == 1
    assert prep.std > 0 and -20 < prep.mean < 5  # the training clips' log-mel statistics
    model = onnx.load(str(onnx_path))
    assert [i.name for i in model.graph.input] == ["audio"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == prep.logmel.num_samples and dims[0].dim_param  # dynamic batch, fixed clip
    ops = {n.op_type for n in model.graph.node}
    assert "Log" in ops and not ops & {"STFT", "DFT", "MelWeightMatrix"}  # a front end every backend takes
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["tldeploy.preprocessing"])["logmel"]["n_mels"] == 96
    assert "resample to 16000 Hz" in props["tldeploy.preprocessing_rule"]


def test_audio_builds_keep_the_front_end_in_float(tiny_audio, tones, tmp_path):
    _, onnx_path = tiny_audio
    fp32 = build(BuildConfig(onnx_path, PrecisionTarget("fp32", "ort"), output=tmp_path / "a.fp32.onnx")).path
    int8 = build(BuildConfig(onnx_path, PrecisionTarget("int8", "ort"), calib_data=tones / "train", output=tmp_path / "a.int8.onnx",
                             int8=Int8Options(keep_float=0))).path
    q = onnx.load(str(int8))
    front = frontend_nodes(q, read_contract(q))
    producers = {o: n for n in q.graph.node for o in n.output}
    assert front and all(producers[i].op_type != "DequantizeLinear" for n in q.graph.node if n.name in front for i in n.input if i in producers)
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) > 3  # the backbone is quantized
    half = fp16_model(onnx.load(str(onnx_path)))
    onnx.checker.check_model(half)  # a valid ONNX: nodes in topological order, casts included
    g = half.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    front = frontend_nodes(onnx.load(str(onnx_path)), read_contract(onnx_path))
    log_node = next(n for n in g.node if n.op_type == "Log")
    assert log_node.name in front and types[log_node.input[0]] == types[log_node.output[0]] == onnx.TensorProto.FLOAT
    for n in g.node:  # every tensor of the front end has a recorded type, and none is half precision
        if n.name in front:
            for t in [*n.input, *n.output]:
                assert types[t] != onnx.TensorProto.FLOAT16, (n.name, t)
    # ... and nothing on the way from the audio input to the log-mel rounds to half precision.
    producer = {o: n for n in g.node for o in n.output}
    todo, path = list(log_node.input), []
    while todo:
        if (n := producer.get(todo.pop())) is not None:
            path.append(n)
            todo += list(n.input)
    to_half = [n.name for n in path if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)]
    assert any(n.name in front for n in path) and not to_half, to_half
    x = np.stack([AudioPreprocessing.from_dict(read_contract(onnx_path).preprocessing.to_dict()).load(p)
                  for p in sorted((tones / "val").rglob("*.wav"))])
    with OrtRunner(fp32) as a, TorchRunner(tiny_audio[0]) as ref:
        assert ref.input_spec()["audio"].shape == (None, 16_000)
        r, o = run_batches(ref, x), run_batches(a, x)
    assert np.abs(r["logits"] - o["logits"]).max() < 1e-4 and (r["logits"].argmax(1) == o["logits"].argmax(1)).all()


def test_audio_bench_and_predict_with_spectrogram_cams(tiny_audio, tones, tmp_path):
    ckpt, onnx_path = tiny_audio
    out = run_bench(BenchConfig(artifacts=(onnx_path,), output=tmp_path / "bench.json", reference=ckpt, data=tones / "val",
                                batch_sizes=(2,), latency=LatencyConfig(warmup=1, iters=3, rounds=2), quiet=True))
    ref, art = out.document.to_json()["results"]
    assert art["parity"]["top1_agreement"] == 1.0 and art["accuracy"] == ref["accuracy"]
    assert out.document.to_json()["data"]["labelled"] and art["latency"][0]["batch"] == 2
    clips = sorted((tones / "val" / "chirp_up").glob("*.wav"))
    preds = predict(onnx_path, clips, top_k=3, cam_out=tmp_path / "cams")
    assert len(preds) == 2 and all(len(p.top) == 3 for p in preds)
    png = tmp_path / "cams" / f"{clips[0].stem}_cam.png"
    assert preds[0].cam_png == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    assert preds[0].cam.shape == (24, 25)  # tiny_cnn's stride 4 over 96 mel bands x 97 frames


def test_bad_audio_is_skipped_with_a_listing_or_fatal_with_strict(tones, tmp_path, caplog):
    data = tmp_path / "d"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i, p in enumerate(sorted((tones / "train" / "tone").glob("*.wav"))[:3]):
            (data / c / f"{i}.wav").write_bytes(p.read_bytes())
    (data / "a" / "notes.txt").write_text("not audio")
    (data / "a" / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    sf.write(data / "b" / "empty.wav", np.zeros(0, np.float32), 16_000)
    listing = scan_class_folders(data, media=AUDIO)
    assert len(listing) == 6
    text = caplog.text
    assert "skipped 3" in text and "notes.txt" in text and "broken.wav (not readable audio" in text and "empty.wav (zero-length clip)" in text
    with pytest.raises(DataError, match="3 unreadable file.*--strict"):
        scan_class_folders(data, media=AUDIO, strict=True)
    (data / "c").mkdir()
    (data / "c" / "x.txt").write_text("no sound here")
    with pytest.raises(DataError, match=r"class folder\(s\) .*c hold no readable audio files"):
        scan_class_folders(data, media=AUDIO)


def test_cli_audio_errors_are_one_line(tones, tiny_audio, tmp_path, capsys):
    images = tmp_path / "imgs"
    for c in ("x", "y"):
        (images / c).mkdir(parents=True)
        (images / c / "a.png").write_bytes(b"\x89PNG not really")
    assert main(["train", str(images), "-o", str(tmp_path / "r"), "--modality", "audio", "--backbone", "tiny_cnn", "-q"]) == 1
    assert "holds no readable audio files" in capsys.readouterr().err
    assert main(["train", str(tones), "-o", str(tmp_path / "r"), "--n-mels", "32", "--backbone", "tiny_cnn", "-q"]) == 1
    assert "--n-mels applies to --modality audio only" in capsys.readouterr().err
    assert main(["predict", str(tiny_audio[1]), str(images / "x" / "a.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "this is an audio model" in err
    assert main(["data", "tones", str(tones)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["data", "tones", str(tmp_path / "t"), "--per-class", "2", "--val-fraction", "0.9"]) == 1
    assert "leaves no training clips" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_cli_train_passes_the_audio_options_into_the_contract(tones, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", str(tones), "-o", str(run), "--modality", "audio", "--backbone", "tiny_cnn", "--epochs", "1",
               "--n-mels", "32", "--hop", "320", "--fmax", "6000", "--in-channels", "3", "--augment", "--freq-masks", "1", "-q"])
    assert rc == 0, capsys.readouterr().err
    meta = torch.load(run / "model.pt", weights_only=True)["metadata"]
    prep = AudioPreprocessing.from_dict(meta["preprocessing"])
    assert (prep.logmel.n_mels, prep.logmel.hop, prep.logmel.fmax, prep.in_channels) == (32, 320, 6000.0, 3)
    assert meta["train_config"]["augment"]["freq_masks"] == 1 and meta["train_config"]["augment"]["enabled"]
    assert main(["train", str(tones), "-o", str(tmp_path / "r2"), "--modality", "audio", "--hflip", "-q"]) == 1
    assert "--hflip is image augmentation" in capsys.readouterr().err


def test_audio_models_get_the_ood_gate_and_shift_too(tiny_audio, tones, tmp_path):
    """The same OOD gate and shift on clips: the checkpoint and its ONNX carry the gate, predict
    decides per clip, shift compares target clips with the kept sample of training clips."""
    import json

    from tldeploy.cli import main
    from tldeploy.contract import read_contract
    from tldeploy.models.checkpoints import checkpoint_tensors, load_checkpoint

    ckpt, onnx_path = tiny_audio
    _, meta = load_checkpoint(ckpt)
    assert meta["ood"]["kind"] == "energy" and read_contract(onnx_path).ood == OodGate.from_dict(meta["ood"])
    clips = sorted((tones / "val").rglob("*.wav"))[:3]
    assert all(p.unknown is not None for p in predict(onnx_path, clips))
    assert checkpoint_tensors(ckpt)["source_features"].shape[0] == 7 * 6  # every training clip
    out = tmp_path / "s.json"
    assert main(["shift", "--reference", str(ckpt), "--data", str(tones / "val"), "-o", str(out), "-q"]) == 0
    assert json.loads(out.read_text())["target_inputs"] == 7 * 2


def test_audio_robustness_runs_the_clip_corruptions_attacks_and_search(tiny_audio, tones, tmp_path):
    """bench --robustness on a clip model: the audio corruptions at every severity, attacks in
    1/255 of full scale, the search; the export is the reference's function under all of them."""
    from tldeploy.bench.robustness import CORRUPTIONS, SEVERITIES

    ckpt, onnx_path = tiny_audio
    result = run_bench(BenchConfig(artifacts=(onnx_path,), output=tmp_path / "r.json", reference=ckpt, data=tones / "val",
                                   robustness="all", epsilons=(4.0,), disagreement=4, batch_sizes=(1,),
                                   latency=LatencyConfig(warmup=1, iters=2, rounds=1), quiet=True))
    ref, art = (r["robustness"] for r in result.document.to_json()["results"])
    n = result.document.to_json()["data"]["images"]
    assert [(c["corruption"], c["severity"]) for c in art["corruptions"]] == [(c, s) for c in CORRUPTIONS["audio"] for s in SEVERITIES]
    assert art["max_flip_rate"] <= 1 / n and all(abs(a["accuracy"] - b["accuracy"]) <= 1 / n for a, b in zip(ref["attacks"], art["attacks"], strict=True))
    assert result.document.to_json()["config"]["robustness"]["budget_unit"] == "1/255 of full scale"
    report = result.report.read_text()
    assert "white_noise 5" in report and "pgd eps 4/255 of full scale" in report and "| disagreement search |" in report
