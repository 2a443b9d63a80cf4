"""vit_gradcam: Captum LayerGradCam on the ViT patch grid against a hand implementation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ToyHFTokenizer, make_tiny_hf_clip, make_tiny_resnet, make_tiny_vit

from captum_clip.attr.gradcam import ViTGradCam, vit_gradcam
from captum_clip.models import ClipClassifier, ClipSimilarity

CLASSES = ["cat", "dog", "car"]


def hand_gradcam(head, x, target, block, relu=True):
    """GradCAM by hand: d score / d tokens after ``block`` via hidden_state/from_hidden."""
    vision = head.vision
    hidden = vision.hidden_state(x, block + 1).detach().requires_grad_(True)
    emb = F.normalize(vision.from_hidden(hidden, block + 1).float(), dim=-1)
    out = emb @ head.text_embeddings.T
    if hasattr(head, "scale"):
        out = head.scale * out
    out[torch.arange(len(x)), target].sum().backward()
    acts, grads = hidden[:, 1:], hidden.grad[:, 1:]  # drop CLS
    weights = grads.mean(1, keepdim=True)  # mean over patches, per channel
    cam = (weights * acts).sum(-1)
    cam = cam.relu() if relu else cam
    h, w = vision.grid_size
    return cam.reshape(len(x), 1, h, w).detach()


@pytest.mark.parametrize("kind", ["vit", "hf"])
@pytest.mark.parametrize("layer", [None, 0])
def test_matches_hand_gradcam(kind, layer, tokenizer):
    if kind == "vit":
        head = ClipClassifier(make_tiny_vit(), tokenizer, CLASSES)
    else:
        head = ClipSimilarity(make_tiny_hf_clip(), ToyHFTokenizer(), ["a cat", "a dog", "a car"])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target = [2, 0]
    gc = vit_gradcam(head, layer=layer)
    block = 0 if layer == 0 else head.vision.n_blocks - 2
    assert gc.layer == block
    expected = hand_gradcam(head, x, target, block)
    assert expected.abs().sum() > 0  # not a degenerate all-zero map
    torch.testing.assert_close(
        gc.patch_maps(x, target=target)[:, None], expected, rtol=1e-4, atol=1e-6
    )
    full = vit_gradcam(head, x, target=target, layer=layer)
    up = F.interpolate(expected, size=(32, 32), mode="bilinear", align_corners=False)
    assert full.shape == x.shape
    torch.testing.assert_close(full, up.expand_as(x), rtol=1e-4, atol=1e-6)


def test_signed_map_and_model_left_alone(tokenizer):
    model = make_tiny_vit()
    head = ClipClassifier(model, tokenizer, CLASSES)
    for p in model.parameters():
        p.requires_grad_(False)  # a frozen model still gets GradCAM
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = head(x)
    signed = ViTGradCam(head, relu_attributions=False).attribute_grid(x, target=1)
    for p in model.parameters():
        p.requires_grad_(True)
    expected = hand_gradcam(head, x, [1, 1], 0, relu=False)
    for p in model.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(signed, expected, rtol=1e-4, atol=1e-6)
    assert (signed < 0).any()
    assert not any(p.requires_grad for p in model.parameters())
    assert all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )
    with torch.no_grad():
        torch.testing.assert_close(head(x), before)


def test_last_block_warns_and_errors(tokenizer):
    head = ClipClassifier(make_tiny_vit(), tokenizer, CLASSES)
    x = torch.randn(1, 3, 32, 32)
    with pytest.warns(UserWarning, match="zero everywhere"):
        gc = vit_gradcam(head, layer=-1)
    assert gc.attribute(x, target=0).abs().max() == 0  # why the default is the block before
    resnet = ClipClassifier(make_tiny_resnet(), tokenizer, CLASSES)  # its last stage: its own
    assert torch.isfinite(vit_gradcam(resnet, torch.randn(1, 3, 64, 64), target=0)).all()
    with pytest.raises(ValueError, match="layer"):
        vit_gradcam(head, layer=5)
    with pytest.raises(ValueError, match="32x32"):
        vit_gradcam(head, torch.randn(1, 3, 16, 16), target=0)
