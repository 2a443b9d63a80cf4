"""CCI: masking really hides regions, batching is exact, closed forms, Captum fit, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import NoiseTunnel
from captum.attr import visualization as viz
from captum.metrics import infidelity
from conftest import ToyHFTokenizer, make_tiny_hf_clip, make_tiny_resnet, make_tiny_vit
from torch import nn

from captum_clip.attr.cci import CCI, CCIResult, ClusterConceptImportance
from captum_clip.models import ClipClassifier, ClipSimilarity

CLASSES = ["cat", "dog", "car"]


@pytest.fixture
def clf(tiny_vit, tokenizer):
    return ClipClassifier(tiny_vit, tokenizer, CLASSES)


@pytest.fixture
def x():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def patch_pixels(hidden: torch.Tensor, grid: int = 4, size: int = 32) -> torch.Tensor:
    """(P,) bool patch mask -> (H, W) bool pixel mask."""
    m = hidden.reshape(1, 1, grid, grid).float()
    return F.interpolate(m, size=(size, size), mode="nearest")[0, 0].bool()


def test_attributions_fit_captum_tools(clf, x):
    cci = CCI(clf, n_clusters=4)
    attr = cci.attribute(x, target=1)
    assert attr.shape == x.shape and attr.dtype == x.dtype
    assert torch.equal(attr[:, 0], attr[:, 2])  # broadcast over channels
    fig, _ = viz.visualize_image_attr(
        attr[0].permute(1, 2, 0).numpy(), method="heat_map", sign="all", use_pyplot=False
    )
    assert fig is not None
    nt = NoiseTunnel(cci).attribute(
        x[:1], nt_type="smoothgrad", nt_samples=2, stdevs=0.05, target=1
    )
    assert nt.shape == x[:1].shape and torch.isfinite(nt).all()

    def perturb(inputs):
        noise = 0.05 * torch.randn(inputs.shape, generator=torch.Generator().manual_seed(0))
        return noise, inputs - noise

    inf = infidelity(clf, perturb, x[:2], attr[:2], target=1, n_perturb_samples=2)
    assert inf.shape == (2,) and torch.isfinite(inf).all()
    # tuple in, tuple out (Captum convention)
    (again,) = cci.attribute((x,), target=1)
    torch.testing.assert_close(again, attr)


@pytest.mark.parametrize("kind", ["vit", "hf"])
def test_batched_scores_equal_separate_forwards(kind, tokenizer):
    if kind == "vit":
        head = ClipClassifier(make_tiny_vit(), tokenizer, CLASSES)
    else:
        head = ClipSimilarity(make_tiny_hf_clip(), ToyHFTokenizer(), ["a cat", "a red dog"])
    x = torch.randn(2, 3, 32, 32)
    target = [1, 0]
    _, res = CCI(head, n_clusters=5, estimator="occlusion").attribute(
        x, target=target, return_clusters=True
    )
    with torch.no_grad():
        torch.testing.assert_close(res.base_score, head(x)[[0, 1], target])
        for i in range(2):
            flat = res.labels[i].reshape(-1)
            for k in range(int(flat.max()) + 1):
                with head.vision.hide_patches((flat == k)[None]):
                    s_k = head(x[i : i + 1])[0, target[i]]
                torch.testing.assert_close(res.scores[i, k], s_k, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.deltas, res.base_score[:, None] - res.scores)


def test_attention_mode_really_hides_the_cluster(clf, x):
    _, res = CCI(clf, n_clusters=4, estimator="occlusion").attribute(
        x, target=2, return_clusters=True
    )
    flat = res.labels[0].reshape(-1)
    k = int(torch.bincount(flat).argmax())
    hidden = flat == k
    pix = patch_pixels(hidden)
    noisy = x[:1].clone()
    noisy[..., pix] = 5 * torch.randn(3, int(pix.sum()))
    with torch.no_grad():
        with clf.vision.hide_patches(hidden[None]):
            s_noisy = clf(noisy)[0, 2]
        unhidden_change = (clf(noisy)[0, 2] - clf(x[:1])[0, 2]).abs()
    torch.testing.assert_close(s_noisy, res.scores[0, k], rtol=1e-4, atol=1e-5)
    assert unhidden_change > 1e-3  # the noise does matter when the patches are visible


def test_batch_split_and_seed_determinism(clf, x):
    a, r = CCI(clf, n_clusters=(3, 4)).attribute(x, target=0, return_clusters=True)
    b, q = CCI(clf, n_clusters=(3, 4)).attribute(
        x, target=0, internal_batch_size=5, return_clusters=True, show_progress=True
    )
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for u, v in zip(r, q):
        assert torch.equal(u.labels, v.labels)
        torch.testing.assert_close(u.scores, v.scores, rtol=1e-4, atol=1e-5, equal_nan=True)
    # per-example results do not depend on the batch they are computed in
    c = CCI(clf, n_clusters=(3, 4)).attribute(x[1:2], target=0)
    torch.testing.assert_close(c, a[1:2], rtol=1e-4, atol=1e-5)


class Counting(nn.Module):
    """Wraps a forward function; raises on call number ``fail_at`` (1-based)."""

    def __init__(self, head: nn.Module, fail_at: int | None = None) -> None:
        super().__init__()
        self.head, self.fail_at, self.calls, self.rows = head, fail_at, 0, []

    @property
    def vision(self):
        return self.head.vision

    def forward(self, images, *args):
        self.calls += 1
        self.rows.append(images.shape[0])
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return self.head(images, *args)


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def test_model_restored_after_exception(clf, x, tiny_vit):
    tiny_vit.visual.transformer.resblocks[0].train()  # an odd state that must survive
    tiny_vit.visual.proj.requires_grad_(False)
    with torch.no_grad():
        before = clf(x)
    state = [(m.training) for m in tiny_vit.modules()]
    wrapped = Counting(clf, fail_at=3)  # base pass, chunk 1, chunk 2 raises
    with pytest.raises(RuntimeError, match="boom"):
        CCI(wrapped, n_clusters=4).attribute(x, target=0, internal_batch_size=4)
    assert wrapped.calls == 3
    assert _hook_count(tiny_vit) == 0
    assert [m.training for m in tiny_vit.modules()] == state
    assert not tiny_vit.visual.proj.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(clf(x), before)


def test_one_batched_forward_for_all_variants(clf, x):
    wrapped = Counting(clf)
    _, res = CCI(wrapped, n_clusters=(2, 3, 4), estimator="occlusion").attribute(
        x, target=0, return_clusters=True
    )
    n_variants = sum(int(torch.isfinite(r.scores).sum()) for r in res)
    assert wrapped.rows == [3, n_variants]  # unmasked pass, then every variant at once


class PatchLinear(nn.Module):
    """Toy score: column 0 = Σ_p c_p * mean(pixels of patch p); column 1 = its negative."""

    def __init__(self, coef: torch.Tensor) -> None:
        super().__init__()
        self.coef = coef

    def forward(self, images):
        means = F.avg_pool2d(images.mean(1, keepdim=True), 8).flatten(1)  # (B, 16)
        s = means @ self.coef
        return torch.stack([s, -s], 1)


@pytest.mark.parametrize("normalize", ["abs", "sum", None])
@pytest.mark.parametrize("baseline", [None, 0.5])
def test_pixel_mode_closed_form(tiny_vit, x, normalize, baseline):
    coef = torch.linspace(-1, 2, 16)
    toy = PatchLinear(coef)
    cci = CCI(
        toy, vision_model=tiny_vit, n_clusters=5, mask_mode="pixel", normalize=normalize,
        estimator="occlusion",
    )  # fmt: skip
    attr, res = cci.attribute(x, target=0, baselines=baseline, return_clusters=True)
    means = F.avg_pool2d(x.mean(1, keepdim=True), 8).flatten(1)
    fill = 0.0 if baseline is None else baseline
    expected_map = torch.zeros(3, 16)
    for i in range(3):
        flat = res.labels[i].reshape(-1)
        n = int(flat.max()) + 1
        delta = torch.stack([(coef * (means[i] - fill) * (flat == k)).sum() for k in range(n)])
        torch.testing.assert_close(res.deltas[i, :n], delta, rtol=1e-4, atol=1e-5)
        if normalize == "abs":
            w = delta / delta.abs().sum()
        elif normalize == "sum":
            w = delta / delta.sum()
        else:
            w = delta
        torch.testing.assert_close(res.weights[i, :n], w, rtol=1e-4, atol=1e-5)
        expected_map[i] = w[flat]
    up = F.interpolate(expected_map.reshape(3, 1, 4, 4), size=(32, 32), mode="nearest")
    torch.testing.assert_close(attr, up.expand(3, 3, 32, 32), rtol=1e-4, atol=1e-5)


def test_normalisations_and_prob_score(clf, x):
    occ = dict(n_clusters=4, estimator="occlusion")
    _, raw = CCI(clf, normalize=None, **occ).attribute(x, 0, return_clusters=True)
    _, ab = CCI(clf, **occ).attribute(x, 0, return_clusters=True)
    _, sm = CCI(clf, normalize="sum", **occ).attribute(x, 0, return_clusters=True)
    d = torch.nan_to_num(raw.deltas)
    torch.testing.assert_close(torch.nan_to_num(raw.weights), d)
    torch.testing.assert_close(torch.nan_to_num(ab.weights).abs().sum(1), torch.ones(3))
    torch.testing.assert_close(torch.nan_to_num(sm.weights).sum(1), torch.ones(3))
    torch.testing.assert_close(torch.nan_to_num(ab.weights), d / d.abs().sum(1, keepdim=True))
    _, pr = CCI(clf, score="prob", **occ).attribute(x, 0, return_clusters=True)
    with torch.no_grad():
        torch.testing.assert_close(pr.base_score, clf(x).softmax(1)[:, 0])
    assert ((pr.scores >= 0) & (pr.scores <= 1)).all()


def test_multi_k_is_the_mean_of_single_k(clf, x):
    multi, res = CCI(clf, n_clusters=(2, 3, 5)).attribute(x, target=1, return_clusters=True)
    singles = [CCI(clf, n_clusters=k).attribute(x, target=1) for k in (2, 3, 5)]
    torch.testing.assert_close(multi, torch.stack(singles).mean(0), rtol=1e-4, atol=1e-5)
    assert [r.n_clusters for r in res] == [2, 3, 5]
    assert all(isinstance(r, CCIResult) for r in res)
    assert ClusterConceptImportance is CCI


class GappyClusterer:
    """scikit-learn style estimator whose labels skip ids (clusters 1, 2, 4 are empty)."""

    def __init__(self, n_clusters: int = 5) -> None:
        self.n_clusters = n_clusters

    def get_params(self, deep=True):
        return {"n_clusters": self.n_clusters}

    def set_params(self, **p):
        self.__dict__.update(p)
        return self

    def fit_predict(self, x):
        return np.where(np.arange(len(x)) < len(x) // 2, 0, 3)


def test_custom_clusterer_and_empty_clusters_dropped(clf, x):
    attr, res = CCI(clf, n_clusters=5, clusterer=GappyClusterer()).attribute(
        x, target=0, return_clusters=True
    )
    assert set(res.labels.unique().tolist()) == {0, 1}
    assert torch.isfinite(res.scores[:, :2]).all() and torch.isnan(res.scores[:, 2:]).all()
    top = res.top_cluster()
    assert top.shape == (3, 4, 4)
    assert torch.equal(
        top, res.labels == torch.nan_to_num(res.weights, nan=-9).argmax(1)[:, None, None]
    )


def test_additional_forward_args_follow_their_rows(clf, x):
    def scaled(images, scale):
        return clf(images) * scale[:, None]

    scale = torch.tensor([1.0, -2.0, 3.0])
    _, plain = CCI(clf, n_clusters=3).attribute(x, target=2, return_clusters=True)
    _, res = CCI(scaled, vision_model=clf.vision, n_clusters=3).attribute(
        x, target=2, additional_forward_args=(scale,), return_clusters=True, internal_batch_size=2
    )
    torch.testing.assert_close(res.scores, plain.scores * scale[:, None], equal_nan=True)


def test_resnet_pixel_mode_and_similarity(tokenizer):
    rn = make_tiny_resnet()
    sim = ClipSimilarity(rn, tokenizer, ["a cat", "a dog"])
    x = torch.randn(2, 3, 64, 64)
    attr, res = CCI(sim, n_clusters=3, mask_mode="pixel").attribute(
        x, target=torch.tensor([0, 1]), baselines="blur", return_clusters=True
    )
    assert attr.shape == x.shape and res.labels.shape == (2, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(res.base_score, sim(x)[[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="pixel"):
        CCI(sim, mask_mode="attention")
    # open_clip visual module and full CLIP are accepted as vision_model
    assert CCI(lambda im: sim(im), vision_model=rn.visual, n_clusters=2, mask_mode="pixel")
    assert CCI(lambda im: sim(im), vision_model=rn, n_clusters=2, mask_mode="pixel")


def test_bad_input_errors(clf, x):
    with pytest.raises(ValueError, match="larger than the 16 patches"):
        CCI(clf, n_clusters=17)
    with pytest.raises(ValueError, match="n_clusters"):
        CCI(clf, n_clusters=0)
    with pytest.raises(ValueError, match="mask_mode"):
        CCI(clf, mask_mode="pixels")
    with pytest.raises(ValueError, match="32x32"):
        CCI(clf).attribute(torch.randn(1, 3, 64, 64), target=0)
    with pytest.raises(ValueError, match=r"target must be in \[0, 2\]"):
        CCI(clf, n_clusters=3).attribute(x, target=3)
    with pytest.raises(ValueError, match="target is required"):
        CCI(clf, n_clusters=3).attribute(x)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        CCI(clf, n_clusters=3).attribute(bad, target=0)
    with pytest.raises(TypeError, match="vision"):
        CCI(lambda im: clf(im))
    with pytest.raises(ValueError, match="internal_batch_size"):
        CCI(clf, n_clusters=3).attribute(x, target=0, internal_batch_size=0)
    with pytest.raises(ValueError, match="pixel"):
        CCI(clf, n_clusters=3).attribute(x, target=0, baselines=0.5)


# ------------------------------------------------------------------------ defaults
@pytest.fixture(scope="module")
def testbed():
    """The bundled testbed CLIP (64x64 images, 8x8 = 64 patches) and two of its scenes."""
    from captum_clip.testbed import load_testbed, shapes

    model, _, tok = load_testbed("default")
    head = ClipClassifier(model, tok, list(shapes.CLASS_NAMES), templates=["a photo of {}"])
    s = shapes.generate_scenes(2, seed=3)
    return head, shapes.normalize(s.images), s.labels


def test_default_is_sufficiency_over_32_regions(testbed):
    head, _, _ = testbed
    assert head.vision.n_patches == 64
    cci = CCI(head)
    assert cci.estimator == "sufficiency" and cci.budget is None
    assert cci.n_clusters == (min(32, head.vision.n_patches),) == (32,)
    assert cci.mask_mode == "attention" and cci.normalize == "abs"
    # K per estimator when n_clusters is not given
    assert CCI(head, estimator="occlusion").n_clusters == (7,)
    assert CCI(head, estimator="shapley").n_clusters == (7,)
    assert CCI(head, estimator="banzhaf").n_clusters == (7,)
    assert CCI(head, estimator="sampled_shapley").n_clusters == (16,)
    assert CCI(head, estimator="owen").n_clusters == (16,)
    assert CCI(head, estimator="owen", budget=None).n_clusters == (7,)  # exact Owen
    assert CCI(head, n_clusters=5).estimator == "sufficiency"  # a given K keeps the default


def test_default_values_equal_keep_one_region_by_hand(testbed):
    """CCI(clf): v({k}) - v(∅) -- the score with only region k's patches visible minus the
    score with every patch hidden -- normalised by Σ|.|, painted on the region's pixels."""
    head, x, target = testbed
    attr, res = CCI(head).attribute(x, target=target, return_clusters=True)
    assert res.estimator == "sufficiency" and res.n_clusters == 32
    assert res.labels.shape == (2, 8, 8) and res.values.shape == res.weights.shape == (2, 32)
    with torch.no_grad():
        torch.testing.assert_close(res.base_score, head(x)[[0, 1], target])
        for i in range(2):
            image, t = x[i : i + 1], int(target[i])
            flat = res.labels[i].reshape(-1)
            n = int(flat.max()) + 1
            assert n > 2  # else "only k visible" would be a leave-one-out coalition too
            with head.vision.hide_patches(torch.ones(1, 64, dtype=torch.bool)):
                empty = head(image)[0, t]
            values = []
            for k in range(n):
                with head.vision.hide_patches((flat != k)[None]):
                    values.append(head(image)[0, t] - empty)
            values = torch.stack(values)
            torch.testing.assert_close(res.values[i, :n], values, rtol=1e-4, atol=1e-4)
            weights = values / values.abs().sum()
            torch.testing.assert_close(res.weights[i, :n], weights, rtol=1e-4, atol=1e-5)
            assert torch.isnan(res.values[i, n:]).all() and torch.isnan(res.weights[i, n:]).all()
            # no region was hidden alone: no leave-one-out score was evaluated
            assert torch.isnan(res.scores[i]).all()
            expected = weights[flat].reshape(8, 8).repeat_interleave(8, 0).repeat_interleave(8, 1)
            torch.testing.assert_close(attr[i, 0], expected, rtol=1e-4, atol=1e-5)
            assert torch.equal(attr[i, 0], attr[i, 2])


