"""Localisation metrics against hand computations."""

from __future__ import annotations

import pytest
import torch

from captum_clip.metrics import mask_iou, mask_share, pointing_game


def test_pointing_game_hand_values():
    a = torch.zeros(3, 6, 6)
    masks = torch.zeros(3, 6, 6, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True
    a[0, 2, 2] = 5.0  # max inside -> 1
    a[1, 5, 5] = 5.0  # max far outside -> 0
    a[2, 2, 4] = 5.0  # outside, 2 px right of the mask
    assert pointing_game(a, masks).tolist() == [1.0, 0.0, 0.0]
    assert pointing_game(a, masks, tolerance=1).tolist() == [1.0, 0.0, 0.0]
    assert pointing_game(a, masks, tolerance=2).tolist() == [1.0, 0.0, 1.0]
    # (5,5) to the nearest mask pixel (2,2): sqrt(18) = 4.24 -> needs tolerance 5 (a disk)
    assert pointing_game(a, masks, tolerance=4)[1] == 0.0
    assert pointing_game(a, masks, tolerance=5)[1] == 1.0
    # (B, C, H, W) attributions are summed over channels; (B, 1, H, W) masks accepted
    a4 = torch.stack([a, -a, 3 * a], dim=1)  # sum = 3a
    assert pointing_game(a4, masks[:, None].float()).tolist() == [1.0, 0.0, 0.0]


def test_pointing_game_ties_are_not_positional():
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0, :] = True  # the first row: a positional tie-break would always hit
    assert pointing_game(torch.ones(1, 4, 4), masks).item() == pytest.approx(4 / 16)
    a = torch.zeros(1, 4, 4)
    a[0, 0, 0] = a[0, 3, 3] = 1.0  # two maxima, one inside
    assert pointing_game(a, masks).item() == pytest.approx(0.5)


def test_mask_share_hand_values():
    a = torch.tensor(
        [[[1.0, -2.0], [3.0, 0.0]], [[-1.0, -1.0], [0.0, -3.0]], [[0.5, 0.5], [0.5, 0.5]]]
    )
    masks = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    # 1 / (1 + 3); all non-positive -> mask area fraction 1/4; empty mask -> 0
    torch.testing.assert_close(mask_share(a, masks), torch.tensor([0.25, 0.25, 0.0]))
    assert mask_share(torch.ones(1, 2, 2), masks[:1]).item() == pytest.approx(0.5)


def test_mask_iou_hand_values():
    a = torch.arange(16.0).view(1, 4, 4)  # top-25 % = the last row
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 3, 2:] = True  # 2 pixels inside the last row
    assert mask_iou(a, masks, q=25).item() == pytest.approx(2 / 4)
    assert mask_iou(a, masks).item() == pytest.approx(
        1.0
    )  # q=None: region of the mask's size (2 px)
    masks2 = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks2[0, 0, :2] = True
    assert mask_iou(a, masks2, q=50).item() == 0.0
    assert mask_iou(-a, masks2, q=50).item() == pytest.approx(2 / 8)
    # a constant map: the top region is a seeded random choice, not the first pixels
    vals = torch.stack([mask_iou(torch.ones(1, 4, 4), masks2, seed=s) for s in range(50)])
    assert 0 < vals.mean() < 0.5


@pytest.mark.parametrize(
    "fn,kwargs,match",
    [
        (pointing_game, dict(masks=torch.zeros(1, 4, 4)), "at least one pixel"),
        (pointing_game, dict(tolerance=-1), "tolerance"),
        (mask_iou, dict(q=0), "q must be"),
        (mask_share, dict(masks=torch.full((1, 4, 4), 0.5)), "only 0 and 1"),
        (mask_share, dict(masks=torch.ones(1, 5, 4)), r"masks must have shape \(1, 4, 4\)"),
        (mask_share, dict(attributions=torch.full((1, 4, 4), float("nan"))), "NaN"),
    ],
)
def test_bad_inputs(fn, kwargs, match):
    args = dict(attributions=torch.rand(1, 4, 4), masks=torch.ones(1, 4, 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fn(args.pop("attributions"), args.pop("masks"), **args)
    with pytest.raises(TypeError, match="masks must be a torch.Tensor"):
        fn(torch.rand(1, 4, 4), [[0, 1]])
