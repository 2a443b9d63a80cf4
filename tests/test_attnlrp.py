"""AttnLRP: agreement with the authors' package (lxt), conservation, every tower family."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from _tiny_timm import BUILDERS, make_vitamin
from conftest import ToyHFTokenizer, make_tiny_hf_clip, make_tiny_vit, tiny_tokenizer
from torch import nn

from captum_clip.attr import AttnLRP
from captum_clip.models import ClipClassifier

CLASSES = ["cat", "dog", "car"]


def _clf(model, tok):
    return ClipClassifier(model, tok, CLASSES, templates=("a photo of {}",))


def _lxt_patches():
    """lxt 2.1's ``lxt.efficient`` package imports its BERT patches, which fail under
    transformers 5; its rules and patches are loaded without that ``__init__``."""
    lxt = pytest.importorskip("lxt")
    if "lxt.efficient" not in sys.modules:
        pkg = types.ModuleType("lxt.efficient")
        pkg.__path__ = [os.path.join(os.path.dirname(lxt.__file__), "efficient")]
        sys.modules["lxt.efficient"] = pkg
    from lxt.efficient import patches

    return patches


@pytest.mark.parametrize("attention", ["attnlrp", "cp"])
def test_attnlrp_matches_lxt_on_hf_clip(attention, monkeypatch):
    patches = _lxt_patches()
    mc = pytest.importorskip("transformers.models.clip.modeling_clip")
    from transformers.activations import QuickGELUActivation

    model = make_tiny_hf_clip(0)
    model.config._attn_implementation = "eager"
    model.vision_model.config._attn_implementation = "eager"
    clf = _clf(model, ToyHFTokenizer())
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([0, 2])
    ours = AttnLRP(clf, attention=attention).attribute(x, target=t)
    wrap = (
        patches.wrap_attention_forward
        if attention == "attnlrp"
        else patches.cp_wrap_attention_forward
    )
    monkeypatch.setattr(mc, "eager_attention_forward", wrap(mc.eager_attention_forward))
    monkeypatch.setattr(nn.LayerNorm, "forward", patches.layer_norm_forward)
    monkeypatch.setattr(QuickGELUActivation, "original_forward", QuickGELUActivation.forward,
                        raising=False)  # fmt: skip
    monkeypatch.setattr(QuickGELUActivation, "forward", patches.non_linear_forward)
    xx = x.clone().requires_grad_(True)
    emb = model.get_image_features(pixel_values=xx)
    emb = getattr(emb, "pooler_output", emb)
    unit = emb / emb.norm(dim=-1, keepdim=True).detach()
    (clf.scale * (unit * clf.text_embeddings[t]).sum(-1)).sum().backward()
    torch.testing.assert_close(ours, (xx * xx.grad).detach(), atol=1e-6, rtol=1e-4)


def _bias_free_vit():
    """Tiny open_clip ViT without any bias, class or positional embedding: with attention
    weights held constant (CP-LRP) the tower is homogeneous of degree 1 in the pixels."""
    model = make_tiny_vit(2)
    with torch.no_grad():
        for name, p in model.visual.named_parameters():
            if name.endswith("bias") or "positional_embedding" in name or "class_embedding" in name:
                p.zero_()
    return model


def test_cp_relevance_is_conserved_without_biases():
    clf = _clf(_bias_free_vit(), tiny_tokenizer())
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor([2, 0, 1])
    rel = AttnLRP(clf, attention="cp").attribute(x, target=t)
    with torch.no_grad():
        score = clf(x).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(rel.sum((1, 2, 3)), score, atol=1e-4, rtol=1e-4)
    full = AttnLRP(clf).attribute(x, target=t)  # the softmax rule is not conservative
    assert not torch.allclose(full.sum((1, 2, 3)), score, atol=1e-3)


FAMILIES = {**BUILDERS, "vitamin": make_vitamin}


def _bias_free(model):
    """Every bias (convolutions, linear layers, norms), position and prefix embedding of the
    vision tower set to zero: what is left is homogeneous of degree 1 in the pixels once
    the norms' scales and the attention weights are held constant."""
    with torch.no_grad():
        for name, p in model.visual.named_parameters():
            if name.endswith("bias") or "pos_embed" in name or "token" in name:
                p.zero_()
    return model


