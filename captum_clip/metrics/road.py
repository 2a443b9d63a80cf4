"""ROAD: RemOve And Debias (Rong et al., ICML 2022) with noisy linear imputation.

The removed pixels are not replaced by a constant (which leaks the removal pattern to the
model) but imputed from their neighbourhood: each removed pixel equals the weighted mean of
its in-image 8 neighbours (weight 1/6 for edge-adjacent, 1/12 for diagonal neighbours),
which couples all removed pixels of an image into one sparse linear system. The systems of
all images of a forward batch are solved at once (block diagonal, ``scipy.sparse``), then a
little Gaussian noise is added to the imputed values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import spsolve
from torch import Tensor

from captum_clip.metrics._common import (
    SCORES,
    check_inputs,
    importance_rank,
    pixel_map,
    resolve_target,
    run_batched,
    select_score,
)

#: (dy, dx) offsets of the 8 neighbours and their weights (sum 1).
NEIGHBOURS = tuple(
    ((dy, dx), 1 / 6 if dy == 0 or dx == 0 else 1 / 12)
    for dy in (-1, 0, 1)
    for dx in (-1, 0, 1)
    if (dy, dx) != (0, 0)
)
DEFAULT_PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


@dataclass(frozen=True)
class RoadResult:
    """ROAD scores.

    Attributes:
        percentages: ``(P,)`` percentages of pixels removed.
        morf: ``(B, P)`` score after removing the most relevant pixels first.
        lerf: ``(B, P)`` score after removing the least relevant pixels first.
        combined: ``(B, P)`` ``(lerf - morf) / 2`` (higher is better).
    """

    percentages: Tensor
    morf: Tensor
    lerf: Tensor
    combined: Tensor

    @property
    def score(self) -> Tensor:
        """Per-example summary ``(B,)``: ``combined`` averaged over the percentages."""
        return self.combined.mean(dim=1)


def noisy_linear_impute(
    images: Tensor,
    removed: Tensor,
    *,
    noise_std: float = 0.01,
    seed: int | Sequence[int] = 0,
) -> Tensor:
    """Impute removed pixels as the weighted mean of their neighbours, plus noise.

    For the removed pixels ``i`` of one image, solves ``s_i x_i - sum_j w_ij x_j =
    sum_k w_ik v_k`` (``j`` removed and ``k`` kept in-image neighbours, ``s_i`` the sum of the
    in-image neighbour weights), i.e. ``x_i`` = weighted mean of its neighbours, for all
    channels at once. The systems of all images are solved as one block-diagonal sparse
    system. Then ``noise_std * N(0, 1)`` noise is added to the imputed values.

    Args:
        images: ``(M, C, H, W)`` images.
        removed: ``(M, H, W)`` boolean mask of the pixels to impute; each image must keep
            at least one pixel.
        noise_std: Standard deviation of the added noise (0 for the exact solution).
        seed: Noise seed; image ``i`` uses ``seed + i`` (or ``seed[i]`` for a sequence).

    Returns:
        Imputed images ``(M, C, H, W)`` on the device and dtype of ``images``.
    """
    m, c, h, w = check_inputs(images).shape
    if not isinstance(removed, Tensor) or removed.shape != (m, h, w) or removed.dtype != torch.bool:
        raise ValueError(
            f"removed must be a bool tensor of shape {(m, h, w)}, got {getattr(removed, 'dtype', type(removed))} "
            f"{tuple(getattr(removed, 'shape', ()))}"
        )
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    rem = removed.detach().cpu().numpy()
    if rem.reshape(m, -1).all(axis=1).any():
        raise ValueError("each image must keep at least one pixel (cannot impute 100 %)")
    flat_rem = rem.reshape(-1)
    unknown = np.flatnonzero(flat_rem)
    if unknown.size == 0:
        return images.clone()
    values = images.detach().cpu().double().permute(0, 2, 3, 1).reshape(-1, c).numpy()
    var_of = np.full(flat_rem.size, -1, dtype=np.int64)
    var_of[unknown] = np.arange(unknown.size)
    mi, yi, xi = np.unravel_index(unknown, (m, h, w))
    diag = np.zeros(unknown.size)
    rhs = np.zeros((unknown.size, c))
    rows, cols, vals = [], [], []
    for (dy, dx), weight in NEIGHBOURS:
        ny, nx = yi + dy, xi + dx
        ok = np.flatnonzero((ny >= 0) & (ny < h) & (nx >= 0) & (nx < w))
        diag[ok] += weight
        nb = (mi[ok] * h + ny[ok]) * w + nx[ok]
        nb_unknown = flat_rem[nb]
        rows.append(ok[nb_unknown])
        cols.append(var_of[nb[nb_unknown]])
        vals.append(np.full(int(nb_unknown.sum()), -weight))
        rhs[ok[~nb_unknown]] += weight * values[nb[~nb_unknown]]
    rows.append(np.arange(unknown.size))
    cols.append(np.arange(unknown.size))
    vals.append(diag)
    a = sp.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(unknown.size, unknown.size),
    )
    solution = np.asarray(spsolve(a, rhs)).reshape(unknown.size, c)
    out = values.copy()
    out[unknown] = solution
    result = torch.from_numpy(out).reshape(m, h, w, c).permute(0, 3, 1, 2)
    if noise_std > 0:
        seeds = [seed + i for i in range(m)] if isinstance(seed, int) else list(seed)
        if len(seeds) != m:
            raise ValueError(f"seed must be an int or have {m} entries, got {len(seeds)}")
        noise = torch.stack(
            [
                torch.randn(
                    c, h, w, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64
                )
                for s in seeds
            ]
        )
        result = result + noise_std * noise * torch.from_numpy(rem)[:, None]
    return result.to(device=images.device, dtype=images.dtype)


def road(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    *,
    target: Any = None,
    additional_forward_args: Any = None,
    percentages: Sequence[float] = DEFAULT_PERCENTAGES,
    score: str = "logit",
    noise_std: float = 0.01,
    seed: int = 0,
    max_examples_per_batch: int | None = None,
    show_progress: bool = False,
) -> RoadResult:
    """ROAD MoRF / LeRF curves with noisy linear imputation, and their combination.

    For each percentage ``p`` the top (MoRF) or bottom (LeRF) ``round(p / 100 * H * W)``
    pixels (ranked by the channel-summed attribution, ties in a seeded random order) are
    imputed by ``noisy_linear_impute`` and the model is scored.

    Args:
        forward_func: Callable ``images -> (n, n_outputs)``.
        inputs: Images ``(B, C, H, W)``.
        attributions: ``(B, C, H, W)``, ``(B, 1, H, W)`` or ``(B, H, W)``.
        target: Output index per example; ``None`` = predicted class of the clean input.
        additional_forward_args: Extra forward arguments (tensors with ``B`` rows are indexed).
        percentages: Percentages of pixels to remove, each in ``[0, 100)``.
        score: ``"logit"``, ``"prob"``, ``"top1"`` or ``"top5"``.
        noise_std: Std of the imputation noise (in input units).
        seed: Seed of the tie-breaking order and of the noise (per image and percentage,
            independent of the batching).
        max_examples_per_batch: Imputed images per forward (and per sparse solve);
            ``None`` = all ``2 * B * P`` at once.
        show_progress: tqdm bar over the batches.

    Returns:
        A ``RoadResult`` with ``morf``, ``lerf`` and ``combined`` of shape ``(B, P)``.
    """
    inputs = check_inputs(inputs)
    b, _, h, w = inputs.shape
    amap = pixel_map(attributions, inputs.shape).to(inputs.device)
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    pct = torch.as_tensor(percentages, dtype=torch.float64).reshape(-1)
    if pct.numel() == 0 or not torch.isfinite(pct).all() or (pct < 0).any() or (pct >= 100).any():
        raise ValueError(
            f"percentages must be a non-empty list of values in [0, 100), got {percentages!r}"
        )
    n_px, n_p = h * w, pct.numel()
    counts = torch.floor(pct / 100 * n_px + 0.5).long().to(inputs.device)
    rank = importance_rank(amap.reshape(b, n_px), seed)

    def build(ex: Tensor, step: Tensor) -> Tensor:
        ex, step = ex.to(inputs.device), step.to(inputs.device)
        k = counts[step % n_p, None]
        r = rank[ex]
        removed = torch.where(step[:, None] < n_p, r < k, r >= n_px - k).view(-1, h, w)
        seeds = [seed + 1 + int(e) * 2 * n_p + int(s) for e, s in zip(ex.tolist(), step.tolist())]
        return noisy_linear_impute(inputs[ex], removed, noise_std=noise_std, seed=seeds)

    tgt = resolve_target(target, b, inputs.device)
    if tgt is None:
        tgt = run_batched(
            forward_func,
            b,
            1,
            lambda ex, _: inputs[ex.to(inputs.device)],
            lambda out, _: (out[:, None] if out.ndim == 1 else out).argmax(dim=1),
            additional_forward_args,
            max_examples_per_batch,
        )[:, 0].to(inputs.device)

    def reduce(out: Tensor, ex: Tensor) -> Tensor:
        return select_score(out, tgt[ex.to(tgt.device)].to(out.device), score)

    scores = run_batched(
        forward_func,
        b,
        2 * n_p,
        build,
        reduce,
        additional_forward_args,
        max_examples_per_batch,
        show_progress,
        desc="road",
    ).to(inputs.device)
    morf, lerf = scores[:, :n_p], scores[:, n_p:]
    return RoadResult(pct.to(inputs.device, scores.dtype), morf, lerf, (lerf - morf) / 2)
