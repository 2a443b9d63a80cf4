"""LeGrad: the authors' package on open_clip, a hand implementation, every tower family."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _tiny_timm import BUILDERS
from conftest import make_tiny_vit, tiny_tokenizer
from test_grad_eclip import manual_block

from captum_clip.attr import LeGrad
from captum_clip.models import ClipClassifier

CLASSES = ["cat", "dog", "car"]


def _clf(model, tok):
    return ClipClassifier(model, tok, CLASSES, templates=("a photo of {}",))


def _min_max(t):
    return (t - t.min()) / (t.max() - t.min())


def test_legrad_matches_the_authors_package_on_open_clip():
    legrad = pytest.importorskip("legrad")
    model = make_tiny_vit(0)
    clf = _clf(model, tiny_tokenizer())
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    ours = LeGrad(clf, start_layer=0).patch_maps(x, target=[0, 2])
    ref_model = legrad.LeWrapper(copy.deepcopy(model), layer_index=0)
    for i, t in enumerate([0, 2]):
        ref = ref_model.compute_legrad_clip(clf.text_embeddings[t][None], x[i : i + 1])[0, 0]
        up = F.interpolate(ours[i][None, None], scale_factor=8, mode="bilinear")[0, 0]
        torch.testing.assert_close(_min_max(up), ref.detach(), atol=1e-5, rtol=0)


def hand_legrad(clf, images, target, start):
    """Per block: the mean token through ln_post/proj, cosine, d/d probs (explicit blocks)."""
    tower = clf.vision
    x = tower.embed(images).detach()
    total = 0
    for i, block in enumerate(tower.blocks):
        x, _, _, _, probs, _ = manual_block(block, x)
        if i < start:
            x = x.detach()
            continue
        emb = F.normalize(tower.token_head(x.mean(1)), dim=-1)
        score = (emb * clf.text_embeddings[target]).sum()
        (g,) = torch.autograd.grad(score, probs, retain_graph=True)
        total = total + g.clamp(min=0).mean(1).mean(1)[:, 1:]
    return total.reshape(-1, *tower.grid_size)


@pytest.mark.parametrize("start", [0, 1])
def test_legrad_matches_hand_implementation(start):
    clf = _clf(make_tiny_vit(3), tiny_tokenizer())
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor([1, 0, 2])
    ours = LeGrad(clf, start_layer=start).patch_maps(x, target=t)
    torch.testing.assert_close(ours, hand_legrad(clf, x, t, start), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_legrad_every_family_non_negative_and_batch_split_invariant(family):
    model, tok = BUILDERS[family](0)
    clf = _clf(model, tok)
    x = torch.randn(3, 3, *clf.image_size)
    lg = LeGrad(clf)
    whole = lg.attribute(x, target=[0, 1, 2])
    split = lg.attribute(x, target=[0, 1, 2], internal_batch_size=1)
    assert whole.shape == x.shape and (whole >= 0).all() and whole.sum() > 0
    torch.testing.assert_close(whole, split, atol=1e-6, rtol=1e-4)
    assert all("forward" not in vars(b) for b in clf.vision.blocks)  # patches undone


def test_legrad_target_matters_and_bad_input():
    clf = _clf(make_tiny_vit(0), tiny_tokenizer())
    x = torch.randn(1, 3, 32, 32)
    lg = LeGrad(clf)
    assert not torch.allclose(lg.attribute(x, target=0), lg.attribute(x, target=1))
    with pytest.raises(ValueError, match="target"):
        lg.attribute(x)
    with pytest.raises(ValueError, match="text_embeddings"):
        LeGrad(lambda images: images.sum((1, 2, 3)), vision_model=clf.model)
