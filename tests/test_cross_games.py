"""Cross-modal region x word games: exact indices against shapiq, sampling, the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_vit, tiny_tokenizer

from captum_clip.attr import CrossModalInteractions
from captum_clip.attr import _cross_values as cv
from captum_clip.attr._kmeans import batched_kmeans

CAPTION = "a red cat"


@pytest.fixture(scope="module")
def setup():
    model = make_tiny_vit(0)
    torch.manual_seed(0)
    return model, CrossModalInteractions(model, tiny_tokenizer()), torch.randn(1, 3, 32, 32)


def _brute_game(cmi, x, k):
    """The game played coalition by coalition through the model (no factorisation)."""
    ad, text = cmi.adapter, cmi.text
    ids = text.prepare([CAPTION])
    words = list(range(1, int(text._text_end(ids)[0])))
    feats = ad.vision.patch_features(x, -1)
    lab = batched_kmeans(feats.reshape(1, 16, -1), k, seed=0).labels[0]
    n_reg = int(lab.max()) + 1

    def game(coalitions):
        out = []
        for c in torch.as_tensor(np.asarray(coalitions), dtype=torch.bool):
            with torch.no_grad(), ad.vision.hide_patches(~c[:n_reg][lab][None]):
                g = F.normalize(ad.encode_image(x), dim=-1)
            t = ids.clone()
            t[0, [p for w, p in enumerate(words) if not c[n_reg + w]]] = text.pad_id()
            with torch.no_grad():
                f = F.normalize(ad.encode_text(t), dim=-1)
            out.append(float((g * f).sum()))
        return np.array(out)

    return game, lab, n_reg, words


@pytest.mark.parametrize(("index", "shapiq_index"), [("banzhaf", "BII"), ("shapley", "SII")])
def test_exact_cross_interactions_match_shapiq(setup, index, shapiq_index):
    shapiq = pytest.importorskip("shapiq")
    _, cmi, x = setup
    res = cmi.explain(x, [CAPTION], n_regions=3, index=index)
    game, lab, k, words = _brute_game(cmi, x, 3)
    iv = shapiq.ExactComputer(n_players=k + len(words), game=game)(index=shapiq_index, order=2)
    for i in range(k):
        for j, pos in enumerate(words):
            ours = float(res.attributions[0, pos, 1:][lab == i].sum())
            assert ours == pytest.approx(iv[(i, k + j)], abs=1e-6)
    full = game(np.ones((1, k + len(words))))[0]
    assert float(res.score[0]) == pytest.approx(full, abs=1e-6)
    assert res.attributions[0, :, 0].abs().sum() == 0  # class-token column: not a player


def test_weighted_banzhaf_exact_reduces_to_banzhaf_and_sampling_converges(setup):
    _, cmi, x = setup
    exact = cmi.attribute(x, [CAPTION], n_regions=3, index="banzhaf")
    wb = cmi.attribute(x, [CAPTION], n_regions=3, index="weighted_banzhaf", p=0.5)
    torch.testing.assert_close(wb, exact)
    sampled = cmi.attribute(x, [CAPTION], n_regions=3, index="weighted_banzhaf", budget=3000)
    err = (sampled - exact).abs().max() / exact.abs().max()
    assert err < 0.2
    skewed = cmi.attribute(x, [CAPTION], n_regions=3, index="weighted_banzhaf", p=0.8)
    assert not torch.allclose(skewed, exact)


def test_banzhaf_weights_closed_form():
    coal = cv.all_coalitions(3)
    g = torch.randn(8, 4, dtype=torch.float64)
    a = cv.banzhaf_weights(coal, 0.5) @ g
    for i in range(3):
        with_i = coal[:, i]
        manual = (g[with_i].sum(0) - g[~with_i].sum(0)) / 4
        torch.testing.assert_close(a[i], manual)


def test_user_regions_and_result_views(setup):
    _, cmi, x = setup
    regions = torch.zeros(32, 32, dtype=torch.long)
    regions[:16] = 1  # top half vs bottom half: two regions
    res = cmi.explain(x, [CAPTION], regions=regions)
    m = res.image_map("cat")
    assert torch.allclose(m[:2], m[0, 0].expand(2, 4)) and torch.allclose(
        m[2:], m[2, 0].expand(2, 4)
    )
    assert res.token_scores().shape[0] == 5  # SOT, 3 words, EOT


def test_bad_arguments(setup):
    _, cmi, x = setup
    with pytest.raises(ValueError, match="index"):
        cmi.explain(x, [CAPTION], index="owen")
    with pytest.raises(ValueError, match="budget"):
        cmi.explain(x, [CAPTION], index="banzhaf", budget=10)
    with pytest.raises(ValueError, match="p must"):
        cmi.explain(x, [CAPTION], index="weighted_banzhaf", p=1.0)
    with pytest.raises(ValueError, match="same batch"):
        cmi.explain(x, [CAPTION, CAPTION])
