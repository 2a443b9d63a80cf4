"""Grid towers (RN50, ConvNeXt, FastViT / MobileCLIP, Swin) and a user-named grid layer.

Every number is checked against a straightforward computation on the same tiny random
model: the grid against a forward hook on the stage, GradCAM against autograd on the stage
output, CCI against clustering + masking + forwards by hand, the pixel interactions against
Captum's IntegratedGradients on the pixels and against the four-term score difference.
Swin's stages return ``(B, h, w, C)`` maps: the hand computations read them through
:func:`nchw`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _tiny_conv import IMAGE, make_convnext, make_custom, make_fastvit, make_resnet, make_swin
from captum.attr import IntegratedGradients
from conftest import make_tiny_vit, tiny_tokenizer
from sklearn.cluster import KMeans

from captum_clip.attr import CCI, GradECLIP, GradientRollout, IntegratedInteractions, MaskCLIP
from captum_clip.attr.gradcam import ViTGradCam, vit_gradcam
from captum_clip.diagnosis import REGION_ABLATION, diagnose
from captum_clip.metrics import deletion_curve
from captum_clip.models import ClipClassifier
from captum_clip.models.conv import LayerTower, OpenClipResNet, TimmConv

CLASSES = ["cat", "dog", "car"]
FAMILIES = {
    "resnet": make_resnet, "convnext": make_convnext, "fastvit": make_fastvit, "swin": make_swin
}  # fmt: skip


def grid_module(name: str, model: torch.nn.Module) -> torch.nn.Module:
    """The module whose output is the last feature map, named by hand per family."""
    v = model.visual
    return {"resnet": lambda: v.layer4, "convnext": lambda: v.trunk.stages[-1],
            "fastvit": lambda: v.trunk.final_conv,
            "swin": lambda: v.trunk.layers[-1]}[name]()  # fmt: skip


def nchw(name: str, out: torch.Tensor) -> torch.Tensor:
    """A stage output as ``(B, C, h, w)`` (Swin's stages return ``(B, h, w, C)``)."""
    return out.permute(0, 3, 1, 2) if name == "swin" else out


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model, tok = FAMILIES[request.param]()
    return request.param, model, ClipClassifier(model, tok, CLASSES)


def images(n: int = 2, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed)).to(dtype)


def hooked(module: torch.nn.Module, fn, *args):
    """(output of ``fn(*args)``, output of ``module`` in that call)."""
    seen = []
    handle = module.register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        out = fn(*args)
    finally:
        handle.remove()
    assert len(seen) == 1
    return out, seen[0]


def hand_gradcam(clf, module, x, target, channels_last=False):
    """ReLU(sum_c mean_hw(dS/dA_c) * A_c), autograd directly on the stage output."""
    with torch.enable_grad():
        out, acts = hooked(module, clf, x)
        score = out[torch.arange(len(x)), target].sum()
        (grad,) = torch.autograd.grad(score, acts)
    if channels_last:
        grad, acts = grad.permute(0, 3, 1, 2), acts.permute(0, 3, 1, 2)
    return F.relu((grad.mean((2, 3), keepdim=True) * acts).sum(1)).detach()


