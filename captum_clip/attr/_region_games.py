"""CCI's region games: user regions at patch resolution, and every coalition of every image
as padded region masks for the one batched masked forward of :mod:`._region_scores`.

**How partly covered patches count** (attention mode). A patch token is either read by
the model or not, so regions given at pixel resolution (object masks, SAM masks,
superpixels) must become a *partition of the patches*: each patch joins the region that
covers most of its pixels (ties: the smaller label). A partition is what the estimators
need -- hiding a coalition hides every patch exactly when its region is hidden, so the
game is well defined and exact Shapley values stay efficient. Any other rule breaks
this: "hide a patch when any of its pixels is in the region" makes neighbouring regions
overlap (a boundary patch is hidden with both) and their values double-count it; "only
when all pixels are" leaves boundary patches in no region. The majority vote also
minimises the pixels shown or hidden against their region's state, at most half of a
patch per boundary patch for two regions. A region smaller than half a patch may win no
patch; it then has no value (NaN, like an empty k-means cluster). The attribution map
paints each region's value on the patches it won -- what the model really saw hidden.
In pixel mode regions are hidden at pixel resolution exactly as given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_clip.attr._regions import CoalitionPlan, plan

__all__ = [
    "check_regions",
    "coalition_masks",
    "combine",
    "consecutive_labels",
    "game_values",
    "grid_regions",
    "leaf_groups",
    "patch_partition",
    "user_partition",
]


def grid_regions(size: int | tuple[int, int], rows: int, cols: int | None = None) -> Tensor:
    """``(H, W)`` labels of a ``rows x cols`` grid of near-equal cells (row-major).

    Args:
        size: Image side, or ``(H, W)``.
        rows: Cells per column.
        cols: Cells per row (default ``rows``).

    Example:
        >>> regions = grid_regions(224, 4).expand(len(images), -1, -1)  # 16 cells
    """
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    cols = rows if cols is None else cols
    for name, v, limit in (("rows", rows, h), ("cols", cols, w)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= limit:
            raise ValueError(f"{name} must be an int in [1, {limit}], got {v!r}")
    r = torch.arange(h) * rows // h
    c = torch.arange(w) * cols // w
    return r[:, None] * cols + c[None, :]


def check_regions(regions: Any, n: int, size: tuple[int, int]) -> Tensor:
    """User regions → ``(B, H, W)`` long labels ``>= 0``.

    Accepts a ``(B, H, W)`` / ``(B, 1, H, W)`` / ``(H, W)`` (shared) integer label map,
    a ``(B, H, W)`` bool mask (two regions: 1 = the mask, 0 = the rest), or a
    ``(B, R, H, W)`` bool stack of disjoint masks (pixels in none of them form region 0,
    mask ``r`` becomes region ``r + 1``).
    """
    if not isinstance(regions, Tensor):
        raise TypeError(f"regions must be a tensor of region labels, got {type(regions).__name__}")
    r = regions
    if r.is_floating_point() or r.is_complex():
        raise TypeError(f"regions must hold integer labels or bools, got dtype {r.dtype}")
    if r.ndim == 2:
        r = r.expand(n, *r.shape)
    if r.ndim == 4 and r.dtype == torch.bool and r.shape[1] > 1:
        if (r.sum(1) > 1).any():
            raise ValueError("a (B, R, H, W) stack of region masks must be disjoint")
        weights = torch.arange(1, r.shape[1] + 1, device=r.device).view(1, -1, 1, 1)
        r = (r.long() * weights).sum(1)
    elif r.ndim == 4 and r.shape[1] == 1:
        r = r[:, 0]
    if r.ndim != 3 or r.shape[0] != n or tuple(r.shape[1:]) != tuple(size):
        raise ValueError(
            f"regions must be (B, H, W) labels with B={n}, H x W = {size[0]} x {size[1]} "
            f"like the inputs, got {tuple(regions.shape)}"
        )
    r = r.long()
    if (r < 0).any():
        raise ValueError("region labels must be >= 0")
    return r


def consecutive_labels(labels: Tensor) -> Tensor:
    """Relabel each image's labels ``0..K_i-1`` in order of the original label."""
    out = torch.empty_like(labels)
    for i, lab in enumerate(labels):
        out[i] = torch.unique(lab.reshape(-1), return_inverse=True)[1].reshape(lab.shape)
    return out


