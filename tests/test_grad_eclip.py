"""Grad-ECLIP: the formula by hand on a handwritten last block, the completeness identity of
the exact-attention variant, a toy where only one patch carries information, batching,
model hygiene and errors."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_VIT, ToyHFTokenizer, make_tiny_hf_clip, make_tiny_vit, tiny_tokenizer

from captum_clip._hooks import HookManager
from captum_clip.attr import GradECLIP
from captum_clip.attr._base import traced_scores
from captum_clip.attr.grad_eclip import grad_eclip_contributions
from captum_clip.models import ClipClassifier, ClipSimilarity

CLASSES = ["cat", "dog", "car"]


def _ln(x, mod):
    return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)


def block_parts(block):
    if hasattr(block, "self_attn"):  # Hugging Face
        a = block.self_attn
        w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        return w, b, a.out_proj, block.layer_norm1, block.layer_norm2, block.mlp, a.num_heads
    a = block.attn
    return (
        a.in_proj_weight,
        a.in_proj_bias,
        a.out_proj,
        block.ln_1,
        block.ln_2,
        block.mlp,
        a.num_heads,
    )


def manual_block(block, x):
    """Explicit attention: returns output, q, k, v (B, H, L, hd), probs, context (B, L, d)."""
    w, b, out_proj, ln1, ln2, mlp, heads = block_parts(block)
    bsz, length, d = x.shape
    hd = d // heads
    qkv = _ln(x, ln1) @ w.T + b
    q, k, v = (t.reshape(bsz, length, heads, hd).transpose(1, 2) for t in qkv.split(d, dim=-1))
    probs = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5, dim=-1)
    context = (probs @ v).transpose(1, 2).reshape(bsz, length, d)
    out = x + context @ out_proj.weight.T + out_proj.bias
    out = out + mlp(_ln(out, ln2))
    return out, q, k, v, probs, context


def hand_score(clf, last_out, target):
    tower = clf.vision
    emb = tower.head(last_out)
    return (clf.scale * F.normalize(emb, dim=-1) @ clf.text_embeddings[target].T).diagonal()


def hand_grad_eclip(clf, images, target, spatial="loosened"):
    tower = clf.vision
    with torch.no_grad():
        x = tower.hidden_state(images, tower.n_blocks - 1)
    x = x.requires_grad_(True)
    out, q, k, v, probs, context = manual_block(tower.blocks[-1], x)
    score = hand_score(clf, out, target)
    (grad,) = torch.autograd.grad(score.sum(), context)
    w = grad[:, 0]  # (B, d)
    bsz, heads, length, hd = v.shape
    vc = v.transpose(1, 2).reshape(bsz, length, -1)
    if spatial == "attention":
        lam = probs[:, :, 0, :].repeat_interleave(hd, dim=1).transpose(1, 2)  # (B, L, d)
        contrib = (lam * vc * w[:, None]).sum(-1)
    else:
        contrib = (vc * w[:, None]).sum(-1)
        if spatial == "loosened":
            qc = q.transpose(1, 2).reshape(bsz, length, -1)[:, 0]
            kc = k.transpose(1, 2).reshape(bsz, length, -1)[:, 1:]
            cos = (F.normalize(kc, dim=-1) * F.normalize(qc, dim=-1)[:, None]).sum(-1)
            lam = (cos - cos.min(1, keepdim=True).values) / (
                cos.max(1, keepdim=True).values - cos.min(1, keepdim=True).values
            )
            contrib = torch.cat([contrib[:, :1], contrib[:, 1:] * lam], dim=1)
    h, w_ = tower.grid_size
    return F.relu(contrib[:, 1:]).reshape(bsz, h, w_).detach()


def upsample(maps, size):
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)
    return up.expand(-1, 3, -1, -1)


@pytest.fixture(scope="module")
def clf():
    return ClipClassifier(make_tiny_vit(), tiny_tokenizer(), CLASSES)


@pytest.mark.parametrize("spatial", ["loosened", "attention", "none"])
def test_matches_formula_by_hand(clf, spatial):
    torch.manual_seed(2)
    x = torch.randn(3, 3, 32, 32)
    target = [1, 2, 0]
    attr = GradECLIP(clf, spatial=spatial).attribute(x, target=target)
    hand = hand_grad_eclip(clf, x, torch.tensor(target), spatial)
    assert attr.shape == x.shape
    assert hand.abs().sum() > 0
    torch.testing.assert_close(attr, upsample(hand, (32, 32)), atol=1e-5, rtol=1e-4)


def test_spatial_weighting_changes_the_map(clf):
    x = torch.randn(2, 3, 32, 32)
    loose = GradECLIP(clf).attribute(x, target=0)
    flat = GradECLIP(clf, spatial="none").attribute(x, target=0)
    assert not torch.allclose(loose, flat, atol=1e-4)


def test_hf_matches_formula_by_hand():
    clf = ClipClassifier(make_tiny_hf_clip(), ToyHFTokenizer(), CLASSES)
    x = torch.randn(2, 3, 32, 32)
    attr = GradECLIP(clf).attribute(x, target=[2, 1])
    hand = hand_grad_eclip(clf, x, torch.tensor([2, 1]))
    torch.testing.assert_close(attr, upsample(hand, (32, 32)), atol=1e-5, rtol=1e-4)


def test_exact_attention_contributions_sum_to_first_order_term(clf):
    """With the model's own attention, sum_i sum_c w_c A_i v_ic = w . o_cls (exact)."""
    x = torch.randn(2, 3, 32, 32)
    tower = clf.vision
    last = tower.n_blocks - 1
    with HookManager() as hooks:
        scores, store = traced_scores(clf, tower, x, (), torch.tensor([0, 2]), [last], hooks)
        trace = store[last]
        (grad,) = torch.autograd.grad(scores.sum(), trace.context)
    contrib = grad_eclip_contributions(trace, grad, 1, "attention")
    first_order = (grad[:, 0] * trace.context[:, 0]).sum(-1)
    torch.testing.assert_close(contrib.sum(1), first_order.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.detach(), clf(x)[torch.arange(2), torch.tensor([0, 2])])