# ------------------------------------------------------------------------ adapters
def test_adapter_grid_is_the_last_stage(family):
    name, model, clf = family
    tower = clf.vision
    assert type(tower) is (OpenClipResNet if name == "resnet" else TimmConv)
    assert not tower.is_vit and tower.image_size == (IMAGE, IMAGE)
    assert tower.pool_type == ("attn" if name == "resnet" else "avg")
    assert tower.blocks[-1] is grid_module(name, model)
    x = images()
    with torch.no_grad():
        _, stage = hooked(grid_module(name, model), model.encode_image, x)
        stage = nchw(name, stage)
        feats = tower.patch_features(x)
    assert tower.grid_size == tuple(stage.shape[-2:]) == (IMAGE // 32, IMAGE // 32)
    torch.testing.assert_close(feats, stage.permute(0, 2, 3, 1), rtol=0, atol=0)
    with pytest.raises(ValueError, match="pixel"), tower.hide_patches(torch.zeros(1, 16).bool()):
        pass


def test_grid_probe_leaves_a_training_model_alone():
    model, _ = make_resnet()
    model.train()
    bn = model.visual.bn1
    before = bn.running_mean.clone()
    tower = ClipClassifier(model, tiny_tokenizer(), CLASSES).vision
    assert tower.grid_size == (4, 4)
    assert model.training and bn.training
    assert torch.equal(bn.running_mean, before)


# ------------------------------------------------------------------------ GradCAM
def test_gradcam_equals_hand_computation(family):
    name, model, clf = family
    x = images(3, seed=1)
    target = torch.tensor([0, 1, 2])
    gc = vit_gradcam(clf)
    ours = gc.patch_maps(x, target=target)
    ref = hand_gradcam(clf, grid_module(name, model), x, target, name == "swin")
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    attr = gc.attribute(x, target=target)
    assert attr.shape == x.shape and torch.isfinite(attr).all()
    # an earlier stage by index: the same hand computation on that stage's output
    earlier = vit_gradcam(clf, layer=-2).patch_maps(x, target=target)
    ref2 = hand_gradcam(clf, clf.vision.blocks[-2], x, target, name == "swin")
    torch.testing.assert_close(earlier, ref2, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------ CCI
def test_cci_auto_mode_is_pixel_and_maps_are_sane(family):
    _, _, clf = family
    x = images(2, seed=2)
    cci = CCI(clf, n_clusters=3)
    assert cci.mask_mode == "pixel"
    attr, res = cci.attribute(x, target=1, return_clusters=True)
    assert attr.shape == x.shape and torch.isfinite(attr).all() and attr.abs().sum() > 0
    assert res.labels.shape == (2, 4, 4)
    for labels in res.labels:  # every cell has a cluster, the clusters are 0..n-1
        assert set(labels.unique().tolist()) == set(range(int(labels.max()) + 1))
    default = CCI.default_for(clf)  # the paper's CCI
    assert default.mask_mode == "pixel" and default.n_clusters == (7,)
    assert default.estimator == "occlusion"
    library = CCI(clf)  # sufficiency, K = 32 capped at the 16 cells of the last stage
    assert library.mask_mode == "pixel" and library.estimator == "sufficiency"
    assert library.n_clusters == (16,)
    with pytest.raises(ValueError, match="mask_mode='pixel'"):
        CCI(clf, mask_mode="attention")


def test_cci_equals_hand_implementation(family):
    """k-means on the stage's cells, hide each cluster's pixels (baseline 0), score drops."""
    name = family[0]
    model, tok = FAMILIES[name]()
    model = model.double()  # float64: the batched and the one-by-one forwards agree to 1e-12
    clf = ClipClassifier(model, tok, CLASSES)
    x = images(1, seed=3, dtype=torch.float64)
    k, target = 3, 2
    km = KMeans(n_clusters=k, n_init=4, random_state=0)
    attr, res = CCI(clf, n_clusters=k, clusterer=km, estimator="occlusion").attribute(
        x, target=target, return_clusters=True
    )
    with torch.no_grad():
        out, stage = hooked(grid_module(name, model), clf, x)
        stage = nchw(name, stage)
        cells = F.normalize(stage[0].flatten(1).T.double(), dim=-1).numpy()
        raw = KMeans(n_clusters=k, n_init=4, random_state=0).fit_predict(cells)
        labels = torch.from_numpy(np.unique(raw, return_inverse=True)[1].reshape(4, 4))
        assert torch.equal(res.labels[0], labels)
        base = out[0, target]
        drops = []
        for c in range(k):
            cell = (labels == c).repeat_interleave(32, 0).repeat_interleave(32, 1)
            drops.append(base - clf(torch.where(cell, torch.zeros_like(x), x))[0, target])
        drops = torch.stack(drops)
    weights = drops / drops.abs().sum()
    # the classifier's logits are float32: the drops agree to float32 rounding of ~10-logits
    # (1e-6), which the weights carry divided by sum |drops| (~0.01 on these random towers)
    torch.testing.assert_close(res.deltas[0], drops.float(), rtol=0, atol=1e-6)
    own = res.deltas[0] / res.deltas[0].abs().sum()
    torch.testing.assert_close(res.weights[0], own, rtol=1e-6, atol=1e-7)
    tol = 2 * k * 1e-6 / float(drops.abs().sum())
    torch.testing.assert_close(res.weights[0], weights.float(), rtol=0, atol=tol)
    expected = weights[labels].repeat_interleave(32, 0).repeat_interleave(32, 1)
    torch.testing.assert_close(attr[0, 0], expected.to(attr.dtype), rtol=0, atol=tol)


def test_cci_pixel_mode_on_a_vit_and_auto_attention():
    clf = ClipClassifier(make_tiny_vit(), tiny_tokenizer(), CLASSES)
    assert CCI(clf, n_clusters=3).mask_mode == "attention"
    attr = CCI(clf, n_clusters=3, mask_mode="pixel").attribute(torch.randn(1, 3, 32, 32), 0)
    assert attr.shape == (1, 3, 32, 32) and torch.isfinite(attr).all()


# ------------------------------------------------------------------------ interactions
@pytest.mark.parametrize("name", list(FAMILIES))
def test_interactions_at_the_pixels(name):
    model, tok = FAMILIES[name]()
    model = model.double()
    x = images(1, seed=4, dtype=torch.float64)
    ii = IntegratedInteractions(model, tok)
    assert ii.patch_grid == (4, 4)
    res = ii.explain(x, ["a photo of a dog"], n_steps=32)
    assert res.attributions.shape[-1] == 16 and res.n_prefix == 0
    # completeness: sum A = the four-term score difference
    assert res.delta.abs().item() <= 1e-4
    assert res.delta.abs().item() <= 1e-6 * res.score_difference.abs().item()
    # column sums = IG at the pixels of img -> (f - f0) . g(img), summed per 32x32 patch
    ids = tok(["a photo of a dog"])
    ref_ids = ii.text_encoder.baseline(ids, None)
    with torch.no_grad():
        f = F.normalize(model.encode_text(torch.cat([ids, ref_ids])), dim=-1)
    ig = IntegratedGradients(
        lambda im: (F.normalize(model.encode_image(im), dim=-1) * (f[0] - f[1])).sum(-1)
    )
    pixels = ig.attribute(x, torch.zeros_like(x), n_steps=32)
    per_patch = pixels[0].sum(0).reshape(4, 32, 4, 32).sum((1, 3)).flatten()
    scale = per_patch.abs().max()
    assert scale > 0 and (res.image_attr[0] - per_patch).abs().max() <= 1e-6 * scale


def test_interactions_float32_completeness_and_layer_check(family):
    _, model, clf = family
    ii = IntegratedInteractions(model, tiny_tokenizer())
    a, delta = ii.attribute(images(2, seed=5), ["a cat", "a dog"], n_steps=8,
                            return_convergence_delta=True)  # fmt: skip
    assert a.shape == (2, 16, 16) and delta.abs().max() <= 1e-4
    with pytest.raises(ValueError, match="input pixels"):
        ii.attribute(images(1), ["a cat"], image_layer=1)


# ------------------------------------------------------------------------ diagnosis, metrics
def test_region_ablation_and_deletion_run(family):
    _, _, clf = family
    x = images(2, seed=6)
    yy, xx = torch.meshgrid(torch.arange(IMAGE), torch.arange(IMAGE), indexing="ij")
    masks = (((yy - 60) ** 2 + (xx - 70) ** 2) <= 40**2)[None].expand(2, -1, -1)
    d = diagnose(clf, x, masks, method=REGION_ABLATION, target=1)
    with torch.no_grad():
        base = clf(x)[:, 1]
        fg = clf(torch.where(masks[:, None], torch.zeros_like(x), x))[:, 1]
        bg = clf(torch.where(masks[:, None], x, torch.zeros_like(x)))[:, 1]
    np.testing.assert_allclose(d.table["fg_effect"], base - fg, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d.table["bg_effect"], base - bg, rtol=1e-4, atol=1e-5)
    attr = CCI.default_for(clf).attribute(x, target=1)
    frac, scores = deletion_curve(clf, x, attr, target=1, n_steps=4)
    assert torch.isfinite(scores).all()
    torch.testing.assert_close(scores[:, 0], base, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------ refusals, guard
def test_attention_methods_refuse_with_what_works(family):
    _, model, clf = family
    for method in (GradientRollout, GradECLIP, MaskCLIP):
        with pytest.raises(ValueError, match="not a ViT") as err:
            method(clf)
        for alternative in ("AttnLRP", "CCI", "vit_gradcam", "IntegratedInteractions",
                            "region_ablation"):  # fmt: skip
            assert alternative in str(err.value)


def test_model_restored_after_exception(family):
    name, model, clf = family
    model.train()
    model.visual.requires_grad_(True)
    frozen = next(model.visual.parameters())
    frozen.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]

    def failing(x):
        if failing.calls:
            raise RuntimeError("boom")
        failing.calls += 1
        return clf(x)

    for make in (
        lambda: CCI(failing, vision_model=clf, n_clusters=2).attribute(images(1), target=0),
        lambda: ViTGradCam(lambda x: clf(x)[:, :0], vision_model=clf).attribute(images(1), 0),
        lambda: IntegratedInteractions(model, tiny_tokenizer()).attribute(
            images(1), ["a cat"], image_baseline=lambda im: failing(im) + failing(im)
        ),
    ):
        failing.calls = 0
        with pytest.raises((RuntimeError, ValueError, TypeError)):
            make()
        assert model.training and all(m.training for m in model.modules())
        assert [p.requires_grad for p in model.parameters()] == flags
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    model.eval()
    model.requires_grad_(True)


# ------------------------------------------------------------------------ user-named layer
def test_user_named_grid_layer():
    model, tok = make_custom()
    clf = ClipClassifier(model, tok, CLASSES)
    layer = model.visual.features
    for make in (lambda: CCI(clf), lambda: vit_gradcam(clf), lambda: CCI.default_for(clf)):
        with pytest.raises(ValueError, match=r"grid_layer=model\.visual"):
            make()
    with pytest.raises(ValueError, match="not a submodule"):
        CCI(clf, grid_layer=torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="nn.Module"):
        vit_gradcam(clf, grid_layer="features")
    with pytest.raises(ValueError, match="attention"):
        CCI(clf, grid_layer=layer, mask_mode="attention")
    x = images(2, seed=7)
    target = torch.tensor([2, 0])
    gc = vit_gradcam(clf, grid_layer=layer).patch_maps(x, target=target)
    torch.testing.assert_close(gc, hand_gradcam(clf, layer, x, target), rtol=1e-5, atol=1e-7)
    cci = CCI(clf, n_clusters=4, grid_layer=layer, estimator="occlusion")
    assert isinstance(cci.vision, LayerTower) and cci.mask_mode == "pixel"
    attr, res = cci.attribute(x, target=target, return_clusters=True)
    assert res.labels.shape == (2, 8, 8) and torch.isfinite(attr).all()
    with torch.no_grad():  # the weights are the drops of hiding each cluster's 16x16 cells
        base = clf(x)[torch.arange(2), target]
        for i in range(2):
            cells = (res.labels[i] == 0).repeat_interleave(16, 0).repeat_interleave(16, 1)
            hidden = clf(torch.where(cells, torch.zeros_like(x[i]), x[i])[None])[0, target[i]]
            assert abs(float(res.deltas[i, 0]) - float(base[i] - hidden)) < 1e-5
    # a hybrid's conv stage named on a known tower (ViTamin-style): an earlier stage
    conv, _ = make_convnext()
    conv_clf = ClipClassifier(conv, tok, CLASSES)
    stage = conv.visual.trunk.stages[1]
    ours = vit_gradcam(conv_clf, grid_layer=stage).patch_maps(x, target=target)
    torch.testing.assert_close(ours, hand_gradcam(conv_clf, stage, x, target), rtol=1e-5, atol=1e-7)
    assert CCI(conv_clf, grid_layer=stage, n_clusters=3).attribute(x, 0).shape == x.shape
