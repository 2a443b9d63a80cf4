"""Batched k-means in torch: the patch tokens of every image of a batch clustered at once.

CCI's default clusterer. Each image's points are clustered independently, but all images
and all restarts run as one batched computation on the points' device (matrix products
for the distances and the centroid updates, no Python loop over images or restarts):

* greedy k-means++ seeding (``2 + int(log k)`` candidates per step, the candidate that
  lowers the potential most is kept, as in scikit-learn), driven by uniform numbers drawn
  from a seeded CPU ``torch.Generator``. The *same* numbers serve every image, so an
  image's clusters do not depend on the batch it comes in (batch split invariance);
* Lloyd iterations until the labels stop changing or the squared centre shift falls
  under ``tol`` times the mean per-feature variance (scikit-learn's rule), each restart
  frozen as soon as it has converged, at most ``max_iter`` iterations;
* an empty cluster is re-seeded at the point farthest from its centre (the farthest
  point for the first empty cluster, the second farthest for the second, ...);
* ``n_init`` restarts, the one with the lowest inertia kept per image.

Clusters still empty at the end (duplicate points) are dropped: labels are consecutive
from 0 and ``n_found`` tells how many clusters each image has.

Example:
    >>> out = batched_kmeans(tokens, 7, seed=0)      # tokens (B, N, d)
    >>> out.labels.shape, out.n_found, out.inertia   # (B, N), (B,), (B,)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KMeansResult", "batched_kmeans", "consecutive_labels", "sklearn_labels"]

N_INIT = 4
MAX_ITER = 100
TOL = 1e-4


@dataclass
class KMeansResult:
    """Batched k-means output.

    Attributes:
        labels: ``(B, N)`` long, consecutive from 0 per image.
        n_found: ``(B,)`` number of non-empty clusters per image.
        inertia: ``(B,)`` sum of squared distances of the points to their centres (in the
            geometry that was clustered: L2-normalised points for ``normalize=True``).
        n_iter: Lloyd iterations run (the slowest restart of the batch).
    """

    labels: Tensor
    n_found: Tensor
    inertia: Tensor
    n_iter: int


def consecutive_labels(labels: Tensor, n_clusters: int) -> tuple[Tensor, Tensor]:
    """Relabel ``(B, N)`` labels in ``[0, n_clusters)`` to consecutive ids, keeping order.

    Returns:
        The relabelled ``(B, N)`` long tensor and ``(B,)`` the number of distinct labels.
    """
    b = labels.shape[0]
    present = torch.zeros(b, n_clusters, dtype=torch.bool, device=labels.device)
    present.scatter_(1, labels, True)
    new_id = present.long().cumsum(1) - 1
    return new_id.gather(1, labels), present.sum(1)


def _sq_dist(a: Tensor, a2: Tensor, c: Tensor) -> Tensor:
    """``(B, M, N)`` squared distances between centres ``c (B, M, d)`` and points ``a``."""
    c2 = (c * c).sum(-1)
    return (c2[:, :, None] + a2[:, None, :] - 2 * c @ a.transpose(1, 2)).clamp_min_(0)


def _seed(x: Tensor, x2: Tensor, k: int, u_first: Tensor, u_trials: Tensor) -> Tensor:
    """Greedy k-means++ for ``R`` restarts of every image; ``(B, R, k)`` point indices."""
    b, n, _ = x.shape
    r, _, trials = u_trials.shape
    rows = torch.arange(b, device=x.device)
    first = (u_first * n).long().clamp_(max=n - 1)  # (R,)
    chosen = [first.expand(b, r)]
    d2 = _sq_dist(x, x2, x[:, first])  # (B, R, N)
    for j in range(1, k):
        cum = d2.cumsum(-1)
        thresh = u_trials[:, j - 1] * cum[..., -1:]  # (B, R, L)
        cand = torch.searchsorted(cum, thresh.contiguous(), right=True).clamp_(max=n - 1)
        pts = x[rows[:, None, None], cand].reshape(b, r * trials, -1)
        dc = _sq_dist(x, x2, pts).reshape(b, r, trials, n)
        new = torch.minimum(d2[:, :, None], dc)  # (B, R, L, N)
        best = new.sum(-1).argmin(-1)  # (B, R)
        d2 = new.gather(2, best[:, :, None, None].expand(b, r, 1, n))[:, :, 0]
        chosen.append(cand.gather(2, best[:, :, None])[..., 0])
    return torch.stack(chosen, -1)


def batched_kmeans(
    x: Tensor,
    n_clusters: int,
    *,
    n_init: int = N_INIT,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
    seed: int = 0,
    normalize: bool = True,
) -> KMeansResult:
    """k-means of every image's points, all images and restarts in one computation.

    Args:
        x: ``(B, N, d)`` points (``N`` per image). Float64 input runs in float64, any
            other floating dtype in float32, on ``x``'s device.
        n_clusters: K, ``1 <= K <= N``.
        n_init: Restarts per image (the lowest inertia is kept).
        max_iter: Cap on the Lloyd iterations.
        tol: Convergence when the summed squared centre shift of a restart is at most
            ``tol`` times the mean per-feature variance of its image's points (or when
            its labels stop changing).
        seed: Seed of the ``torch.Generator`` behind the k-means++ draws.
        normalize: L2-normalise the points first (cosine geometry).

    Returns:
        A :class:`KMeansResult`.
    """
    if not isinstance(x, Tensor) or x.ndim != 3 or not x.is_floating_point():
        raise ValueError(f"x must be a (B, N, d) float tensor, got {getattr(x, 'shape', x)}")
    b, n, _ = x.shape
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be an int in [1, {n}] (the points), got {n_clusters!r}")
    for name, v in (("n_init", n_init), ("max_iter", max_iter)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    k, r = n_clusters, n_init
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dtype)
    if normalize:
        x = F.normalize(x, dim=-1)
    x2 = (x * x).sum(-1)  # (B, N)
    gen = torch.Generator().manual_seed(int(seed))
    trials = 2 + int(math.log(k))
    u_first = torch.rand(r, generator=gen, dtype=torch.float64).to(x.device)
    u_trials = torch.rand(r, max(k - 1, 1), trials, generator=gen, dtype=torch.float64)
    u_trials = u_trials.to(x.device, dtype)
    rows = torch.arange(b, device=x.device)

    centres = x[rows[:, None, None], _seed(x, x2, k, u_first, u_trials)]  # (B, R, k, d)
    centres = centres.reshape(b, r * k, -1)
    tol_abs = tol * x.var(1, unbiased=False).mean(-1)  # (B,)
    offset = torch.arange(r, device=x.device) * k
    active = torch.ones(b, r, dtype=torch.bool, device=x.device)
    labels = torch.full((b, n, r), -1, dtype=torch.long, device=x.device)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007
        d = _sq_dist(x, x2, centres).transpose(1, 2).reshape(b, n, r, k)
        mind, new_labels = d.min(-1)  # (B, N, R)
        onehot = torch.zeros(b, n, r * k, dtype=dtype, device=x.device)
        onehot.scatter_(2, new_labels + offset, 1.0)
        counts = onehot.sum(1)  # (B, R*k)
        new = (onehot.transpose(1, 2) @ x) / counts.clamp_min(1)[..., None]
        # empty cluster -> the farthest point not yet used (1st, 2nd, ... per restart)
        empty = (counts == 0).reshape(b, r, k)
        rank = (empty.long().cumsum(-1) - 1).clamp_(min=0)
        far = mind.transpose(1, 2).topk(k, dim=-1).indices  # (B, R, k)
        reseed = x[rows[:, None, None], far.gather(-1, rank)].reshape(b, r * k, -1)
        new = torch.where(empty.reshape(b, r * k, 1), reseed, new)
        shift = ((new - centres) ** 2).sum(-1).reshape(b, r, k).sum(-1)
        same = (new_labels == labels).all(1)  # (B, R)
        upd = active.repeat_interleave(k, 1)[..., None]
        centres = torch.where(upd, new, centres)
        labels = torch.where(active[:, None, :], new_labels, labels)
        converged = (same & ~empty.any(-1)) | (shift <= tol_abs[:, None])
        active = active & ~converged
        if not bool(active.any()):
            break
    # final assignment to the final centres
    d = _sq_dist(x, x2, centres).transpose(1, 2).reshape(b, n, r, k)
    mind, labels = d.min(-1)
    inertia = mind.sum(1)  # (B, R)
    best = inertia.argmin(1)  # first restart among ties
    labels = labels.gather(2, best[:, None, None].expand(b, n, 1))[..., 0]
    labels, n_found = consecutive_labels(labels, k)
    return KMeansResult(labels, n_found, inertia.gather(1, best[:, None])[:, 0], n_iter)


def sklearn_labels(estimator: Any, x: Tensor, n_clusters: int, set_k: bool) -> Tensor:
    """Labels from a scikit-learn style estimator, cloned and fitted per image.

    Args:
        estimator: Object with ``fit_predict`` (cloned with ``sklearn.base.clone``).
        x: ``(B, N, d)`` points (L2-normalised by the caller where wanted).
        n_clusters: K, set as the clone's ``n_clusters`` when it has that parameter.
        set_k: Raise a ``ValueError`` if the estimator has no ``n_clusters`` parameter
            (a multi-K ensemble needs one).

    Returns:
        ``(B, N)`` long labels, consecutive from 0 per image.
    """
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    pts = x.detach().cpu().double().numpy()
    out = np.empty(pts.shape[:2], dtype=np.int64)
    for i in range(len(pts)):
        est = clone(estimator)
        if "n_clusters" in est.get_params():
            est.set_params(n_clusters=n_clusters)
        elif set_k:
            raise ValueError("a multi-K ensemble needs a clusterer with n_clusters")
        # one thread: N is small, and OpenMP spinning costs 10x on a busy machine
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points
            raw = np.asarray(est.fit_predict(pts[i])).reshape(-1)
        out[i] = np.unique(raw, return_inverse=True)[1].reshape(-1)
    return torch.from_numpy(out).to(x.device)
