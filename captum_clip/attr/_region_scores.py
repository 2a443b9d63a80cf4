"""Scores of masked variants: hide sets of regions of each image, one batched forward.

The machinery behind CCI (and any region estimator built on it -- occlusion, sufficiency,
Shapley or Banzhaf coalitions): every image ``i`` has a region label per patch and ``V``
variants, each hiding a set of regions (a ``(V, n_regions)`` boolean matrix per image).
:func:`region_hidden` turns these into patch masks, :func:`variant_scores` runs all valid
variants of the whole batch as one (chunked) forward and puts the scores back in place --
no Python loop over variants.

Example:
    >>> hide = torch.eye(k, dtype=torch.bool).expand(b, k, k)      # one region each
    >>> hidden = region_hidden(labels, hide)                        # (B, k, P)
    >>> s = variant_scores(score, x, hidden, valid, vision=tower)   # (B, k), NaN if invalid
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from captum_clip.models.base import DropUnavailable, VisionTower

__all__ = ["one_region_each", "region_hidden", "variant_scores"]


def region_hidden(labels: Tensor, hide: Tensor) -> Tensor:
    """Patch masks of variants that hide sets of regions.

    Args:
        labels: ``(B, P)`` long region index of every patch, in ``[0, n_regions)``.
        hide: ``(B, V, n_regions)`` bool, True where variant ``v`` of image ``i`` hides
            the region (broadcast views such as ``eye.expand(B, V, R)`` are fine).

    Returns:
        ``(B, V, P)`` bool: ``hidden[i, v, p] = hide[i, v, labels[i, p]]``.
    """
    b, v, _ = hide.shape
    return hide.gather(2, labels[:, None, :].expand(b, v, labels.shape[1]))


def one_region_each(labels: Tensor, n_regions: int, n_found: Tensor) -> tuple[Tensor, Tensor]:
    """Variants hiding one region each (CCI): ``(B, n_regions, P)`` masks and validity.

    Args:
        labels: ``(B, P)`` long region index per patch.
        n_regions: Number of variants ``V`` (the requested K).
        n_found: ``(B,)`` regions each image really has; variants past it are invalid.

    Returns:
        ``hidden (B, V, P)`` bool and ``valid (B, V)`` bool.
    """
    ids = torch.arange(n_regions, device=labels.device)
    hidden = labels[:, None, :] == ids[None, :, None]
    return hidden, ids[None, :] < n_found.to(labels.device)[:, None]


def variant_scores(
    score: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    hidden: Tensor,
    valid: Tensor | None = None,
    *,
    vision: VisionTower | None = None,
    fill: Tensor | None = None,
    grid: tuple[int, int] | None = None,
    internal_batch_size: int | None = None,
    show_progress: bool = False,
    drop: bool | None = None,
) -> Tensor:
    """Target scores of every valid masked variant, all images in one chunked batch.

    Exactly one of ``vision`` (attention mode: the hidden patches get ``-inf`` attention
    logits in every layer through ``vision.hide_patches``) and ``fill`` (pixel mode: the
    hidden patches' pixels are replaced by ``fill``; the ``grid`` of patches is upsampled
    to the image size with nearest neighbours) must be given.

    Args:
        score: ``score(images, src) -> (rows,)``: the target score of a chunk of variant
            images; ``src`` holds the example index of each row (to pick targets and
            additional forward arguments). A ``(rows, ...)`` output (an embedding per row)
            gives ``(B, V, ...)``.
        inputs: ``(B, C, H, W)`` images.
        hidden: ``(B, V, P)`` bool patch masks (``P = h * w``, row-major patch grid).
        valid: ``(B, V)`` bool, the variants to evaluate (default: all).
        vision: Vision tower, attention mode.
        fill: ``(B, C, H, W)`` (or broadcastable) replacement pixels, pixel mode.
        grid: ``(h, w)`` of the patch grid, pixel mode (default: square).
        internal_batch_size: Rows per forward (None: all at once).
        show_progress: tqdm bar over the chunks.
        drop: Attention mode: run each row on its kept patches only
            (``vision.keep_patches``; the same scores as masking, a row showing half the
            image costs about half a forward), rows with the same number of kept patches
            batched together; rows that keep no patch are masked. Default: where the
            tower supports it (``vision.can_drop``), masking every row instead when the
            tower's blocks turn out not to allow it (same values, the masked cost);
            ``True`` raises then.

    Returns:
        ``(B, V)`` (or ``(B, V, ...)``) float32 scores, NaN where ``valid`` is False.
    """
    if (vision is None) == (fill is None):
        raise ValueError("give exactly one of vision (attention mode) and fill (pixel mode)")
    b, v, p = hidden.shape
    if valid is None:
        valid = torch.ones(b, v, dtype=torch.bool, device=hidden.device)
    src, var = valid.nonzero(as_tuple=True)  # image-major row order
    rows_hidden = hidden[src, var].to(inputs.device)
    src = src.to(inputs.device)
    n = src.shape[0]
    step = max(n, 1) if internal_batch_size is None else internal_batch_size
    values: Tensor | None = None
    if fill is not None:
        grid = _grid(p, grid)
        fill = torch.broadcast_to(fill, inputs.shape)
    elif vision.can_drop if drop is None else drop:
        try:
            values = _dropped_scores(score, inputs, rows_hidden, src, vision, step, show_progress)
        except DropUnavailable:
            if drop:
                raise
        else:
            return _placed(values, valid, b, v, inputs.device)
    for start in tqdm(range(0, n, step), desc="CCI", disable=not show_progress):
        rows = slice(start, start + step)
        idx = src[rows]
        if fill is None:
            with vision.hide_patches(rows_hidden[rows]):
                values = _stored(values, n, rows, score(inputs[idx], idx))
        else:
            m = rows_hidden[rows].reshape(-1, 1, *grid).to(inputs.dtype)
            m = F.interpolate(m, size=inputs.shape[-2:], mode="nearest").bool()
            values = _stored(values, n, rows, score(torch.where(m, fill[idx], inputs[idx]), idx))
    return _placed(values, valid, b, v, inputs.device)


def _stored(values: Tensor | None, n: int, rows: Any, got: Tensor) -> Tensor:
    """``values[rows] = got``, allocating the ``(n, ...)`` float32 rows at the first chunk
    (the score's trailing shape: none for a scalar score, ``(D,)`` for an embedding)."""
    if values is None:
        values = torch.empty((n, *got.shape[1:]), device=got.device)
    values[rows] = got
    return values


def _placed(values: Tensor | None, valid: Tensor, b: int, v: int, device: Any) -> Tensor:
    """The rows back in their ``(B, V, ...)`` places, NaN where not ``valid``."""
    trailing = () if values is None else tuple(values.shape[1:])
    out = torch.full((b, v, *trailing), float("nan"), device=device)
    if values is not None:
        out[valid.to(device)] = values
    return out


def _dropped_scores(
    score: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    rows_hidden: Tensor,
    src: Tensor,
    vision: VisionTower,
    step: int,
    show_progress: bool,
) -> Tensor | None:
    """Scores of masked rows run on their kept patches, grouped by the number kept (None
    without rows)."""
    n_keep = (~rows_hidden).sum(1)
    n = rows_hidden.shape[0]
    values: Tensor | None = None
    counts = torch.unique(n_keep).tolist()
    for count in tqdm(counts, desc="CCI", disable=not show_progress):
        rows = (n_keep == count).nonzero().flatten()
        for start in range(0, rows.shape[0], step):
            part = rows[start : start + step]
            idx = src[part]
            if count == 0:  # nothing kept: masking defines the empty pooling
                with vision.hide_patches(rows_hidden[part]):
                    values = _stored(values, n, part, score(inputs[idx], idx))
                continue
            keep = (~rows_hidden[part]).nonzero()[:, 1].reshape(part.shape[0], count)
            with vision.keep_patches(keep):
                values = _stored(values, n, part, score(inputs[idx], idx))
    return values


def _grid(p: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is None:
        side = int(round(p**0.5))
        grid = (side, side)
    if len(grid) != 2 or grid[0] * grid[1] != p:
        raise ValueError(f"grid must be (h, w) with h * w = {p} patches, got {grid}")
    return int(grid[0]), int(grid[1])
