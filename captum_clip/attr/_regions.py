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
``"owen"``                Owen value of a two-level region tree  ``<= budget + 1``
========================= ===================================== ======================

**Owen values** (``"owen"``): the regions are the leaves of a two-level tree (``groups``:
a group id per region, e.g. CCI's k-means regions grouped again by k-means on their
centroids); Shapley within a group, the other groups entering as whole coalitions with
their own Shapley weights (SHAP's partition explainer is the many-level relative). They
are efficient, reduce to Shapley values for a one-level tree (every region its own group,
or one group of all), and are the mean marginal contribution over orders in which every
group's regions come together -- which is how they are sampled within ``budget``
(antithetic pairs of such orders; ``budget=None`` enumerates them exactly, K <= 10).

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
    "BUDGETED",
    "DEFAULT_BUDGET",
    "ESTIMATORS",
    "MAX_EXACT_K",
    "CoalitionPlan",
    "check_n_clusters",
    "estimate",
    "normalize_values",
    "plan",
]

ESTIMATORS = ("occlusion", "sufficiency", "shapley", "banzhaf", "sampled_shapley", "owen")
#: Estimators whose cost is set by ``budget`` (masked forwards per image).
BUDGETED = ("sampled_shapley", "owen")
#: Their default budget: 63 masked rows + the unmasked image = 64 forwards per image.
DEFAULT_BUDGET = 63
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
    if estimator == "owen" and budget is None and k > MAX_EXACT_K:
        raise ValueError(
            f"exact Owen values (budget=None) enumerate the coalitions and allow K <= "
            f"{MAX_EXACT_K}, got K={k}; give a budget"
        )
    if estimator == "sampled_shapley" or (estimator == "owen" and budget is not None):
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise ValueError(
                f"estimator={estimator!r} needs budget= (an int, masked forwards per "
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
    """Antithetic permutation pairs while the distinct masked rows stay within budget; the
    exact values where all coalitions fit."""
    if k <= MAX_EXACT_K and (1 << k) - 1 <= budget:
        return _exact("shapley", k)
    g = torch.Generator().manual_seed(int(seed))
    return _antithetic_walks(k, budget, lambda: torch.randperm(k, generator=g).tolist())


def _antithetic_walks(k: int, budget: int, draw: Callable[[], list[int]]) -> CoalitionPlan:
    """Orders from ``draw()``, each with its reverse (antithetic pairs), while the distinct
    masked rows stay within ``budget``; the plan averages their marginal contributions."""
    seen: set[int] = {(1 << k) - 1}
    walks: list[list[int]] = []
    for _ in range(MAX_PERMUTATION_PAIRS):
        perm = draw()
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
    return _walks_plan(k, walks)


def _check_groups(groups: Any, k: int) -> tuple[int, ...]:
    if groups is None:
        return tuple(range(k))
    g = tuple(int(x) for x in groups)
    if len(g) != k or min(g, default=0) < 0:
        raise ValueError(
            f"groups must give a group id >= 0 for each of the {k} regions, got {groups!r}"
        )
    return g


def _owen_exact(k: int, groups: tuple[int, ...]) -> CoalitionPlan:
    """Owen weights by enumeration: for region j in group g, coalitions T of whole other
    groups (Shapley weights among the groups) times subsets S of g without j (Shapley
    weights inside g)."""
    fact = math.factorial
    ids = sorted(set(groups))
    members = {gid: [j for j in range(k) if groups[j] == gid] for gid in ids}
    m = len(ids)
    cols: dict[int, list[tuple[int, float]]] = {(1 << k) - 1: []}
    for gid in ids:
        others = [h for h in ids if h != gid]
        inner = members[gid]
        n_in = len(inner)
        for t_bits in range(1 << len(others)):
            t = [others[i] for i in range(len(others)) if (t_bits >> i) & 1]
            w_top = fact(len(t)) * fact(m - len(t) - 1) / fact(m)
            t_mask = sum(1 << j for h in t for j in members[h])
            for j in inner:
                rest = [i for i in inner if i != j]
                for s_bits in range(1 << len(rest)):
                    s_set = [rest[i] for i in range(len(rest)) if (s_bits >> i) & 1]
                    w = w_top * fact(len(s_set)) * fact(n_in - len(s_set) - 1) / fact(n_in)
                    mask = t_mask | sum(1 << i for i in s_set)
                    _add(cols, mask | (1 << j), j, w)
                    _add(cols, mask, j, -w)
    return _assemble(k, cols, 0)


def _walks_plan(k: int, walks: list[list[int]]) -> CoalitionPlan:
    """Plan averaging the marginal contributions along the orders ``walks``."""
    cols: dict[int, list[tuple[int, float]]] = {(1 << k) - 1: []}
    w = 1.0 / len(walks)
    for p in walks:
        mask = 0
        for j in p:
            _add(cols, mask, j, -w)
            mask |= 1 << j
            _add(cols, mask, j, w)
    return _assemble(k, cols, len(walks))


def _owen_sampled(k: int, budget: int, seed: int, groups: tuple[int, ...]) -> CoalitionPlan:
    """Antithetic pairs of hierarchy-consistent orders (groups in a random order, each
    group's regions together in a random order) while the distinct rows fit ``budget``;
    the exact values where all the coalitions they need fit."""
    if k <= MAX_EXACT_K and (exact := _owen_exact(k, groups)).n_rows <= budget:
        return exact
    g = torch.Generator().manual_seed(int(seed))
    ids = sorted(set(groups))
    members = [[j for j in range(k) if groups[j] == gid] for gid in ids]

    def draw() -> list[int]:  # groups in a random order, each group's regions shuffled
        order = torch.randperm(len(ids), generator=g).tolist()
        return [members[o][i] for o in order for i in torch.randperm(len(members[o]), generator=g)]

    return _antithetic_walks(k, budget, draw)


@lru_cache(maxsize=4096)
def _cached(
    estimator: str, k: int, budget: int | None, seed: int, groups: tuple[int, ...] | None = None
) -> CoalitionPlan:
    full = (1 << k) - 1
    if estimator == "owen":
        groups = _check_groups(groups, k)
        if budget is None:
            return _owen_exact(k, groups)
        return _owen_sampled(k, budget, seed, groups)
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


def plan(
    estimator: str, k: int, budget: int | None = None, seed: int = 0, groups: Any = None
) -> CoalitionPlan:
    """The coalitions and weights of ``estimator`` for ``k`` regions.

    Args:
        estimator: One of :data:`ESTIMATORS`.
        k: Number of regions.
        budget: ``"sampled_shapley"`` only: at most this many masked rows (forwards per
            image besides the unmasked one). Antithetic permutation pairs (a random order
            and its reverse) are added while their distinct coalitions fit; at least one
            permutation is used, so ``budget >= k`` is required.
        seed: Seed of the permutations (the same permutations for every image).
        groups: ``"owen"`` only: a group id per region (the tree's first level; default:
            every region its own group, i.e. Shapley values). ``"owen"`` with
            ``budget=None`` is exact (K <= 10).

    Returns:
        A :class:`CoalitionPlan` (cached: do not modify its tensors).
    """
    _check(estimator, k, budget)
    if estimator == "owen":
        return _cached(estimator, k, budget, int(seed), _check_groups(groups, k))
    return _cached(estimator, k, budget if estimator == "sampled_shapley" else None, int(seed))


def estimate(
    estimator: str,
    k: int,
    value: Callable[[Tensor], Tensor],
    budget: int | None = None,
    seed: int = 0,
    groups: Any = None,
) -> Tensor:
    """Region values of a game given as a function of hidden sets.

    Args:
        estimator, k, budget, seed, groups: See :func:`plan`.
        value: ``hidden (R, K) bool -> (R,)`` values (True = region hidden), called once
            with every coalition of the plan (row 0 hides nothing).

    Returns:
        ``(K,)`` region values.
    """
    p = plan(estimator, k, budget, seed, groups)
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


def check_settings(
    estimator: str, n_clusters: Sequence[int], budget: Any, n_groups: Any, random_state: int
) -> int | None:
    """CCI's estimator settings checked together; returns the budget to use (``"default"``:
    :data:`DEFAULT_BUDGET` for the budgeted estimators, None otherwise)."""
    if isinstance(budget, str) and budget == "default":
        budget = DEFAULT_BUDGET if estimator in BUDGETED else None
    elif budget is not None and estimator not in BUDGETED:
        raise ValueError(f"budget is only used by estimators {BUDGETED}, got {estimator!r}")
    if n_groups is not None and (
        estimator != "owen" or isinstance(n_groups, bool) or not isinstance(n_groups, int)
        or n_groups < 1
    ):  # fmt: skip
        raise ValueError(
            f"n_groups is an int >= 1 for estimator='owen', got {n_groups!r} with "
            f"estimator={estimator!r}"
        )
    for k in n_clusters:  # validates estimator, K and budget
        plan(estimator, k, budget, random_state)
    return budget
