"""Localisation metrics: does the attribution point at the annotated object?

All functions take attributions ``(B, C, H, W)`` (summed over channels), ``(B, 1, H, W)``
or ``(B, H, W)`` and object masks ``(B, H, W)`` or ``(B, 1, H, W)`` (bool, or numbers that
are all 0 or 1), and return one value per example ``(B,)`` on the attributions' device.
Constant maps get chance-level values (ties are never resolved by position).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from captum_clip.metrics._common import importance_rank, pixel_map


def _masks(masks: Any, attributions: Any, *, allow_empty: bool) -> tuple[Tensor, Tensor]:
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    if not isinstance(masks, Tensor):
        raise TypeError(f"masks must be a torch.Tensor (B, H, W), got {type(masks).__name__}")
    if attributions.ndim not in (3, 4):
        raise ValueError(
            "attributions must have shape (B, C, H, W), (B, 1, H, W) or (B, H, W), got "
            f"{tuple(attributions.shape)}"
        )
    b, h, w = attributions.shape[0], *attributions.shape[-2:]
    a = pixel_map(attributions, (b, None, h, w))
    # the attributions set the grid; a mask that does not fit it is the mask's fault
    m = masks[:, 0] if masks.ndim == 4 and masks.shape[1] == 1 else masks
    if tuple(m.shape) != (b, h, w):
        raise ValueError(
            f"masks must have shape ({b}, {h}, {w}) or ({b}, 1, {h}, {w}) (the attributions' "
            f"batch and pixel grid), got {tuple(masks.shape)}"
        )
    if m.dtype != torch.bool:
        if m.is_complex() or not ((m == 0) | (m == 1)).all():
            raise ValueError("masks must be boolean or contain only 0 and 1")
        m = m != 0
    m = m.to(a.device)
    if not allow_empty and not m.flatten(1).any(dim=1).all():
        empty = torch.nonzero(~m.flatten(1).any(dim=1)).flatten().tolist()
        raise ValueError(f"masks must contain at least one pixel; empty for examples {empty}")
    return a, m


def pointing_game(attributions: Tensor, masks: Tensor, *, tolerance: int = 0) -> Tensor:
    """Pointing game (Zhang et al. 2016): is the attribution maximum on the object?

    A hit is a maximum pixel within Euclidean distance ``tolerance`` (pixels) of the mask.
    When several pixels share the maximum, the value is the fraction of them that hit (the
    expected hit of a uniformly random choice), so a constant map scores the fraction of
    the image covered by the (dilated) mask instead of depending on pixel order.

    Args:
        attributions: ``(B, C, H, W)``, ``(B, 1, H, W)`` or ``(B, H, W)``.
        masks: ``(B, H, W)`` or ``(B, 1, H, W)``; every mask must be non-empty.
        tolerance: Dilation radius in pixels (the original protocol uses 15 at 224 px).

    Returns:
        ``(B,)`` values in ``[0, 1]`` (1/0 when the maximum is unique).
    """
    a, m = _masks(masks, attributions, allow_empty=False)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be an int >= 0 (pixels), got {tolerance!r}")
    if tolerance > 0:
        r = torch.arange(-tolerance, tolerance + 1, device=a.device)
        disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= tolerance**2).to(a.dtype)
        hit = torch.nn.functional.conv2d(
            m[:, None].to(a.dtype), disk[None, None], padding=tolerance
        )
        m = hit[:, 0] > 0.5
    maxima = a == a.flatten(1).amax(dim=1)[:, None, None]
    return (maxima & m).flatten(1).sum(1).to(a.dtype) / maxima.flatten(1).sum(1).to(a.dtype)


def mask_share(attributions: Tensor, masks: Tensor) -> Tensor:
    """Positive attribution mass inside the mask / total positive mass (energy pointing game).

    For a map without any positive value (all <= 0) the share is undefined; it is then set
    to the mask's area fraction, the share of a constant positive map (chance level).

    Args:
        attributions: ``(B, C, H, W)``, ``(B, 1, H, W)`` or ``(B, H, W)``.
        masks: ``(B, H, W)`` or ``(B, 1, H, W)``.

    Returns:
        ``(B,)`` values in ``[0, 1]``.
    """
    a, m = _masks(masks, attributions, allow_empty=True)
    pos = a.clamp(min=0).flatten(1)
    mf = m.flatten(1).to(a.dtype)
    total = pos.sum(1)
    inside = (pos * mf).sum(1)
    area = mf.mean(1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1), area)


def mask_iou(
    attributions: Tensor, masks: Tensor, *, q: float | None = None, seed: int = 0
) -> Tensor:
    """IoU between the top-``q`` % pixels of the attribution and the mask.

    Args:
        attributions: ``(B, C, H, W)``, ``(B, 1, H, W)`` or ``(B, H, W)``.
        masks: ``(B, H, W)`` or ``(B, 1, H, W)``; every mask must be non-empty.
        q: Percentage of pixels in the attribution region, in ``(0, 100]``; ``None`` uses
            each mask's own area (so the region and the mask have equal size).
        seed: Seed of the random order that breaks ties at the threshold.

    Returns:
        ``(B,)`` IoU values in ``[0, 1]``.
    """
    a, m = _masks(masks, attributions, allow_empty=False)
    b, h, w = a.shape
    n = h * w
    if q is None:
        k = m.flatten(1).sum(1)
    else:
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 100:
            raise ValueError(f"q must be a percentage in (0, 100] or None, got {q!r}")
        k = torch.full((b,), max(1, int(q / 100 * n + 0.5)), device=a.device)
    top = importance_rank(a.reshape(b, n), seed) < k[:, None]
    mf = m.flatten(1)
    inter = (top & mf).sum(1).to(a.dtype)
    union = (top | mf).sum(1).to(a.dtype)
    return inter / union
