"""Variant machinery: patch masks from region sets, one batched forward, scores in place."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from captum_clip.attr._region_scores import one_region_each, region_hidden, variant_scores
from captum_clip.models import ClipClassifier


@pytest.fixture
def setup(tiny_vit, tokenizer):
    clf = ClipClassifier(tiny_vit, tokenizer, ["cat", "dog", "car"])
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3, 32, 32, generator=g)
    labels = torch.randint(0, 3, (3, 16), generator=g)
    hide = torch.rand(3, 5, 3, generator=g) > 0.5  # coalitions of regions
    valid = torch.rand(3, 5, generator=g) > 0.3
    return clf, x, labels, hide, valid


def test_region_hidden_brute_force(setup):
    _, _, labels, hide, _ = setup
    hidden = region_hidden(labels, hide)
    for i in range(3):
        for v in range(5):
            for p in range(16):
                assert hidden[i, v, p] == hide[i, v, labels[i, p]]
    h1, valid = one_region_each(labels, 4, torch.tensor([3, 2, 3]))
    assert torch.equal(h1, region_hidden(labels, torch.eye(4, 3, dtype=torch.bool).expand(3, 4, 3)))
    assert valid.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0]]


@pytest.mark.parametrize("mode", ["attention", "pixel"])
@pytest.mark.parametrize("ibs", [None, 4])
def test_coalition_scores_equal_separate_forwards(setup, mode, ibs):
    clf, x, labels, hide, valid = setup
    target = torch.tensor([0, 2, 1])
    hidden = region_hidden(labels, hide)
    fill = torch.full_like(x, 0.3) if mode == "pixel" else None
    calls = []

    def score(images, src):
        calls.append(len(images))
        return clf(images).gather(1, target[src][:, None])[:, 0]

    kw = {"vision": clf.vision} if mode == "attention" else {"fill": fill, "grid": (4, 4)}
    with torch.no_grad():
        kw["drop"] = False if mode == "attention" else None  # one batch (dropping: own test)
        s = variant_scores(score, x, hidden, valid, internal_batch_size=ibs, **kw)
        n = int(valid.sum())
        assert calls == ([n] if ibs is None else [4] * (n // 4) + [n % 4] * (n % 4 > 0))
        assert torch.isnan(s[~valid]).all()
        for i, v in valid.nonzero().tolist():
            m = hidden[i, v]
            if mode == "attention":
                with clf.vision.hide_patches(m[None]):
                    ref = clf(x[i : i + 1])[0, target[i]]
            else:
                pix = F.interpolate(m.reshape(1, 1, 4, 4).float(), size=(32, 32)).bool()
                ref = clf(torch.where(pix, fill[i : i + 1], x[i : i + 1]))[0, target[i]]
            torch.testing.assert_close(s[i, v], ref, rtol=1e-4, atol=1e-5)


def test_one_mode_required(setup):
    clf, x, labels, hide, _ = setup
    with pytest.raises(ValueError, match="exactly one of vision"):
        variant_scores(lambda im, src: im.sum((1, 2, 3)), x, region_hidden(labels, hide))
    with pytest.raises(ValueError, match="grid must be"):
        variant_scores(
            lambda im, src: im.sum((1, 2, 3)),
            x,
            region_hidden(labels, hide),
            fill=torch.zeros_like(x),
            grid=(3, 4),
        )
