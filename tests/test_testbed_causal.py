"""Causal foreground/background labels on toy models whose reliance is known by design."""

import functools

import pytest
import torch

from captum_clip.testbed import shapes
from captum_clip.testbed.causal import LABELS, causal_labels, swap_backgrounds


def _object_pixels(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: pixels whose colour is exactly an object palette colour.

    Backgrounds are textures/noise that never hit a palette colour exactly, so this is the
    object mask recovered from the pixels alone (checked in test_palette_detects_mask).
    """
    img = shapes.denormalize(x)
    pal = shapes.COLOUR_RGB.view(1, -1, 3, 1, 1)
    return ((img.unsqueeze(1) - pal).abs() < 1e-4).all(2).any(1)


@functools.lru_cache(maxsize=1)
def _background_means() -> torch.Tensor:
    """Mean colour of each background kind (from background-only renders)."""
    f = shapes.sample_factors(32, seed=99)
    out = []
    for k in range(len(shapes.BACKGROUND_NAMES)):
        img, _ = shapes.render(f, background=k, draw_object=False)
        out.append(img.mean((0, 2, 3)))
    return torch.stack(out)


class BackgroundOnly(torch.nn.Module):
    """Logits over backgrounds from the mean colour of the NON-object pixels only."""

    def __init__(self):
        super().__init__()
        self.register_buffer("means", _background_means())

    def forward(self, x):
        img = shapes.denormalize(x)
        keep = (~_object_pixels(x)).unsqueeze(1).float()
        mean = (img * keep).sum((2, 3)) / keep.sum((2, 3)).clamp_min(1)
        return -100 * torch.cdist(mean, self.means)


class ObjectOnly(torch.nn.Module):
    """Logits = share of pixels of each palette colour (object pixels only) + 'nothing'."""

    def forward(self, x):
        img = shapes.denormalize(x)
        pal = shapes.COLOUR_RGB.view(1, -1, 3, 1, 1)
        hits = ((img.unsqueeze(1) - pal).abs() < 1e-4).all(2).float().mean((2, 3))
        nothing = torch.full_like(hits[:, :1], 1e-3)
        return 100 * torch.cat([hits, nothing], 1)


@pytest.fixture(scope="module")
def scenes():
    return shapes.generate_scenes(48, seed=21, rho=0.0)


def test_palette_detects_mask(scenes):
    assert torch.equal(_object_pixels(shapes.normalize(scenes.images)), scenes.masks)


def test_background_model_is_background_driven(scenes):
    model = BackgroundOnly()
    res = causal_labels(model, scenes, internal_batch_size=16)
    # the toy model identifies the background kind (sanity check of the toy itself)
    assert torch.equal(res.pred, scenes.factors["background"])
    assert res.labels == ["background"] * len(scenes)
    assert torch.equal(res.pred_removed, res.pred)
    assert torch.equal(res.pred_swap, res.swap_background)
    assert (res.fg_score < 0).all()
    assert res.counts() == {"foreground": 0, "background": 48, "both": 0, "neither": 0}


def test_object_model_is_foreground_driven(scenes):
    res = causal_labels(ObjectOnly(), scenes)
    assert res.labels == ["foreground"] * len(scenes)
    assert (res.pred_removed == len(shapes.COLOUR_NAMES)).all()  # 'nothing'
    assert torch.equal(res.pred_swap, res.pred)
    assert torch.allclose(res.score_swap, res.score)
    # closed form: removal leaves logits 0 except 'nothing' = 0.1, swap changes nothing
    p_removed = 1 / (8 + torch.exp(torch.tensor(0.1)))
    assert torch.allclose(res.score_removed, p_removed.expand(48))
    assert torch.allclose(res.fg_score, (res.score - p_removed) / res.score)
    assert (res.drop_swap == 0).all()


def test_mixed_and_constant_models():
    s = shapes.generate_scenes(16, seed=4)

    fg_model, bg_model = ObjectOnly(), BackgroundOnly()

    def both(x):  # predicts the (object colour, background) pair: needs both parts
        fg = fg_model(x).log_softmax(1)
        bg = bg_model(x).log_softmax(1)
        return (fg[:, :, None] + bg[:, None, :]).flatten(1)

    res_both = causal_labels(both, s)
    assert res_both.labels == ["both"] * 16
    res = causal_labels(lambda x: torch.zeros(x.shape[0], 3), s)
    assert res.labels == ["neither"] * 16
    assert (res.fg_score == 0).all()
    # a model whose logit for class 0 rises with the object share and class 1 with the
    # share of background: removal -> class 1, swap keeps the prediction -> foreground
    res2 = causal_labels(
        lambda x: torch.stack(
            [_object_pixels(x).float().mean((1, 2)), 0.1 * torch.ones(x.shape[0])], 1
        ),
        s,
    )
    assert set(res2.labels) == {"foreground"}


def test_label_table_and_explicit_target(scenes):
    model = BackgroundOnly()
    own = scenes.factors["background"]
    # tracking a class that is not predicted: it never survives -> "both"
    res = causal_labels(model, scenes, target=(own + 1) % 8, swap_background=(own + 2) % 8)
    assert res.labels == ["both"] * len(scenes)
    # swapping to the same background kind keeps the prediction -> "neither"
    res = causal_labels(model, scenes, swap_background=own)
    assert res.labels == ["neither"] * len(scenes)
    assert LABELS == ("foreground", "background", "both", "neither")
    rec = res.as_records()
    assert rec[0]["label"] == "neither" and set(rec[0]) >= {"score", "score_swap", "fg_score"}


def test_batch_split_invariance_and_default_swap(scenes):
    model = BackgroundOnly()
    a = causal_labels(model, scenes, internal_batch_size=48)
    b = causal_labels(model, scenes, internal_batch_size=5)
    assert torch.allclose(a.score_swap, b.score_swap) and a.labels == b.labels
    swap = swap_backgrounds(scenes.factors, seed=0)
    assert (swap != scenes.factors["background"]).all()
    assert torch.equal(a.swap_background, swap)


def test_causal_bad_input(scenes):
    with pytest.raises(ValueError, match="n_classes"):
        causal_labels(lambda x: torch.zeros(x.shape[0]), scenes)
    with pytest.raises(ValueError, match="swap_background"):
        causal_labels(BackgroundOnly(), scenes, swap_background=17)
    with pytest.raises(ValueError, match="target"):
        causal_labels(BackgroundOnly(), scenes, target=50)
    with pytest.raises(TypeError, match="Scenes"):
        causal_labels(BackgroundOnly(), [1, 2])
    with pytest.raises(ValueError, match="internal_batch_size"):
        causal_labels(BackgroundOnly(), scenes, internal_batch_size=0)