def test_default_for_is_the_papers_occlusion_with_k7(testbed):
    head, x, target = testbed
    paper = CCI.default_for(head)
    assert paper.estimator == "occlusion" and paper.n_clusters == (7,)
    assert paper.mask_mode == "attention" and paper.normalize == "abs"
    a, r = paper.attribute(x, target=target, return_clusters=True)
    b, q = CCI(head, estimator="occlusion", n_clusters=7).attribute(
        x, target=target, return_clusters=True
    )
    assert torch.equal(a, b) and torch.equal(r.labels, q.labels)
    for u, v in ((r.scores, q.scores), (r.values, q.values), (r.weights, q.weights)):
        torch.testing.assert_close(u, v, rtol=0, atol=0, equal_nan=True)
    assert r.estimator == "occlusion"
    torch.testing.assert_close(r.deltas, r.values, rtol=0, atol=0, equal_nan=True)
    # the library default is another map
    assert not torch.allclose(CCI(head).attribute(x, target=target), a)
    # arguments still override the paper's settings
    assert CCI.default_for(head, 3).n_clusters == (3,)
    other = CCI.default_for(head, estimator="sufficiency")
    assert other.estimator == "sufficiency" and other.n_clusters == (7,)


def test_default_k_is_capped_at_the_grid(clf, tiny_resnet, tokenizer):
    assert clf.vision.n_patches == 16  # 32x32 images, 8x8 patches
    cci = CCI(clf)
    assert cci.estimator == "sufficiency" and cci.n_clusters == (16,)
    assert CCI(clf, estimator="sampled_shapley").n_clusters == (16,)
    assert CCI(clf, estimator="occlusion").n_clusters == (7,)
    assert CCI.default_for(clf, 40).n_clusters == (16,)
    with pytest.raises(ValueError, match="larger than the 16 patches"):
        CCI(clf, n_clusters=32)  # a K the user gives is not capped
    attr, res = cci.attribute(torch.randn(1, 3, 32, 32), target=0, return_clusters=True)
    assert res.n_clusters == 16 and res.values.shape == (1, 16) and torch.isfinite(attr).all()
    # a convolutional tower in pixel mode: capped at the cells of its last feature map
    rn = ClipClassifier(tiny_resnet, tokenizer, CLASSES)
    conv = CCI(rn)
    assert conv.mask_mode == "pixel" and conv.estimator == "sufficiency"
    assert conv.n_clusters == (min(32, conv.vision.n_patches),) and conv.vision.n_patches < 32
