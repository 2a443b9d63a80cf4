"""Gradient-weighted rollout, and the handwritten block forward all baselines share.

The rollout is pinned against a fully manual forward (attention probabilities from the
in_proj weights, gradients by autograd on that forward); the handwritten block forward
against the blocks' own outputs; the hook/patch hygiene on exceptions for both gradient
methods (GradECLIP and GradientRollout)."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_VIT, ToyHFTokenizer, make_tiny_hf_clip, make_tiny_vit, tiny_tokenizer
from test_grad_eclip import hand_score, manual_block, one_informative_patch_model, upsample

from captum_clip._hooks import HookManager
from captum_clip.attr import GradECLIP, GradientRollout, MaskCLIP
from captum_clip.models import ClipClassifier
from captum_clip.models.blocks import BlockView, block_forward, trace_blocks

CLASSES = ["cat", "dog", "car"]


@pytest.fixture(scope="module")
def clf():
    return ClipClassifier(make_tiny_vit(), tiny_tokenizer(), CLASSES)


def hand_rollout(clf, images, target, start=0):
    tower = clf.vision
    with torch.no_grad():
        x = tower.embed(images)
    x = x.requires_grad_(True)
    probs = []
    for block in tower.blocks:
        x, _, _, _, p, _ = manual_block(block, x)
        probs.append(p)
    score = hand_score(clf, x, target)
    grads = torch.autograd.grad(score.sum(), probs)
    length = x.shape[1]
    r = torch.eye(length).repeat(len(images), 1, 1)
    for a, g in list(zip(probs, grads))[start:]:
        cam = (g * a).clamp(min=0).mean(1)
        r = r + torch.bmm(cam, r)
    h, w = tower.grid_size
    return r[:, 0, 1:].reshape(len(images), h, w).detach()


# --- the handwritten block forward -------------------------------------------------------


@pytest.mark.parametrize("kind", ["open_clip", "layer_scale", "hf"])
def test_block_forward_equals_the_blocks_own_output(kind):
    if kind == "hf":
        model = make_tiny_hf_clip()
        clf = ClipClassifier(model, ToyHFTokenizer(), CLASSES)
    else:
        torch.manual_seed(0)
        cfg = TINY_VIT
        if kind == "layer_scale":
            cfg = dict(TINY_VIT, vision_cfg=dict(TINY_VIT["vision_cfg"], ls_init_value=0.3))
        clf = ClipClassifier(open_clip.model.CLIP(**cfg).eval(), tiny_tokenizer(), CLASSES)
    tower = clf.vision
    x = tower.embed(torch.randn(2, 3, 32, 32))
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[0, 3] = hidden[1, 7:9] = True
    for i, block in enumerate(tower.blocks):
        view = BlockView(block, tower.heads)
        ref = tower.run_blocks(x, i, i + 1)
        trace = block_forward(view, x)
        torch.testing.assert_close(trace.output, ref, atol=1e-5, rtol=1e-5)
        assert trace.probs.shape == (2, tower.heads, 17, 17)
        torch.testing.assert_close(trace.probs.sum(-1), torch.ones(2, tower.heads, 17))
        with tower.hide_patches(hidden):  # masked attention goes through the same path
            masked_ref = tower.run_blocks(x, i, i + 1)
        if kind == "hf":
            mask = torch.zeros(2, 1, 17, 17).masked_fill(
                torch.cat([torch.zeros(2, 1, dtype=torch.bool), hidden], 1)[:, None, None],
                float("-inf"),
            )
        else:
            mask = tower.key_mask(hidden)
        masked = block_forward(view, x, mask)
        torch.testing.assert_close(masked.output, masked_ref, atol=1e-5, rtol=1e-5)
        assert masked.probs[0, :, :, 1 + 3].abs().max() == 0
        x = ref


def test_traced_forward_leaves_outputs_unchanged_and_is_undone(clf):
    x = torch.randn(2, 3, 32, 32)
    before = clf(x)
    blocks = clf.vision.blocks
    with HookManager(clf) as hooks:
        store = trace_blocks(clf.vision, [0, 1], hooks)
        assert all("forward" in b.__dict__ for b in blocks)
        during = clf(x)
        assert sorted(store) == [0, 1]
    assert not any("forward" in b.__dict__ for b in blocks)
    torch.testing.assert_close(during, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clf(x), before)


def test_unsupported_blocks_are_rejected():
    cfg = dict(TINY_VIT, vision_cfg=dict(TINY_VIT["vision_cfg"], block_type="custom"))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**cfg).eval()
    for cls in (MaskCLIP, GradECLIP, GradientRollout):
        with pytest.raises(ValueError, match="ResidualAttentionBlock"):
            cls(ClipClassifier(model, tiny_tokenizer(), CLASSES))


# --- rollout -----------------------------------------------------------------------------


@pytest.mark.parametrize("start", [0, -1])
def test_rollout_matches_manual_forward(clf, start):
    torch.manual_seed(4)
    x = torch.randn(3, 3, 32, 32)
    target = [2, 1, 0]
    attr = GradientRollout(clf, start_layer=start).attribute(x, target=target)
    hand = hand_rollout(clf, x, torch.tensor(target), start=start % 2)
    assert attr.shape == x.shape
    assert hand.abs().sum() > 0
    torch.testing.assert_close(attr, upsample(hand, (32, 32)), atol=1e-6, rtol=1e-4)


def test_rollout_hf_matches_manual_forward():
    clf = ClipClassifier(make_tiny_hf_clip(), ToyHFTokenizer(), CLASSES)
    x = torch.randn(2, 3, 32, 32)
    attr = GradientRollout(clf).attribute(x, target=[0, 2])
    hand = hand_rollout(clf, x, torch.tensor([0, 2]))
    torch.testing.assert_close(attr, upsample(hand, (32, 32)), atol=1e-6, rtol=1e-4)


def test_rollout_toy_only_the_informative_patch_is_attributed():
    j = (3, 0)
    _, sim, img = one_informative_patch_model(j)
    explainer = GradientRollout(sim)
    maps = [explainer.attribute(img, target=t)[0, 0] for t in (0, 1)]
    cell = torch.zeros(32, 32, dtype=torch.bool)
    cell[8 * j[0] : 8 * j[0] + 8, 8 * j[1] : 8 * j[1] + 8] = True
    # bilinear upsampling spreads patch j's value up to half a patch around its cell
    near = F.max_pool2d(cell[None, None].float(), 9, stride=1, padding=4)[0, 0].bool()
    for m in maps:
        assert m[~near].abs().max() == 0
    positive = [m for m in maps if m.max() > 0]
    assert positive  # per-head signs may differ, so one or both targets keep patch j
    for m in positive:
        assert cell.flatten()[m.argmax()]


def test_rollout_batch_split_and_start_layer_range(clf):
    x = torch.randn(4, 3, 32, 32)
    r = GradientRollout(clf)
    torch.testing.assert_close(
        r.attribute(x, target=1), r.attribute(x, target=1, internal_batch_size=3)
    )
    with pytest.raises(ValueError, match="layer"):
        GradientRollout(clf, start_layer=2)


# --- hygiene shared by both gradient methods ---------------------------------------------


@pytest.mark.parametrize("cls", [GradECLIP, GradientRollout])
def test_exception_leaves_model_unchanged(clf, cls):
    model = clf.model
    x = torch.randn(2, 3, 32, 32)
    before = clf(x)

    def failing(images, fail):
        out = clf(images)  # runs the traced blocks, then fails
        if fail:
            raise RuntimeError("boom")
        return out

    model.train()
    model.visual.conv1.weight.requires_grad_(False)
    try:
        explainer = cls(failing, vision_model=model)
        with pytest.raises(RuntimeError, match="boom"):
            explainer.attribute(x, target=0, additional_forward_args=(True,))
        with pytest.raises(ValueError, match=r"target must be in \[0, 2\]"):
            explainer.attribute(x, target=5, additional_forward_args=(False,))
        for block in clf.vision.blocks:
            assert "forward" not in block.__dict__
            assert not block._forward_hooks and not block._forward_pre_hooks
        assert model.training and model.visual.transformer.resblocks[0].training
        assert not model.visual.conv1.weight.requires_grad
        assert all(p.grad is None for p in model.parameters())
        ok = explainer.attribute(x, target=0, additional_forward_args=(False,))
    finally:
        model.eval()
        model.visual.conv1.weight.requires_grad_(True)
    torch.testing.assert_close(clf(x), before)
    torch.testing.assert_close(ok, cls(clf).attribute(x, target=0))


@pytest.mark.parametrize("cls", [GradECLIP, GradientRollout])
def test_gradient_methods_validate(clf, cls):
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(TypeError, match="forward_func"):
        cls(lambda im: im)
    with pytest.raises(ValueError, match="did not run"):
        cls(lambda im: im.flatten(1)[:, :3], vision_model=clf.model).attribute(x, target=0)
    with pytest.raises(ValueError, match=r"\(B,\) or \(B, n_outputs\)"):
        cls(lambda im: clf(im)[None], vision_model=clf.model).attribute(x, target=0)
    e = cls(clf)
    with pytest.raises(ValueError, match="target is required"):
        e.attribute(x)
    with pytest.raises(TypeError, match="target"):
        e.attribute(x, target=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        e.attribute(x.clone().fill_(float("inf")), target=0)
    single = cls(lambda im: clf(im)[:, 1], vision_model=clf.model)
    torch.testing.assert_close(single.attribute(x), e.attribute(x, target=1))