@pytest.mark.parametrize("family", ["vitamin", "eva02", "timm_token_reg"])
def test_cp_relevance_is_conserved_on_timm_towers(family):
    """CP-LRP without biases: sum of pixel relevance = target logit, through ViTamin's
    convolutional stem (LayerNorm2d, GELU, MBConv blocks, strided conv) and GeGLU MLP, and
    EVA-02's SwiGLU (each gated product halved once: 1.5x the score if a factor kept its
    full gradient)."""
    model, tok = FAMILIES[family](0)
    clf = _clf(_bias_free(model), tok)
    x = torch.randn(3, 3, *clf.image_size, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([2, 0, 1])
    rel = AttnLRP(clf, attention="cp").attribute(x, target=t)
    with torch.no_grad():
        score = clf(x).gather(1, t[:, None])[:, 0]
    assert score.abs().min() > 0.05
    torch.testing.assert_close(rel.sum((1, 2, 3)), score, atol=1e-4, rtol=1e-4)


def test_vitamin_stem_conserves_relevance_under_the_default_rule(monkeypatch):
    """AttnLRP (the softmax rule is not conservative) on a ViTamin whose stem has no bias:
    the relevance reaching the first block's tokens all arrives at the pixels (with the
    LayerNorm2d modules left to their plain gradient it does not: checked by hand)."""
    model, tok = make_vitamin(1)
    with torch.no_grad():
        for name, p in model.visual.trunk.named_parameters():
            if (name.startswith("patch_embed") and name.endswith("bias")) or "pos_embed" in name:
                p.zero_()
    clf = _clf(model, tok)
    lrp = AttnLRP(clf)
    seen = {}
    embed = lrp.tower.embed

    def traced(images):
        tokens = embed(images)
        seen["tokens"] = tokens
        tokens.register_hook(lambda g: seen.__setitem__("grad", g))
        return tokens

    monkeypatch.setattr(lrp.tower, "embed", traced)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    rel = lrp.attribute(x, target=[1, 2])
    at_tokens = (seen["tokens"] * seen["grad"]).detach().sum((1, 2))
    assert at_tokens.abs().min() > 1e-2
    torch.testing.assert_close(rel.sum((1, 2, 3)), at_tokens, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_runs_and_leaves_model_unchanged(family):
    model, tok = FAMILIES[family](0)
    clf = _clf(model, tok)
    x = torch.randn(2, 3, *clf.image_size)
    with torch.no_grad():
        before = clf(x)
    lrp = AttnLRP(clf)
    rel = lrp.attribute(x, target=[0, 2])
    assert rel.shape == x.shape and torch.isfinite(rel).all() and rel.abs().sum() > 0
    torch.testing.assert_close(rel, lrp.attribute(x, target=[0, 2], internal_batch_size=1),
                               atol=1e-6, rtol=1e-4)  # fmt: skip
    hooked = [m for m in model.modules() if m._forward_hooks or "forward" in vars(m)]
    assert not hooked
    with torch.no_grad():
        torch.testing.assert_close(clf(x), before)


def test_hooks_removed_after_exception_and_bad_input(monkeypatch):
    clf = _clf(make_tiny_vit(0), tiny_tokenizer())
    lrp = AttnLRP(clf)

    def fail(x):
        raise RuntimeError("boom")

    monkeypatch.setattr(lrp.tower, "head", fail)
    with pytest.raises(RuntimeError, match="boom"):
        lrp.attribute(torch.randn(2, 3, 32, 32), target=[0, 1])
    monkeypatch.undo()
    assert not [m for m in clf.model.modules() if m._forward_hooks or "forward" in vars(m)]
    with pytest.raises(ValueError, match="attention"):
        AttnLRP(clf, attention="softmax")
    with pytest.raises(ValueError, match="additional_forward_args"):
        lrp.attribute(torch.randn(1, 3, 32, 32), target=0, additional_forward_args=(1,))


@pytest.mark.parametrize("attention", ["attnlrp", "cp"])
def test_chunked_equals_unchunked_on_the_testbed_model(attention):
    """Internal batches only bound memory: the maps of 10 images by the default chunks
    (8 + 2) and in chunks of 3 (the last one smaller) equal those of all 10 at once."""
    from captum_clip.attr.attnlrp import DEFAULT_INTERNAL_BATCH_SIZE
    from captum_clip.models import load_clip
    from captum_clip.testbed import shapes

    model, _, tok = load_clip("testbed")
    clf = ClipClassifier(model, tok, list(shapes.CLASS_NAMES), templates=("a photo of {}",))
    x = shapes.normalize(shapes.generate_scenes(10, seed=3, size=64).images)
    target = [i % len(shapes.CLASS_NAMES) for i in range(10)]
    lrp = AttnLRP(clf, attention=attention)
    whole = lrp.attribute(x, target=target, internal_batch_size=None)
    assert whole.abs().sum() > 0 and 1 < DEFAULT_INTERNAL_BATCH_SIZE < len(x)
    for chunked in (
        lrp.attribute(x, target=target),
        lrp.attribute(x, target=target, internal_batch_size=3),
    ):
        torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