def patch_partition(regions: Tensor, grid: tuple[int, int]) -> Tensor:
    """``(B, h, w)`` consecutive labels: each patch joins its majority region (module doc).

    Args:
        regions: ``(B, H, W)`` labels from :func:`check_regions`.
        grid: The patch grid ``(h, w)``; ``H`` and ``W`` must be multiples of it.
    """
    b, height, width = regions.shape
    h, w = grid
    if height % h or width % w:
        raise ValueError(f"image size {height}x{width} is not a multiple of the {h}x{w} grid")
    ph, pw = height // h, width // w
    labels = consecutive_labels(regions)
    n_lab = int(labels.max()) + 1
    # (B, h, w, n_lab) pixel counts per patch and region; argmax takes the first maximum
    cells = labels.reshape(b, h, ph, w, pw).permute(0, 1, 3, 2, 4).reshape(b, h, w, ph * pw)
    counts = F.one_hot(cells, n_lab).sum(3)
    return consecutive_labels(counts.argmax(-1))


def coalition_masks(
    n_found: Tensor,
    n_slots: int,
    estimator: str,
    budget: int | None,
    seed: int,
    groups: Tensor | None = None,
) -> tuple[list[CoalitionPlan], Tensor, Tensor]:
    """Every image's coalitions as padded region masks for one batched forward.

    Args:
        n_found: ``(B,)`` regions of each image (its K).
        n_slots: Region columns of the masks (at least the largest K).
        estimator, budget, seed: See :func:`captum_clip.attr._regions.plan`.
        groups: ``(B, n_slots)`` group id of every region (``"owen"``; see
            :func:`leaf_groups`), or None.

    Returns:
        ``(plans, hide, valid)``: one plan per image, ``hide (B, V, n_slots)`` bool (the
        regions each masked row hides; row 0 of a plan, the unmasked image, is left out)
        and ``valid (B, V)`` (rows past an image's plan are padding).
    """
    ks = n_found.tolist()
    if groups is None:
        plans = [plan(estimator, int(k), budget, seed) for k in ks]
    else:
        g = groups.tolist()
        plans = [plan(estimator, int(k), budget, seed, tuple(g[i][:k])) for i, k in enumerate(ks)]
    v = max(p.n_rows for p in plans)
    hide = torch.zeros(len(plans), v, n_slots, dtype=torch.bool)
    valid = torch.zeros(len(plans), v, dtype=torch.bool)
    for i, p in enumerate(plans):
        hide[i, : p.n_rows, : p.hidden.shape[1]] = p.hidden[1:]
        valid[i, : p.n_rows] = True
    return plans, hide.to(n_found.device), valid.to(n_found.device)


def combine(
    plans: list[CoalitionPlan], base: Tensor, rows: Tensor, n_slots: int
) -> tuple[Tensor, Tensor]:
    """Leave-one-out scores and region values from the scores of the masked rows.

    Args:
        plans: From :func:`coalition_masks`.
        base: ``(B,)`` unmasked scores (row 0 of every plan).
        rows: ``(B, V)`` scores of the masked rows (NaN padding).
        n_slots: Columns of the outputs.

    Returns:
        ``(scores, values)``, both ``(B, n_slots)`` and NaN padded: the score with only
        region ``k`` hidden (NaN where the estimator did not need that row) and the
        estimator's value of region ``k``.
    """
    b = len(plans)
    scores = torch.full((b, n_slots), float("nan"), device=base.device)
    values = torch.full((b, n_slots), float("nan"), device=base.device)
    for i, p in enumerate(plans):
        k = p.hidden.shape[1]
        v = torch.cat([base[i : i + 1].float(), rows[i, : p.n_rows].float()])
        values[i, :k] = p.combine(v.double()).float()
        single = (p.hidden.sum(1) == 1).nonzero().flatten()
        scores[i, p.hidden[single].float().argmax(1).to(base.device)] = v[single.to(v.device)]
    return scores, values


