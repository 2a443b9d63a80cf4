"""Region estimators: which coalitions of regions to hide, and how to combine their scores.

A *region game* has ``K`` regions (CCI's clusters, or regions given by the user) and a
value ``v(S)``: the target score when only the regions in ``S`` are visible (all others
hidden). Every estimator here is *linear* in the values, so it is a :class:`CoalitionPlan`:
a ``(R, K)`` bool matrix of hidden regions (one row per coalition, all distinct; row 0 is
the unmasked image, whose score the caller already has) and a ``(K, R)`` weight matrix,
``phi = weights @ values``. All rows of all images then run as one batched forward.

========================= ===================================== ======================
estimator                 value of region ``k``                  rows (incl. unmasked)
========================= ===================================== ======================
``"occlusion"``           ``v(N) - v(N \\ k)`` (leave one out)   ``K + 1``
``"sufficiency"``         ``v({k}) - v(∅)`` (keep only ``k``)    ``K + 2``
``"shapley"``             exact Shapley value                    ``2^K``
``"banzhaf"``             exact Banzhaf value                    ``2^K``
``"sampled_shapley"``     permutation-sampling Shapley           ``<= budget + 1``
========================= ===================================== ======================

Exact Shapley values satisfy *efficiency*: ``sum_k phi_k = v(N) - v(∅)``; so does every
permutation sample (each permutation's marginal contributions telescope).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ESTIMATORS",
    "MAX_EXACT_K",
    "CoalitionPlan",
    "check_n_clusters",
    "estimate",
    "normalize_values",
    "plan",
]

ESTIMATORS = ("occlusion", "sufficiency", "shapley", "banzhaf", "sampled_shapley")
#: Largest K of the exact estimators (2^10 = 1024 rows per image).
MAX_EXACT_K = 10
#: Cap on the antithetic permutation pairs of ``"sampled_shapley"`` (reached only when
#: the budget covers nearly all coalitions of a small K).
MAX_PERMUTATION_PAIRS = 512


@dataclass(frozen=True)
class CoalitionPlan:
    """The coalitions an estimator needs and how their values combine.

    Attributes:
        hidden: ``(R, K)`` bool, True where region ``k`` is hidden in row ``r``; rows are
            distinct and row 0 hides nothing (the unmasked image).
        weights: ``(K, R)`` float64; region values are ``weights @ values``.
        n_permutations: Permutations averaged (``"sampled_shapley"``), else 0.
    """

    hidden: Tensor
    weights: Tensor
    n_permutations: int = 0

    @property
    def n_rows(self) -> int:
        """Rows besides the unmasked image (masked forwards per image)."""
        return self.hidden.shape[0] - 1

    def combine(self, values: Tensor) -> Tensor:
        """Region values ``(..., K)`` from row values ``(..., R)`` (row 0 = unmasked)."""
        w = self.weights.to(device=values.device, dtype=torch.float64)
        return (values.to(torch.float64) @ w.T).to(values.dtype)


def _check(estimator: str, k: int, budget: int | None) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"the number of regions must be an int >= 1, got {k!r}")
    if estimator in ("shapley", "banzhaf") and k > MAX_EXACT_K:
        raise ValueError(
            f"estimator={estimator!r} enumerates all 2^K coalitions and allows K <= "
            f"{MAX_EXACT_K}, got K={k}; use estimator='sampled_shapley' with a budget"
        )
    if estimator == "sampled_shapley":
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise ValueError(
                f"estimator='sampled_shapley' needs budget= (an int, masked forwards per "
                f"image), got {budget!r}"
            )
        if budget < max(1, k):
            raise ValueError(
                f"budget={budget} is too small for one permutation of K={k} regions "
                f"(needs at least {max(1, k)} masked forwards)"
            )


def _assemble(k: int, columns: dict[int, list[tuple[int, float]]], n_perm: int) -> CoalitionPlan:
    """Plan from ``{visible-set bitmask: [(region, weight), ...]}`` (bitmask order kept)."""
    full = (1 << k) - 1
    masks = [full] + [m for m in columns if m != full]
    hidden = torch.tensor([[not (m >> j) & 1 for j in range(k)] for m in masks], dtype=torch.bool)
    weights = torch.zeros(k, len(masks), dtype=torch.float64)
    index = {m: r for r, m in enumerate(masks)}
    for m, entries in columns.items():
        for j, w in entries:
            weights[j, index[m]] += w
    return CoalitionPlan(hidden, weights, n_perm)


def _add(columns: dict[int, list[tuple[int, float]]], mask: int, j: int, w: float) -> None:
    columns.setdefault(mask, []).append((j, w))


def _exact(estimator: str, k: int) -> CoalitionPlan:
    full = (1 << k) - 1
    cols: dict[int, list[tuple[int, float]]] = {full: []}
    fact = math.factorial
    for mask in range(full + 1):
        size = bin(mask).count("1")
        for j in range(k):
            inside = (mask >> j) & 1
            if estimator == "banzhaf":
                w = 1.0 / 2 ** (k - 1)
            else:  # Shapley: |S|!(K-|S|-1)!/K! for S without j, with S = mask minus j
                s = size - 1 if inside else size
                w = fact(s) * fact(k - s - 1) / fact(k)
            _add(cols, mask, j, w if inside else -w)
    return _assemble(k, cols, 0)


def _sampled(k: int, budget: int, seed: int) -> CoalitionPlan:
    """Antithetic permutation pairs while the distinct masked rows stay within budget."""
    full = (1 << k) - 1
    g = torch.Generator().manual_seed(int(seed))
    seen: set[int] = {full}
    walks: list[list[int]] = []
    for _ in range(MAX_PERMUTATION_PAIRS):
        perm = torch.randperm(k, generator=g).tolist()
        pair = [perm, perm[::-1]]
        new = set()
        for p in pair:
            mask = 0
            new.add(mask)
            for j in p:
                mask |= 1 << j
                new.add(mask)
        if len(seen | new) - 1 > budget:
            if not walks:  # budget >= K: one permutation always fits, its reverse may not
                walks.append(perm)
            break
        seen |= new
        walks.extend(pair)
    cols: dict[int, list[tuple[int, float]]] = {full: []}
    w = 1.0 / len(walks)
    for p in walks:
        mask = 0
        for j in p:
            _add(cols, mask, j, -w)
            mask |= 1 << j
            _add(cols, mask, j, w)
    return _assemble(k, cols, len(walks))


@lru_cache(maxsize=64)
def _cached(estimator: str, k: int, budget: int | None, seed: int) -> CoalitionPlan:
    full = (1 << k) - 1
    if estimator == "occlusion":
        cols = {full: [(j, 1.0) for j in range(k)]}
        for j in range(k):
            _add(cols, full & ~(1 << j), j, -1.0)
        return _assemble(k, cols, 0)
    if estimator == "sufficiency":
        cols: dict[int, list[tuple[int, float]]] = {full: []}
        for j in range(k):
            _add(cols, 1 << j, j, 1.0)
            _add(cols, 0, j, -1.0)
        return _assemble(k, cols, 0)
    if estimator in ("shapley", "banzhaf"):
        return _exact(estimator, k)
    return _sampled(k, int(budget), seed)


def plan(estimator: str, k: int, budget: int | None = None, seed: int = 0) -> CoalitionPlan:
    """The coalitions and weights of ``estimator`` for ``k`` regions.

    Args:
        estimator: One of :data:`ESTIMATORS`.
        k: Number of regions.
        budget: ``"sampled_shapley"`` only: at most this many masked rows (forwards per
            image besides the unmasked one). Antithetic permutation pairs (a random order
            and its reverse) are added while their distinct coalitions fit; at least one
            permutation is used, so ``budget >= k`` is required.
        seed: Seed of the permutations (the same permutations for every image).

    Returns:
        A :class:`CoalitionPlan` (cached: do not modify its tensors).
    """
    _check(estimator, k, budget)
    return _cached(estimator, k, budget if estimator == "sampled_shapley" else None, int(seed))


def estimate(
    estimator: str,
    k: int,
    value: Callable[[Tensor], Tensor],
    budget: int | None = None,
    seed: int = 0,
) -> Tensor:
    """Region values of a game given as a function of hidden sets.

    Args:
        estimator, k, budget, seed: See :func:`plan`.
        value: ``hidden (R, K) bool -> (R,)`` values (True = region hidden), called once
            with every coalition of the plan (row 0 hides nothing).

    Returns:
        ``(K,)`` region values.
    """
    p = plan(estimator, k, budget, seed)
    values = torch.as_tensor(value(p.hidden.clone()))
    if values.shape != (p.hidden.shape[0],):
        raise ValueError(
            f"value must return one number per coalition ({p.hidden.shape[0]},), got "
            f"{tuple(values.shape)}"
        )
    return p.combine(values.double())


def check_n_clusters(n_clusters: Any) -> tuple[int, ...]:
    """K (an int >= 1) or a sequence of K, as a tuple (CCI's ``n_clusters``)."""
    ks = (n_clusters,) if not isinstance(n_clusters, Sequence) else tuple(n_clusters)
    if len(ks) == 0 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(
            f"n_clusters must be an int >= 1 or a sequence of them, got {n_clusters!r}"
        )
    return ks


def normalize_values(values: Tensor, normalize: str | None) -> Tensor:
    """Region weights ``(B, K)`` from values: ``"abs"`` (``v / sum|v|``), ``"sum"``
    (``v / sum v``) or None (unchanged). NaN (padding) is skipped in the sums, and a zero
    denominator gives zero weights."""
    if normalize is None:
        return values
    v0 = torch.nan_to_num(values, nan=0.0)
    denom = v0.abs().sum(1, keepdim=True) if normalize == "abs" else v0.sum(1, keepdim=True)
    safe = torch.where(denom == 0, torch.ones_like(denom), denom)
    return torch.where(denom == 0, v0 * 0, values / safe)
