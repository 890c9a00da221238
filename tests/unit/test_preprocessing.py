import numpy as np
import pytest
import torch
from PIL import Image

from tldeploy.errors import ConfigError
from tldeploy.modalities.preprocessing import AugmentConfig, Preprocessing


def test_roundtrip_and_resize_ratio():
    p = Preprocessing(224, 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    assert Preprocessing.from_dict(p.to_dict()) == p
    q = p.with_input_size(64)
    assert (q.input_size, q.resize_size) == (64, 73)
    assert q.mean == p.mean and q.interpolation == "bicubic"


@pytest.mark.parametrize(
    "kw",
    [dict(input_size=4), dict(resize_size=100), dict(interpolation="lanczos9"), dict(std=(0.0, 1.0, 1.0))],
)
def test_invalid_contract_is_refused(kw):
    base = dict(input_size=224, resize_size=256, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ConfigError):
        Preprocessing(**{**base, **kw})


def test_from_dict_names_missing_fields():
    with pytest.raises(ConfigError, match="mean"):
        Preprocessing.from_dict({"input_size": 8, "resize_size": 8, "std": [1, 1, 1]})


def test_eval_transform_normalises_with_the_contract():
    p = Preprocessing(8, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = p.eval_transform()(Image.new("RGB", (10, 10), (255, 0, 128)))
    assert x.shape == (3, 8, 8)
    assert torch.allclose(x[:, 0, 0], torch.tensor([2.0, -2.0, (128 / 255 - 0.5) / 0.25]), atol=1e-5)


def test_augment_off_is_the_eval_transform():
    p = Preprocessing(8, 8, (0.5,) * 3, (0.5,) * 3)
    img = Image.new("RGB", (12, 9), (10, 20, 30))
    assert torch.equal(p.train_transform(AugmentConfig.off())(img), p.eval_transform()(img))
    with pytest.raises(ConfigError):
        AugmentConfig(crop_scale=0.0)


def test_both_modalities_implement_the_interface():
    from tldeploy.modalities.audio import AudioPreprocessing, LogMelConfig
    from tldeploy.modalities.base import Modality
    from tldeploy.modalities.preprocessing import Preprocessing, preprocessing_from_dict

    image = Preprocessing(input_size=32, resize_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    audio = AudioPreprocessing(LogMelConfig(), 0.0, 1.0)
    for prep in (image, audio):
        assert isinstance(prep, Modality), type(prep).__name__
        x = prep.random_inputs(3, seed=1)
        assert x.shape == (3, *prep.input_shape) and x.dtype == np.float32
        assert np.array_equal(x, prep.random_inputs(3, seed=1)) and not np.array_equal(x, prep.random_inputs(3, seed=2))
        assert preprocessing_from_dict(prep.to_dict()) == prep
    assert image.frontend() is None and audio.frontend() is not None
    assert image.shape_text == "3x32x32" and audio.shape_text == f"{audio.logmel.num_samples} samples"
    assert abs(float(audio.random_inputs(64).std()) - 0.1) < 0.01  # -20 dBFS noise, not unit-variance


def test_contracts_dispatch_on_their_modality():
    from tldeploy.contract import PREFIX, Contract, ContractError
    from tldeploy.modalities.audio import AudioPreprocessing, LogMelConfig
    from tldeploy.modalities.preprocessing import MODALITY_CLASSES

    image = Preprocessing(input_size=32, resize_size=36, mean=(0.5,) * 3, std=(0.25,) * 3, input_format="raw")
    audio = AudioPreprocessing(LogMelConfig(), 0.5, 2.0, in_channels=3)
    for prep in (image, audio):
        assert set(prep.contract_props()) == set(type(prep).contract_keys)  # the keys a reader takes as its own
        assert MODALITY_CLASSES[prep.modality]() is type(prep)
        c = Contract(["a", "b"], prep, "tiny", "0" * 64, "0.0", extra={"note": "kept"})
        props = c.to_props()
        assert Contract.from_props(props, "m.onnx") == c
    props = Contract(["a", "b"], image.as_normalized(), "tiny", "0" * 64, "0.0").to_props()
    old = {k: v for k, v in props.items() if k not in (PREFIX + "modality", PREFIX + "input_format")}
    assert Contract.from_props(old, "old.onnx").preprocessing == image.as_normalized()  # before audio and raw inputs
    with pytest.raises(ContractError, match=r"^new\.onnx has a broken tldeploy contract \(ConfigError: unknown modality 'video'") as e:
        Contract.from_props({**props, PREFIX + "modality": "video"}, "new.onnx")
    assert "\n" not in str(e.value)
