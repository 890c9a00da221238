from collections import OrderedDict

import pytest
import torch

from tldeploy.errors import CheckpointError, ConfigError
from tldeploy.modalities.preprocessing import Preprocessing
from tldeploy.models.backbones import (
    Backbone,
    BackboneSpec,
    Weights,
    create_backbone,
    describe_backbone,
    list_backbones,
    register_backbone,
    rename_by_order,
)


def test_registry_lists_builtins_and_custom():
    assert "efficientnet_lite0" in list_backbones()
    assert list_backbones("tiny*") == ["tiny_cnn", "tiny_vit"]

    @register_backbone("test_linear_probe", "1x1 conv")
    def _factory(weights):
        spec = BackboneSpec("test_linear_probe", Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3), "", weights.text)
        return Backbone(torch.nn.Conv2d(3, 4, 1), spec, 4)

    bb = create_backbone("test_linear_probe", "none")
    assert bb(torch.zeros(2, 3, 16, 16)).shape == (2, 4, 16, 16)
    assert describe_backbone("test_linear_probe") == "1x1 conv"
    # A taken name is refused unless the override is meant; the original stays registered.
    with pytest.raises(ConfigError, match="'tiny_cnn' is registered already.*replace=True"):
        register_backbone("tiny_cnn", "mine")
    assert create_backbone("tiny_cnn").spec.name == "tiny_cnn"

    @register_backbone("test_linear_probe", "1x1 conv, replaced", replace=True)
    def _again(weights):
        return _factory(weights)

    assert describe_backbone("test_linear_probe") == "1x1 conv, replaced"


def test_describe_backbone_knows_every_name_train_accepts():
    assert "timm's resnet18" in describe_backbone("timm:resnet18")
    assert "torchvision's resnet50" in describe_backbone("resnet50")
    with pytest.raises(ConfigError, match="unknown timm model 'no_such_net'"):
        describe_backbone("timm:no_such_net")
    with pytest.raises(ConfigError, match="unknown backbone 'no_such_net'.*tiny_cnn"):
        describe_backbone("no_such_net")


def test_weights_are_parsed_once_into_a_kind(tmp_path):
    assert Weights.parse("  ") == Weights("default", "default")
    assert Weights.parse("none").kind == "none"
    assert Weights.parse("IMAGENET1K_V2").kind == "name"
    assert Weights.parse("ResNet50_Weights.IMAGENET1K_V2").kind == "name"
    assert Weights.parse("missing/r18.pth").kind == "file"  # by suffix, before it exists
    plain = tmp_path / "weights"
    plain.write_bytes(b"")
    assert Weights.parse(str(plain)).kind == "file"  # by existence, whatever its suffix
    # A weights name means nothing to a backbone without a weights enum: one clear line.
    with pytest.raises(ConfigError, match="'IMAGENET1K_V2': tiny_cnn takes 'default', 'none' or a state-dict file"):
        create_backbone("tiny_cnn", "IMAGENET1K_V2")
    with pytest.raises(CheckpointError, match="weights file missing/r18.pth does not exist"):
        create_backbone("tiny_cnn", "missing/r18.pth")


def test_tiny_backbone_spec_and_blocks():
    bb = create_backbone("tiny_cnn")
    assert bb.spec.preprocessing.input_size == 32
    assert bb(torch.zeros(1, 3, 32, 32)).shape == (1, 32, 8, 8)
    assert len(bb.blocks()) == 3


def test_torchvision_backbone_takes_preprocessing_from_its_weights():
    bb = create_backbone("resnet18", "none")
    p = bb.spec.preprocessing
    assert (p.input_size, p.resize_size, p.mean) == (224, 256, (0.485, 0.456, 0.406))
    assert bb.num_features == 512 and bb.spec.classifier_name == "fc"
    assert bb(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    assert len(bb.blocks()) == 9  # stem + 8 residual blocks


def test_torchvision_state_dict_file(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = create_backbone("resnet18", str(path))
    assert torch.equal(bb.features.conv1.weight, ref.conv1.weight)
    assert bb.spec.weights == str(path)


def test_bad_names_and_weights_are_clear():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet5000'"):
        create_backbone("resnet5000")
    with pytest.raises(ConfigError, match="unknown timm model"):
        create_backbone("timm:not_a_model")
    with pytest.raises(ConfigError, match="neither a weights name"):
        create_backbone("resnet18", "IMAGENET9K")


def test_weights_file_errors(tmp_path):
    bad = tmp_path / "trunc.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="truncated"):
        create_backbone("resnet18", str(bad))
    other = tmp_path / "other.pth"
    torch.save(create_backbone("tiny_cnn").features.state_dict(), other)
    with pytest.raises(CheckpointError, match="do not fit"):
        create_backbone("resnet18", str(other))


def test_rename_by_order_checks_every_shape():
    target = OrderedDict(a=torch.zeros(2, 3), b=torch.zeros(4))
    out = rename_by_order(OrderedDict(x=torch.ones(2, 3), y=torch.ones(4)), target, "src")
    assert list(out) == ["a", "b"] and torch.equal(out["b"], torch.ones(4))
    with pytest.raises(CheckpointError, match="tensor 1 y has shape"):
        rename_by_order(OrderedDict(x=torch.ones(2, 3), y=torch.ones(5)), target, "src")
    with pytest.raises(CheckpointError, match="holds 1 tensors"):
        rename_by_order(OrderedDict(x=torch.ones(2, 3)), target, "src")