def one_informative_patch_model(j):
    """One block; every token except patch j is exactly zero up to the value projection,
    so only patch j's value can reach the class token."""
    torch.manual_seed(3)
    cfg = dict(TINY_VIT, vision_cfg=dict(TINY_VIT["vision_cfg"], layers=1))
    model = open_clip.model.CLIP(**cfg).eval()
    v = model.visual
    blk = v.transformer.resblocks[0]
    d = v.class_embedding.shape[0]
    with torch.no_grad():
        v.positional_embedding.zero_()
        v.class_embedding.zero_()
        v.ln_pre.bias.zero_()
        blk.ln_1.bias.zero_()
        blk.attn.in_proj_bias[d:].zero_()  # b_k = b_v = 0; b_q stays
    img = torch.zeros(1, 3, 32, 32)
    img[:, :, 8 * j[0] : 8 * j[0] + 8, 8 * j[1] : 8 * j[1] + 8] = torch.randn(3, 8, 8)
    sim = ClipSimilarity(model, tiny_tokenizer(), ["a", "b"])
    u = F.normalize(torch.randn(32), dim=0)
    sim.text_embeddings = torch.stack([u, -u])  # the two targets have opposite gradients
    return model, sim, img


@pytest.mark.parametrize("spatial", ["none", "attention", "loosened"])
def test_toy_only_the_informative_patch_is_attributed(spatial):
    j = (1, 2)
    model, sim, img = one_informative_patch_model(j)
    if spatial == "loosened":  # align the class query with patch j's key: lambda_j = 1
        blk = model.visual.transformer.resblocks[0]
        d = 64
        with torch.no_grad():
            tok = model.visual._embeds(img)[0, 1 + 4 * j[0] + j[1]]
            k_j = blk.ln_1(tok) @ blk.attn.in_proj_weight[d : 2 * d].T
            blk.attn.in_proj_bias[:d] = k_j
    explainer = GradECLIP(sim, spatial=spatial)
    maps = [explainer.attribute(img, target=t)[0, 0] for t in (0, 1)]
    cell = torch.zeros(32, 32, dtype=torch.bool)
    cell[8 * j[0] : 8 * j[0] + 8, 8 * j[1] : 8 * j[1] + 8] = True
    # bilinear upsampling spreads patch j's value up to half a patch around its cell
    near = F.max_pool2d(cell[None, None].float(), 9, stride=1, padding=4)[0, 0].bool()
    for m in maps:
        assert m[~near].abs().max() == 0
    positive = [m for m in maps if m.max() > 0]
    assert len(positive) == 1  # w flips sign with the target; exactly one side is kept
    peak = positive[0].argmax()
    assert cell.flatten()[peak]


def test_batch_split_invariance_and_no_grad_context(clf):
    x = torch.randn(5, 3, 32, 32)
    explainer = GradECLIP(clf)
    full = explainer.attribute(x, target=[0, 1, 2, 0, 1])
    with torch.no_grad():
        split = explainer.attribute(x, target=[0, 1, 2, 0, 1], internal_batch_size=2)
    torch.testing.assert_close(full, split, atol=1e-6, rtol=1e-5)


def test_frozen_model_gives_the_same_map_and_no_grads(clf):
    x = torch.randn(2, 3, 32, 32)
    ref = GradECLIP(clf).attribute(x, target=1)
    assert all(p.grad is None for p in clf.model.parameters())
    flags = [p.requires_grad for p in clf.model.parameters()]
    clf.model.requires_grad_(False)
    try:
        frozen = GradECLIP(clf).attribute(x, target=1)
        assert not any(p.requires_grad for p in clf.model.parameters())
    finally:
        for p, f in zip(clf.model.parameters(), flags):
            p.requires_grad_(f)
    torch.testing.assert_close(ref, frozen)


def test_errors(clf):
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="spatial"):
        GradECLIP(clf, spatial="softmax")
    g = GradECLIP(clf)
    with pytest.raises(ValueError, match="target is required"):
        g.attribute(x)
    with pytest.raises(ValueError, match=r"target must be in \[0, 2\]"):
        g.attribute(x, target=-1)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        g.attribute(torch.randn(2, 1, 32, 32), target=0)
    with pytest.raises(TypeError, match="internal_batch_size"):
        g.attribute(x, target=0, internal_batch_size=1.5)
    avg = dict(TINY_VIT, vision_cfg=dict(TINY_VIT["vision_cfg"], pool_type="avg"))
    model = open_clip.model.CLIP(**avg).eval()  # no class token read: the mean patch row
    a = GradECLIP(ClipClassifier(model, tiny_tokenizer(), CLASSES)).attribute(x, target=0)
    assert a.shape == x.shape and torch.isfinite(a).all() and (a >= 0).all() and a.sum() > 0