def leaf_groups(feats: Tensor, labels: Tensor, n_found: Tensor, n_groups: int, seed: int) -> Tensor:
    """The first level of a two-level region tree: the regions grouped by k-means on their
    mean (L2-normalised) features -- the cluster tree of ``estimator="owen"``.

    Args:
        feats: ``(B, P, d)`` features of the ``P`` units that ``labels`` label.
        labels: ``(B, P)`` region of every unit, ``0..K_i-1``.
        n_found: ``(B,)`` regions per image.
        n_groups: Groups per image (capped at the regions of the image).
        seed: k-means seed.

    Returns:
        ``(B, K)`` long group id per region, ``K = max(n_found)`` (padding regions join
        group 0 and are never used).
    """
    from captum_clip.attr._kmeans import batched_kmeans

    b, k = labels.shape[0], int(n_found.max())
    x = F.normalize(feats.float(), dim=-1)
    sums = torch.zeros(b, k, x.shape[-1], device=x.device).scatter_add(
        1, labels[:, :, None].expand(-1, -1, x.shape[-1]), x
    )
    present = torch.arange(k, device=x.device)[None] < n_found[:, None].to(x.device)
    cent = torch.where(present[:, :, None], sums, sums[:, :1])  # pad with region 0
    out = torch.zeros(b, k, dtype=torch.long, device=x.device)
    for m in n_found.unique().tolist():  # images with the same K share one batched k-means
        rows = (n_found == m).nonzero().flatten().to(x.device)
        g = min(n_groups, int(m))
        res = batched_kmeans(cent[rows, : int(m)], g, seed=seed)
        out[rows, : int(m)] = consecutive_labels(res.labels)
    return out


def user_partition(
    regions: Any, inputs: Tensor, grid: tuple[int, int] | None
) -> tuple[Tensor, Tensor]:
    """User regions → ``(B, P)`` consecutive labels and ``(B,)`` regions per image.

    Args:
        regions: See :func:`check_regions`.
        inputs: The ``(B, 3, H, W)`` images.
        grid: Patch grid (attention mode: majority partition of the patches), or None
            (pixel mode: the regions at pixel resolution, exactly as given).
    """
    user = check_regions(regions, inputs.shape[0], tuple(inputs.shape[-2:])).to(inputs.device)
    labels = consecutive_labels(user) if grid is None else patch_partition(user, grid)
    labels = labels.reshape(inputs.shape[0], -1)
    return labels, labels.max(1).values + 1


def game_values(
    run_rows: Callable[[Tensor, Tensor], Tensor],
    base: Tensor,
    labellings: list[tuple[Tensor, Tensor]],
    ks: tuple[int, ...],
    estimator: str,
    budget: int | None,
    seed: int,
    groups: list[Tensor | None] | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Leave-one-out scores and estimator values per labelling, from one batched forward.

    Args:
        run_rows: ``(hidden (B, V, P), valid (B, V)) -> (B, V)`` scores of masked rows
            (CCI's ``_variant_scores``: :func:`~._region_scores.variant_scores`).
        base: ``(B,)`` unmasked scores.
        labellings: ``(labels (B, P), n_found (B,))`` per labelling (one per K).
        ks: Output columns per labelling.
        estimator, budget, seed: See :func:`captum_clip.attr._regions.plan`.
        groups: Per labelling, the ``(B, K)`` groups of :func:`leaf_groups` (``"owen"``).

    Returns:
        ``(scores, values)``: lists of ``(B, K_j)`` tensors (see :func:`combine`).
    """
    from captum_clip.attr._region_scores import region_hidden

    groups = groups or [None] * len(ks)
    parts = [
        coalition_masks(n, k, estimator, budget, seed, g)
        for (_, n), k, g in zip(labellings, ks, groups)
    ]
    hidden = torch.cat([region_hidden(lab, h) for (lab, _), (_, h, _) in zip(labellings, parts)], 1)
    rows = run_rows(hidden, torch.cat([v for _, _, v in parts], 1))
    scores, values = [], []
    for (plans, _, valid), k in zip(parts, ks):
        s, val = combine(plans, base, rows[:, : valid.shape[1]], k)
        rows = rows[:, valid.shape[1] :]
        scores.append(s)
        values.append(val)
    return scores, values
