import pytest
import torch
import torch.nn.functional as F

from tldeploy.models.backbones import create_backbone
from tldeploy.models.heads import AttentionHead, ChannelAttention, HeadConfig, create_model


def test_channel_attention_matches_the_formula():
    torch.manual_seed(0)
    ca = ChannelAttention(32, reduction=4)
    x = torch.randn(3, 32, 5, 7)

    def mlp(v):
        return ca.fc2(F.relu(ca.fc1(v)))

    w = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))
    assert ca.fc1.out_features == 8
    torch.testing.assert_close(ca(x), x * w[:, :, None, None])


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (7, 7)])
def test_cam_is_the_classifier_weighted_map(hw):
    torch.manual_seed(0)
    head = AttentionHead(HeadConfig(num_classes=4, in_channels=16, reduction=4)).eval()
    feats = torch.randn(5, 16, *hw)
    logits, probs, cam = head.forward_with_cam(feats)
    torch.testing.assert_close(logits, head(feats))
    torch.testing.assert_close(probs.sum(1), torch.ones(5))
    assert cam.shape == (5, *hw)
    assert float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0
    # GAP is linear, so the raw CAM of the predicted class averages to its logit minus the bias.
    pred = logits.argmax(1)
    raw = torch.einsum("nchw,nc->nhw", head.attention(feats), head.classifier.weight[pred])
    torch.testing.assert_close(raw.mean((1, 2)) + head.classifier.bias[pred], logits.gather(1, pred[:, None])[:, 0])
    if hw != (1, 1):
        torch.testing.assert_close(cam.amax((1, 2)), torch.ones(5))
        assert torch.equal(cam.flatten(1).argmax(1), raw.flatten(1).argmax(1))


def test_adapted_model_forward_and_cam_have_no_grad():
    model = create_model(create_backbone("tiny_cnn"), num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, probs, cam = model.forward_with_cam(x)
    torch.testing.assert_close(logits, model(x))
    assert cam.shape == (2, 8, 8) and not cam.requires_grad
