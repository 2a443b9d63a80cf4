"""CCI region estimators and user regions on a tiny ViT: brute-force coalitions, identities."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_clip.attr import grid_regions
from captum_clip.attr._region_games import check_regions, patch_partition
from captum_clip.attr.cci import CCI
from captum_clip.benchmark.methods import ForwardCounter
from captum_clip.models import ClipClassifier

CLASSES = ["cat", "dog", "car"]


@pytest.fixture
def clf(tiny_vit, tokenizer):
    return ClipClassifier(tiny_vit, tokenizer, CLASSES)


@pytest.fixture
def x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def coalition_score(clf, image, target, hidden_patches):
    """Independent forward: one image, the given (P,) patches hidden."""
    with torch.no_grad(), clf.vision.hide_patches(hidden_patches[None]):
        return float(clf(image[None])[0, target])


def brute_values(clf, image, target, labels, k):
    """Shapley and Banzhaf by evaluating every coalition separately (independent loop)."""
    v = {}
    for visible in itertools.product([False, True], repeat=k):
        hidden = torch.tensor([not visible[c] for c in range(k)])[labels]
        v[visible] = coalition_score(clf, image, target, hidden)
    shap, banz = torch.zeros(k), torch.zeros(k)
    for j in range(k):
        for vis in v:
            if vis[j]:
                continue
            with_j = tuple(True if c == j else vis[c] for c in range(k))
            s = sum(vis)
            gain = v[with_j] - v[vis]
            shap[j] += math.factorial(s) * math.factorial(k - s - 1) / math.factorial(k) * gain
            banz[j] += gain / 2 ** (k - 1)
    return shap, banz, v


def test_exact_shapley_and_banzhaf_equal_brute_force_and_efficiency(clf, x):
    target = 1
    _, res = CCI(clf, n_clusters=4, estimator="shapley", normalize=None).attribute(
        x, target=target, return_clusters=True
    )
    _, ban = CCI(clf, n_clusters=4, estimator="banzhaf", normalize=None).attribute(
        x, target=target, return_clusters=True
    )
    torch.testing.assert_close(res.labels, ban.labels)  # same k-means seed
    for i in range(2):
        flat = res.labels[i].reshape(-1)
        k = int(flat.max()) + 1
        shap, banz, v = brute_values(clf, x[i], target, flat, k)
        torch.testing.assert_close(res.values[i, :k], shap, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ban.values[i, :k], banz, rtol=1e-4, atol=1e-4)
        # efficiency: the values sum to s(all visible) - s(all hidden)
        full, empty = v[(True,) * k], v[(False,) * k]
        assert abs(float(res.values[i, :k].sum()) - (full - empty)) < 1e-3
        torch.testing.assert_close(res.weights[i, :k], res.values[i, :k])  # normalize=None
        # leave-one-out scores come along for free (all coalitions were evaluated)
        for c in range(k):
            loo = tuple(j != c for j in range(k))
            assert abs(float(res.scores[i, c]) - v[loo]) < 1e-4


def test_sufficiency_and_occlusion_on_user_regions(clf, x):
    regions = grid_regions(32, 2)  # 4 quadrants of 2x2 patches on the 4x4 grid
    _, suf = CCI(clf, estimator="sufficiency", normalize=None).attribute(
        x, target=0, regions=regions, return_clusters=True
    )
    _, occ = CCI(clf, estimator="occlusion", normalize=None).attribute(
        x, target=0, regions=regions, return_clusters=True
    )
    labels = patch_partition(regions.expand(2, -1, -1), (4, 4)).reshape(2, -1)
    for i in range(2):
        empty = coalition_score(clf, x[i], 0, torch.ones(16, dtype=torch.bool))
        for c in range(4):
            keep_only = coalition_score(clf, x[i], 0, labels[i] != c)
            hide_one = coalition_score(clf, x[i], 0, labels[i] == c)
            assert abs(float(suf.values[i, c]) - (keep_only - empty)) < 1e-4
            assert abs(float(occ.values[i, c]) - (float(occ.base_score[i]) - hide_one)) < 1e-4


@pytest.mark.parametrize("estimator", ["occlusion", "sufficiency"])
def test_user_regions_reproduce_kmeans_values(clf, x, estimator):
    """The k-means labels handed back as pixel regions give the same region values."""
    cci = CCI(clf, n_clusters=5, estimator=estimator)
    attr, res = cci.attribute(x, target=2, return_clusters=True)
    pixels = F.interpolate(res.labels[:, None].float(), size=(32, 32)).long()[:, 0]
    attr2, res2 = cci.attribute(x, target=2, regions=pixels, return_clusters=True)
    assert res2.estimator == res.estimator == estimator
    torch.testing.assert_close(res2.labels, res.labels)
    torch.testing.assert_close(res2.values, res.values, equal_nan=True, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attr2, attr, rtol=1e-4, atol=1e-5)


def test_sampled_shapley_budget_efficiency_and_batch_split(clf, x):
    cci = CCI(clf, n_clusters=6, estimator="sampled_shapley", budget=20, normalize=None)
    with ForwardCounter(clf) as count:
        a, res = cci.attribute(x, target=0, return_clusters=True)
    assert count.images <= 2 * (1 + 20)  # base pass + at most `budget` rows per image
    for i in range(2):
        k = int(res.labels[i].max()) + 1
        empty = coalition_score(clf, x[i], 0, torch.ones(16, dtype=torch.bool))
        total = float(res.base_score[i]) - empty
        assert abs(float(res.values[i, :k].sum()) - total) < 1e-3  # each permutation telescopes
    b, res_b = cci.attribute(x, target=0, return_clusters=True, internal_batch_size=7)
    torch.testing.assert_close(res_b.values, res.values, equal_nan=True, rtol=1e-4, atol=1e-5)
    one, _ = cci.attribute(x[1:], target=0, return_clusters=True)
    torch.testing.assert_close(one, a[1:], rtol=1e-4, atol=1e-5)


def test_exact_shapley_is_one_batched_forward_per_kept_count(clf, x):
    with ForwardCounter(clf) as count:
        _, res = CCI(clf, n_clusters=4, estimator="shapley").attribute(
            x, target=0, return_clusters=True
        )
    # the unmasked pass, then the coalitions of both images on their kept patches, one
    # forward per number of kept patches (rows keeping nothing are masked)
    sizes = torch.stack([torch.bincount(lab.flatten(), minlength=4) for lab in res.labels])
    subsets = torch.tensor([[(m >> j) & 1 for j in range(4)] for m in range(15)])
    kept = (subsets.double() @ sizes.double().T).long().unique()
    assert count.calls == 1 + len(kept)
    assert count.images == 2 * 15 + 2


class PatchLinear(nn.Module):
    """Additive toy score: Σ_p c_p * mean(pixels of patch p)."""

    def __init__(self, coef: torch.Tensor) -> None:
        super().__init__()
        self.coef = coef

    def forward(self, images):
        s = F.avg_pool2d(images.mean(1, keepdim=True), 8).flatten(1) @ self.coef
        return torch.stack([s, -s], 1)


@pytest.mark.parametrize("estimator", ["sufficiency", "shapley", "banzhaf"])
def test_pixel_mode_additive_model_all_estimators_equal_occlusion(tiny_vit, x, estimator):
    toy = PatchLinear(torch.linspace(-1, 2, 16))
    kw = dict(vision_model=tiny_vit, n_clusters=4, mask_mode="pixel", normalize=None)
    _, occ = CCI(toy, estimator="occlusion", **kw).attribute(
        x, target=0, baselines=0.3, return_clusters=True
    )
    _, est = CCI(toy, estimator=estimator, **kw).attribute(
        x, target=0, baselines=0.3, return_clusters=True
    )
    torch.testing.assert_close(est.values, occ.values, equal_nan=True, rtol=1e-4, atol=1e-4)


def test_patch_partition_majority_rule_and_region_formats():
    regions = torch.zeros(1, 8, 8, dtype=torch.long)  # 2x2 grid of 4x4-pixel patches
    regions[0, :4, :3] = 5  # 12 of 16 pixels of patch (0, 0): majority
    regions[0, 4:, 4:6] = 7  # 8 of 16 pixels of patch (1, 1): a tie -> the smaller label 0
    regions[0, :4, 4:5] = 9  # 4 of 16 pixels of patch (0, 1): minority, wins no patch
    assert patch_partition(regions, (2, 2)).tolist() == [[[1, 0], [0, 0]]]
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2:6, 2:6] = True
    torch.testing.assert_close(check_regions(mask, 2, (8, 8)), mask.long())
    stack = torch.stack([mask, ~mask], 1)
    torch.testing.assert_close(check_regions(stack, 2, (8, 8)), 1 + (~mask).long())
    torch.testing.assert_close(check_regions(regions[0], 2, (8, 8)), regions.expand(2, -1, -1))
    assert (
        grid_regions((4, 6), 2, 3).tolist() == [[0, 0, 1, 1, 2, 2]] * 2 + [[3, 3, 4, 4, 5, 5]] * 2
    )


def test_errors(clf, x):
    with pytest.raises(ValueError, match="estimator must be one of"):
        CCI(clf, estimator="lime")
    with pytest.raises(ValueError, match="K <= 10"):
        CCI(clf, n_clusters=11, estimator="shapley")
    assert CCI(clf, estimator="sampled_shapley").budget == 63  # 64 forwards per image
    assert CCI(clf, estimator="owen", budget=None).budget is None  # exact Owen values
    with pytest.raises(ValueError, match="n_groups is an int"):
        CCI(clf, n_groups=2)
    with pytest.raises(ValueError, match="budget is only used"):
        CCI(clf, budget=10)
    with pytest.raises(ValueError, match="regions must be"):
        CCI(clf).attribute(x, target=0, regions=torch.zeros(3, 32, 32, dtype=torch.long))
    with pytest.raises(TypeError, match="integer labels"):
        CCI(clf).attribute(x, target=0, regions=torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match="disjoint"):
        CCI(clf).attribute(x, target=0, regions=torch.ones(2, 2, 32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="K <= 10"):  # 16 single-patch regions
        CCI(clf, estimator="shapley").attribute(x, target=0, regions=grid_regions(32, 4))


def test_multi_k_estimator_is_the_mean_of_single_k(clf, x):
    multi, res = CCI(clf, n_clusters=(2, 3), estimator="banzhaf").attribute(
        x, target=0, return_clusters=True
    )
    singles = [CCI(clf, n_clusters=k, estimator="banzhaf").attribute(x, target=0) for k in (2, 3)]
    torch.testing.assert_close(multi, (singles[0] + singles[1]) / 2, rtol=1e-4, atol=1e-5)
    assert [r.estimator for r in res] == ["banzhaf", "banzhaf"]


def test_owen_on_the_cluster_tree_equals_brute_force(clf, x):
    from itertools import permutations

    from captum_clip.attr._region_games import leaf_groups

    _, res = CCI(clf, n_clusters=5, estimator="owen", budget=None, n_groups=2).attribute(
        x, target=1, return_clusters=True
    )
    cci = CCI(clf, n_clusters=5)
    feats = clf.vision.patch_features(x).reshape(2, 16, -1)
    flat = res.labels.reshape(2, -1)
    groups = leaf_groups(feats, flat, flat.max(1).values + 1, 2, cci.random_state)
    for i in range(2):
        k = int(flat[i].max()) + 1
        _, _, v = brute_values(clf, x[i], 1, flat[i], k)
        g = groups[i, :k].tolist()
        assert 1 <= len(set(g)) <= 2
        ids = sorted(set(g))
        phi, n = torch.zeros(k), 0  # mean marginal over orders keeping each group together
        for order in permutations(ids):
            inner = [[j for j in range(k) if g[j] == o] for o in order]
            for walk in _products([list(permutations(m)) for m in inner]):
                seen = [False] * k
                for j in (j for part in walk for j in part):
                    before = v[tuple(seen)]
                    seen[j] = True
                    phi[j] += v[tuple(seen)] - before
                n += 1
        torch.testing.assert_close(res.values[i, :k], phi / n, rtol=1e-4, atol=1e-4)
        total = v[(True,) * k] - v[(False,) * k]
        assert abs(float(res.values[i, :k].sum()) - total) < 1e-3


def _products(lists):
    from itertools import product

    return product(*lists)
