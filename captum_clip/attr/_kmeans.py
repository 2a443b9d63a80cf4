"""Batched k-means in torch: the patch tokens of every image of a batch clustered at once.

CCI's default clusterer. Each image's points are clustered independently, but all images
and all restarts run as one batched computation on the points' device (matrix products
for the distances and the centroid updates, no Python loop over images or restarts):

* greedy k-means++ seeding (``2 + int(log k)`` candidates per step, the candidate that
  lowers the potential most is kept, as in scikit-learn), driven by uniform numbers drawn
  from a seeded CPU ``torch.Generator``. The *same* numbers serve every image, so an
  image's clusters do not depend on the batch it comes in (batch split invariance);
* Lloyd iterations until no label of any restart changes (at most ``max_iter``); a
  restart that has converged sits at a fixed point, so the iterations others still need
  do not change it. Each iteration is a handful of batched kernels and one host sync
  (on a GPU the loop is bound by kernel launches, not arithmetic);
* an empty cluster is re-seeded at the point farthest from its centre (the farthest
  point for the first empty cluster, the second farthest for the second, ...); where no
  point lies away from its centre (duplicate points) the cluster stays empty;
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KMeansResult", "batched_kmeans", "consecutive_labels", "sklearn_labels"]

N_INIT = 4
MAX_ITER = 100


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


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, run torch single-threaded (restored on exit).

    The matrices are small: with several threads the OpenMP barriers dominate, and on a
    busy machine they cost 8x (measured: 1.5 s instead of 0.18 s for 8 images, K=7).
    """
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


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
    seed: int = 0,
    normalize: bool = True,
) -> KMeansResult:
    """k-means of every image's points, all images and restarts in one computation.

    Args:
        x: ``(B, N, d)`` points (``N`` per image). Float64 input runs in float64, any
            other floating dtype in float32, on ``x``'s device.
        n_clusters: K, ``1 <= K <= N``.
        n_init: Restarts per image (the lowest inertia is kept).
        max_iter: Cap on the Lloyd iterations (they stop earlier when no label changes).
        seed: Seed of the ``torch.Generator`` behind the k-means++ draws.
        normalize: L2-normalise the points first (cosine geometry).

    Returns:
        A :class:`KMeansResult`. On the CPU, torch runs single-threaded for the call.
    """
    if not isinstance(x, Tensor) or x.ndim != 3 or not x.is_floating_point():
        raise ValueError(f"x must be a (B, N, d) float tensor, got {getattr(x, 'shape', x)}")
    b, n, _ = x.shape
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be an int in [1, {n}] (the points), got {n_clusters!r}")
    for name, v in (("n_init", n_init), ("max_iter", max_iter)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    with _one_cpu_thread(x.device):
        return _lloyd(x, n_clusters, n_init, max_iter, seed, normalize)


def _lloyd(
    x: Tensor, n_clusters: int, n_init: int, max_iter: int, seed: int, normalize: bool
) -> KMeansResult:
    """The computation behind :func:`batched_kmeans` (arguments checked there)."""
    b, n, _ = x.shape
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
    ids = torch.arange(k, device=x.device)

    centres = x[rows[:, None, None], _seed(x, x2, k, u_first, u_trials)]  # (B, R, k, d)
    centres = centres.reshape(b, r * k, -1)
    prev = None
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007
        # |c|^2 - 2 x.c: the squared distance up to |x|^2, which the argmin does not need
        c2 = (centres * centres).sum(-1)
        d = torch.baddbmm(c2[:, None, :], x, centres.transpose(1, 2), alpha=-2)
        mind, labels = d.view(b, n, r, k).min(-1)  # (B, N, R)
        onehot = (labels[..., None] == ids).to(dtype).view(b, n, r * k)
        counts = onehot.sum(1)  # (B, R*k)
        new = (onehot.transpose(1, 2) @ x) / counts.clamp_min(1)[..., None]
        empty = counts == 0
        changed = (labels != prev).any() if prev is not None else empty.new_ones(())
        changed, any_empty = torch.stack([changed, empty.any()]).tolist()
        if any_empty:
            new, fixed = _reseed(x, mind + x2[..., None], new, centres, empty.view(b, r, k))
            changed = changed or fixed
        if not changed:  # labels stable and centres = their means: a fixed point
            converged = True
            break
        centres, prev = new, labels
    if not converged:  # capped: assign to the last centres (as scikit-learn does)
        c2 = (centres * centres).sum(-1)
        d = torch.baddbmm(c2[:, None, :], x, centres.transpose(1, 2), alpha=-2)
        mind, labels = d.view(b, n, r, k).min(-1)
    inertia = (mind + x2[..., None]).clamp_min_(0).sum(1)  # (B, R)
    best = inertia.argmin(1)  # first restart among ties
    labels = labels.gather(2, best[:, None, None].expand(b, n, 1))[..., 0]
    labels, n_found = consecutive_labels(labels, k)
    return KMeansResult(labels, n_found, inertia.gather(1, best[:, None])[:, 0], n_iter)


def _reseed(
    x: Tensor, dist: Tensor, new: Tensor, old: Tensor, empty: Tensor
) -> tuple[Tensor, bool]:
    """Move empty clusters to the points farthest from their centres.

    Args:
        x: ``(B, N, d)`` points; ``dist``: ``(B, N, R)`` squared distance of each point to
            its centre in each restart; ``new`` / ``old``: ``(B, R*k, d)`` updated and
            previous centres; ``empty``: ``(B, R, k)``.

    Returns:
        The centres (an empty cluster that no point lies away from keeps its old centre)
        and whether any cluster was moved.
    """
    b, r, k = empty.shape
    rank = (empty.long().cumsum(-1) - 1).clamp_(min=0)  # m-th empty -> m-th farthest
    far_d, far = dist.transpose(1, 2).topk(k, dim=-1)  # (B, R, k)
    idx = far.gather(-1, rank)
    moved = empty & (far_d.gather(-1, rank) > 1e-12)
    rows = torch.arange(b, device=x.device)
    out = torch.where(empty.view(b, r * k, 1), old, new)
    out = torch.where(moved.view(b, r * k, 1), x[rows[:, None, None], idx].view(b, r * k, -1), out)
    return out, bool(moved.any())


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


def check_clusterer(clusterer: Any) -> None:
    """A ``clusterer=`` argument: None (batched torch k-means) or scikit-learn style."""
    if clusterer is not None and not hasattr(clusterer, "fit_predict"):
        raise TypeError(
            f"clusterer must have fit_predict (scikit-learn style), got {type(clusterer).__name__}"
        )


def cluster_grid(
    feats: Tensor, k: int, clusterer: Any = None, seed: int = 0, set_k: bool = False
) -> tuple[Tensor, Tensor]:
    """``(B, P)`` consecutive cluster labels and ``(B,)`` clusters found per image of the
    ``(B, h, w, d)`` grid features ``feats`` (CCI's regions).

    The default is :func:`batched_kmeans` on the features' device; a ``clusterer``
    estimator is fitted per image on the CPU (``set_k``: its ``n_clusters`` is set to
    ``k`` first). Empty clusters are dropped.
    """
    b, h, w, d = feats.shape
    if k > h * w:
        raise ValueError(f"n_clusters={k} is larger than the {h * w} patches ({h}x{w} grid)")
    x = feats.reshape(b, h * w, d)
    if clusterer is None:
        out = batched_kmeans(x, k, seed=seed)
        return out.labels, out.n_found
    x = F.normalize(x.float(), dim=-1)
    labels = sklearn_labels(clusterer, x, k, set_k=set_k)
    n_found = labels.max(1).values + 1
    if int(n_found.max()) > k:
        raise ValueError(
            f"the clusterer found {int(n_found.max())} clusters with n_clusters={k}; "
            "it must return at most n_clusters labels"
        )
    return labels, n_found
