"""MaskCLIP: the value-path patch embeddings against a by-hand computation, a toy with a
known answer, batching, targets and errors."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    TINY_VIT,
    ToyHFTokenizer,
    make_tiny_hf_clip,
    make_tiny_resnet,
    make_tiny_vit,
    tiny_tokenizer,
)

from captum_clip.attr import MaskCLIP
from captum_clip.models import ClipClassifier, ClipSimilarity

CLASSES = ["cat", "dog", "car"]


def _ln(x, mod):
    return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)


def hand_openclip(model, images, text, residual=True, mlp=True):
    """MaskCLIP for an open_clip ViT written out from the block weights."""
    visual = model.visual
    x = visual._embeds(images)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    x = x[:, 1:]
    last = visual.transformer.resblocks[-1]
    d = x.shape[-1]
    w_v = last.attn.in_proj_weight[2 * d :]
    b_v = last.attn.in_proj_bias[2 * d :]
    v = _ln(x, last.ln_1) @ w_v.T + b_v
    z = v @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
    if residual:
        z = x + z
    if mlp:
        hid = F.gelu(_ln(z, last.ln_2) @ last.mlp.c_fc.weight.T + last.mlp.c_fc.bias)
        z = z + hid @ last.mlp.c_proj.weight.T + last.mlp.c_proj.bias
    emb = _ln(z, visual.ln_post) @ visual.proj
    cos = F.normalize(emb, dim=-1) @ F.normalize(text, dim=-1).T  # (B, P, n)
    g = visual.grid_size
    return cos.permute(0, 2, 1).reshape(images.shape[0], -1, *g)  # (B, n, h, w)


def upsample(maps, size):
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def clf():
    return ClipClassifier(make_tiny_vit(), tiny_tokenizer(), CLASSES)


@pytest.mark.parametrize("residual,mlp", [(True, True), (False, False), (True, False)])
def test_matches_hand_value_path(clf, residual, mlp):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    target = [2, 0, 1]
    attr = MaskCLIP(clf, residual=residual, mlp=mlp).attribute(x, target=target)
    with torch.no_grad():
        hand = hand_openclip(clf.model, x, clf.text_embeddings, residual, mlp)
    expected = upsample(hand[torch.arange(3), target], (32, 32)).expand(-1, 3, -1, -1)
    assert attr.shape == x.shape
    torch.testing.assert_close(attr, expected, atol=1e-5, rtol=1e-5)
    # the variants really differ (the options are not ignored)
    other = hand_openclip(clf.model, x, clf.text_embeddings, not residual, mlp)
    assert not torch.allclose(hand, other, atol=1e-3)


def test_similarity_targets_are_its_texts():
    model = make_tiny_vit()
    sim = ClipSimilarity(model, tiny_tokenizer(), ["a red square", "a blue disc"])
    x = torch.randn(2, 3, 32, 32)
    attr = MaskCLIP(sim).attribute(x, target=1)
    with torch.no_grad():
        hand = hand_openclip(model, x, sim.text_embeddings)[:, 1]
    torch.testing.assert_close(attr[:, 0], upsample(hand, (32, 32))[:, 0], atol=1e-5, rtol=1e-5)


def test_hf_matches_hand():
    model = make_tiny_hf_clip()
    clf = ClipClassifier(model, ToyHFTokenizer(), CLASSES)
    x = torch.randn(2, 3, 32, 32)
    attr = MaskCLIP(clf).attribute(x, target=1)
    vm = model.vision_model
    with torch.no_grad():
        h = vm.pre_layrnorm(vm.embeddings(x))
        for layer in vm.encoder.layers[:-1]:
            h = layer(h, None)
        last = vm.encoder.layers[-1]
        tok = h[:, 1:]
        z = tok + last.self_attn.out_proj(last.self_attn.v_proj(_ln(tok, last.layer_norm1)))
        z = z + last.mlp(_ln(z, last.layer_norm2))
        emb = model.visual_projection(_ln(z, vm.post_layernorm))
        cos = F.normalize(emb, dim=-1) @ clf.text_embeddings[1]
    hand = upsample(cos.reshape(2, 4, 4), (32, 32))
    torch.testing.assert_close(attr[:, :1], hand, atol=1e-5, rtol=1e-5)


def test_toy_peaks_at_the_patch_with_the_target_content():
    """One block, no positional embeddings: each patch's MaskCLIP embedding depends on its
    own pixels only. The target embedding is taken from an image made of content P
    everywhere; in a test image only patch j shows P, so the map is 1 there and < 1 elsewhere."""
    torch.manual_seed(0)
    cfg = dict(TINY_VIT, vision_cfg=dict(TINY_VIT["vision_cfg"], layers=1))
    model = open_clip.model.CLIP(**cfg).eval()
    with torch.no_grad():
        model.visual.positional_embedding.zero_()
    p_content, q_content = torch.randn(3, 8, 8), torch.randn(3, 8, 8)
    all_p = p_content.repeat(1, 4, 4)[None]
    with torch.no_grad():
        text = hand_openclip(model, all_p, torch.eye(32))  # cos with basis = unit embedding
        unit = text[0, :, 0, 0]  # normalised embedding of content P (any patch)
    j = (2, 1)
    img = q_content.repeat(1, 4, 4)[None].clone()
    img[:, :, 8 * j[0] : 8 * j[0] + 8, 8 * j[1] : 8 * j[1] + 8] = p_content
    sim = ClipSimilarity(model, tiny_tokenizer(), ["x"])
    explainer = MaskCLIP(sim, text_embeddings=unit[None])
    attr = explainer.attribute(img)
    patch = explainer.patch_maps(img, torch.tensor([0]))[0]
    assert patch[j].item() == pytest.approx(1.0, abs=1e-5)
    others = patch.flatten()[torch.arange(16) != j[0] * 4 + j[1]]
    assert (others < 1 - 1e-3).all()
    peak = attr[0, 0].argmax()
    assert (int(peak // 32) // 8, int(peak % 32) // 8) == j


def test_batch_split_and_per_example_targets(clf):
    x = torch.randn(5, 3, 32, 32)
    explainer = MaskCLIP(clf)
    full = explainer.attribute(x, target=torch.tensor([0, 1, 2, 1, 0]))
    split = explainer.attribute(x, target=[0, 1, 2, 1, 0], internal_batch_size=2)
    torch.testing.assert_close(full, split)
    one = explainer.attribute(x[3:4], target=1)
    torch.testing.assert_close(full[3:4], one)


def test_model_left_unchanged(clf):
    x = torch.randn(2, 3, 32, 32)
    before = clf(x)
    clf.model.train()
    clf.model.visual.proj.requires_grad_(False)
    try:
        MaskCLIP(clf).attribute(x, target=0, show_progress=True)
        assert clf.model.training and clf.model.visual.transformer.training
        assert not clf.model.visual.proj.requires_grad
        assert all(p.grad is None for p in clf.model.parameters())
    finally:
        clf.model.eval()
        clf.model.visual.proj.requires_grad_(True)
    torch.testing.assert_close(clf(x), before)


def test_errors(clf):
    x = torch.randn(2, 3, 32, 32)
    m = MaskCLIP(clf)
    with pytest.raises(ValueError, match="target is required"):
        m.attribute(x)
    with pytest.raises(ValueError, match=r"target must be in \[0, 2\]"):
        m.attribute(x, target=3)
    with pytest.raises(ValueError, match="one entry per example"):
        m.attribute(x, target=[0, 1, 2])
    with pytest.raises(TypeError, match="target"):
        m.attribute(x, target=1.0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        m.attribute(x[0])
    with pytest.raises(ValueError, match="32x32"):
        m.attribute(torch.randn(1, 3, 64, 64), target=0)
    with pytest.raises(ValueError, match="NaN"):
        m.attribute(torch.full((1, 3, 32, 32), float("nan")), target=0)
    with pytest.raises(TypeError, match="floating"):
        m.attribute(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), target=0)
    with pytest.raises(ValueError, match="additional_forward_args"):
        m.attribute(x, target=0, additional_forward_args=(1,))
    with pytest.raises(ValueError, match="internal_batch_size"):
        m.attribute(x, target=0, internal_batch_size=0)
    with pytest.raises(ValueError, match="text_embeddings"):
        MaskCLIP(clf, text_embeddings=torch.zeros(0, 32))
    with pytest.raises(ValueError, match="NaN"):
        MaskCLIP(clf, text_embeddings=torch.full((2, 32), float("nan")))
    with pytest.raises(ValueError, match="16 dimensions"):
        MaskCLIP(clf, text_embeddings=torch.randn(2, 16)).attribute(x, target=0)
    with pytest.raises(TypeError, match="text embeddings"):
        MaskCLIP(lambda im: im.sum((1, 2, 3)), vision_model=clf.model)
    resnet = ClipClassifier(make_tiny_resnet(), tiny_tokenizer(), CLASSES)
    with pytest.raises(ValueError, match="ViT"):
        MaskCLIP(resnet)
    with pytest.raises(TypeError, match="vision_model"):
        MaskCLIP(lambda im: im, vision_model="ViT-B-32")
    pooled = dict(
        TINY_VIT,
        vision_cfg=dict(
            TINY_VIT["vision_cfg"],
            attentional_pool=True,
            attn_pooler_heads=2,
            attn_pooler_queries=4,
        ),
    )
    coca_like = ClipClassifier(open_clip.model.CLIP(**pooled).eval(), tiny_tokenizer(), CLASSES)
    a = MaskCLIP(coca_like).attribute(x, target=0)  # the value path through the pooler
    assert a.shape == x.shape and torch.isfinite(a).all()


def test_any_callable_with_vision_model(clf):
    x = torch.randn(2, 3, 32, 32)
    ref = MaskCLIP(clf).attribute(x, target=1)
    for vision in (clf.model, clf.model.visual, clf, clf.vision):
        other = MaskCLIP(
            lambda im: clf(im), vision_model=vision, text_embeddings=clf.text_embeddings
        )
        torch.testing.assert_close(other.attribute(x, target=1), ref)
