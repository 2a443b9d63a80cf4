"""Dropping hidden patches equals masking them, per attention adapter.

``ViTTower.keep_patches`` runs the tower on the prefix tokens and the kept patches only;
for every adapter that declares ``can_drop`` its output must equal ``hide_patches`` with
the other patches hidden (masked keys are never read by kept tokens nor by the pooling),
and the region-score machinery that uses it must give the masked scores.
"""

from __future__ import annotations

import pytest
import torch
from _tiny_text import make_tiny_siglip
from _tiny_timm import BUILDERS
from conftest import make_tiny_hf_clip, make_tiny_vit

from captum_clip.attr._region_scores import variant_scores
from captum_clip.models.adapter import ClipAdapter

ADAPTERS = {
    "open_clip": make_tiny_vit,
    "hf_clip": make_tiny_hf_clip,
    "hf_siglip": make_tiny_siglip,
    **{name: (lambda b=b: b()[0]) for name, b in BUILDERS.items()},
}


@pytest.fixture(scope="module", params=list(ADAPTERS))
def adapter(request):
    return request.param, ClipAdapter(ADAPTERS[request.param]())


def _images(adapter: ClipAdapter, n: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(n, 3, *adapter.vision.image_size)


def test_keep_patches_equals_hide_patches(adapter):
    name, clip = adapter
    tower = clip.vision
    assert tower.can_drop, name
    x = _images(clip, 3)
    p = tower.n_patches
    g = torch.Generator().manual_seed(1)
    for n_keep in (1, p // 2, p - 1, p):
        keep = torch.stack([torch.randperm(p, generator=g)[:n_keep] for _ in range(3)])
        hidden = torch.ones(3, p, dtype=torch.bool)
        hidden[torch.arange(3)[:, None], keep] = False
        with torch.no_grad():
            with tower.hide_patches(hidden):
                masked = clip.encode_image(x)
            with tower.keep_patches(keep):
                dropped = clip.encode_image(x)
        assert (dropped - masked).abs().max() <= 1e-5, (name, n_keep)
    with torch.no_grad():  # dropping matters, and the tower is restored after the context
        assert (dropped - masked).abs().max() <= 1e-5
        with tower.keep_patches(keep[:, :1]):
            one = clip.encode_image(x)
        full = clip.encode_image(x)
    assert (one - full).abs().max() > 1e-3 * full.abs().max()
    torch.testing.assert_close(full, masked, rtol=0, atol=1e-5)  # last keep = all patches


def test_variant_scores_drop_equals_mask(adapter):
    name, clip = adapter
    tower = clip.vision
    x = _images(clip, 2, seed=3)
    torch.manual_seed(4)
    hidden = torch.rand(2, 5, tower.n_patches) < torch.tensor([0.0, 0.3, 0.6, 0.9, 1.0])[:, None]
    hidden[0, 1] = hidden[1, 1]  # rows with equal kept counts batch together

    def score(images, src):
        return clip.encode_image(images).sum(-1) + src

    with torch.no_grad():
        masked = variant_scores(score, x, hidden, vision=tower, drop=False)
        dropped = variant_scores(score, x, hidden, vision=tower, drop=True)
    # every row but the all-hidden one is finite (HF SigLIP: no key is left there)
    assert torch.isfinite(masked[:, :4]).all(), name
    assert torch.equal(masked.isnan(), dropped.isnan()), name
    diff = (dropped - masked).nan_to_num()
    assert diff.abs().max() <= 1e-4 * (1 + masked.nan_to_num().abs().max()), name


def test_keep_patches_rejects_bad_input():
    clip = ClipAdapter(make_tiny_vit())
    with pytest.raises(ValueError, match="long tensor of patch indices"):
        with clip.vision.keep_patches(torch.zeros(2, 3)):
            pass
    with pytest.raises(ValueError, match="patch indices in keep"):
        with clip.vision.keep_patches(torch.full((1, 2), clip.vision.n_patches)):
            pass
    with pytest.raises(ValueError, match="hidden patches were set for a batch of 1 images"):
        with torch.no_grad(), clip.vision.keep_patches(torch.zeros(1, 2, dtype=torch.long)):
            clip.encode_image(_images(clip, 2))
