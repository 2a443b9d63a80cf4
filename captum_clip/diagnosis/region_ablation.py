"""Region ablation: the target score with the object hidden, and with the background hidden.

Two extra rows per image in one batched forward. Attention mode (ViTs) hides the patches
of a region from every attention layer -- the object at patch resolution, each patch
counted as object when more than half of its pixels are (the partition rule of CCI's
user regions, ``docs/cci.md``), the background as the complement. Pixel mode (any
model) replaces the region's pixels by a baseline (0: the dataset mean colour).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_clip.metrics import make_baseline

__all__ = ["ABLATION_SCORES", "region_effects"]

ABLATION_SCORES = ("logit", "prob")


def object_patches(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """``(B, h*w)`` bool: patches more than half covered by the object mask."""
    b, height, width = masks.shape
    h, w = grid
    if height % h or width % w:
        raise ValueError(f"mask size {height}x{width} is not a multiple of the {h}x{w} grid")
    cover = F.avg_pool2d(masks[:, None].float(), (height // h, width // w))
    return (cover > 0.5).reshape(b, h * w)


def region_effects(
    forward_func: Any,
    images: Tensor,
    masks: Tensor,
    target: Tensor,
    mask_mode: str | None = None,
    score: str = "logit",
    output: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Score drops when the object, and separately the background, is hidden.

    Args:
        forward_func: Images -> ``(B, n_classes)``; needs ``.vision`` (a
            :class:`~captum_clip.models.base.VisionTower`) for attention mode.
        images: ``(B, 3, H, W)`` model inputs.
        masks: ``(B, H, W)`` bool object masks.
        target: ``(B,)`` class per image.
        mask_mode: ``"attention"`` (default for ViTs) or ``"pixel"`` (default otherwise).
        score: ``"logit"`` (raw output) or ``"prob"`` (softmax probability).
        output: ``forward_func(images)`` when the caller has it (saves a forward).

    Returns:
        ``(base, fg_effect, bg_effect)``, each ``(B,)`` on the CPU:
        ``fg_effect = s - s(object hidden)``, ``bg_effect = s - s(background hidden)``.
        Both are NaN for an image whose object covers no patch or every patch (attention
        mode) or no pixel or every pixel (pixel mode).
    """
    if score not in ABLATION_SCORES:
        raise ValueError(f"score must be one of {ABLATION_SCORES}, got {score!r}")
    vision = getattr(forward_func, "vision", None)
    is_vit = bool(getattr(vision, "is_vit", False))
    if mask_mode is None:
        mask_mode = "attention" if is_vit else "pixel"
    if mask_mode not in ("attention", "pixel"):
        raise ValueError(f"mask_mode must be 'attention' or 'pixel', got {mask_mode!r}")
    if mask_mode == "attention" and not is_vit:
        raise ValueError("attention-mode region ablation needs a forward_func with a ViT .vision")
    b = images.shape[0]
    masks = masks.to(images.device)
    x2 = torch.cat([images, images])
    with torch.no_grad():
        if mask_mode == "attention":
            fg = object_patches(masks, vision.grid_size)
            with vision.hide_patches(torch.cat([fg, ~fg])):
                out2 = forward_func(x2)
        else:
            fg = masks.reshape(b, -1)
            fill = make_baseline(0.0, images)
            hide = torch.cat([masks, ~masks])[:, None]
            out2 = forward_func(torch.where(hide, torch.cat([fill, fill]), x2))
        out = forward_func(images) if output is None else output
    if score == "prob":
        out, out2 = out.float().softmax(-1), out2.float().softmax(-1)
    t = target.to(out.device).long()
    base = out.float().gather(1, t[:, None])[:, 0]
    hidden = out2.float().gather(1, torch.cat([t, t])[:, None])[:, 0]
    fg_eff, bg_eff = base - hidden[:b], base - hidden[b:]
    degenerate = (~fg.any(1)) | fg.all(1)
    fg_eff[degenerate] = float("nan")
    bg_eff[degenerate] = float("nan")
    return base.cpu(), fg_eff.cpu(), bg_eff.cpu()
