"""Cross-modal interaction indices of a similarity game, from per-side embeddings.

The game of :mod:`captum_clip.attr.cross_games` has two kinds of players, image regions
``R`` (``K`` of them) and caption words ``W`` (``M``), and the value
``v(S, T) = g(S) . f(T)``: the image embedding with only the regions in ``S`` visible,
dotted with the text embedding with only the words in ``T`` kept (both L2-normalised:
the cosine). Because ``v`` is bilinear in the two sides, the discrete second derivative
of a cross pair ``(i in R, j in W)`` factorises,

    Delta_ij v(S, T) = [g(S + i) - g(S)] . [f(T + j) - f(T)],

so every index below needs only the ``2^K`` (or sampled) image embeddings and the
``2^M`` text embeddings -- one batched forward per side -- never the ``2^(K+M)`` joint
coalitions:

* **p-weighted Banzhaf interaction** (Banzhaf at ``p = 1/2``; FIxLIP's index): the
  coalition weight ``p^|S+T| (1-p)^(n-2-|S+T|)`` is a product over the sides, hence
  ``I_ij = a_i . b_j`` with ``a_i = E_{S ~ Bern(p)}[g(S + i) - g(S)]`` the *vector*
  weighted Banzhaf value of region ``i`` (``b_j`` likewise for word ``j``).
* **Shapley interaction index** (Grabisch & Roubens): the weight
  ``|S+T|! (n-|S+T|-2)! / (n-1)!`` depends on the total size only, so the marginal
  vectors are summed per coalition size on each side first:
  ``I_ij = sum_{s,t} w(s+t) G_i[s] . F_j[t]``.

Sampled (``weighted_banzhaf`` with a budget): coalitions drawn per side with every
player in with probability ``p``; ``a_i`` is estimated by maximum sample reuse (MSR,
Wang & Jia 2023: mean of ``g`` over the samples containing ``i`` minus the mean over
those without), unbiased for the vector weighted Banzhaf value, and combined by the same
product identity.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "all_coalitions",
    "banzhaf_weights",
    "msr_values",
    "sample_coalitions",
    "shapley_interactions",
    "size_marginals",
]


def all_coalitions(n: int) -> Tensor:
    """``(2^n, n)`` bool: every subset of ``n`` players (row ``r`` = bits of ``r``)."""
    r = torch.arange(2**n)
    return (r[:, None] >> torch.arange(n)[None, :]) & 1 == 1


def banzhaf_weights(coalitions: Tensor, p: float = 0.5) -> Tensor:
    """``(n, R)`` matrix ``M`` with ``a = M @ g`` the exact p-weighted Banzhaf value
    vectors from the values ``g`` ``(R, ...)`` of :func:`all_coalitions` rows."""
    c = coalitions.double()
    n = c.shape[1]
    size = c.sum(1)  # |S|
    inside = p ** (size - 1) * (1 - p) ** (n - size)  # S = S' + i, |S'| = size - 1
    outside = p**size * (1 - p) ** (n - 1 - size)  # S' = S, i not in S
    return torch.where(c.T > 0, inside[None, :], -outside[None, :])


def size_marginals(coalitions: Tensor, values: Tensor) -> Tensor:
    """``(n, n, D)``: ``G[i, s] = sum_{S not containing i, |S| = s} [g(S + i) - g(S)]``.

    Args:
        coalitions: ``(2^n, n)`` from :func:`all_coalitions`.
        values: ``(2^n, D)`` the value vector of every row.
    """
    c = coalitions
    n = c.shape[1]
    size = c.sum(1)
    out = values.new_zeros(n, n, values.shape[1])
    for i in range(n):
        for s in range(n):
            plus = c[:, i] & (size == s + 1)
            minus = ~c[:, i] & (size == s)
            out[i, s] = values[plus].sum(0) - values[minus].sum(0)
    return out


def shapley_interactions(g_marg: Tensor, f_marg: Tensor) -> Tensor:
    """``(K, M)`` Shapley interaction indices of the cross pairs.

    Args:
        g_marg: ``(K, K, D)`` :func:`size_marginals` of the image side.
        f_marg: ``(M, M, D)`` of the text side.
    """
    k, m = g_marg.shape[0], f_marg.shape[0]
    n = k + m
    total = torch.arange(k)[:, None] + torch.arange(m)[None, :]  # s + t
    w = torch.tensor(
        [
            math.factorial(s) * math.factorial(n - s - 2) / math.factorial(n - 1)
            for s in range(n - 1)
        ],
        dtype=g_marg.dtype,
    )[total]  # (K_sizes, M_sizes)
    dots = torch.einsum("isd,jtd->ijst", g_marg, f_marg)  # (K, M, K_sizes, M_sizes)
    return (dots * w.to(dots.device)).sum((2, 3))


def sample_coalitions(n: int, budget: int, p: float, generator: torch.Generator) -> Tensor:
    """``(budget + 2, n)`` bool: the full and the empty coalition, then ``budget`` draws
    with every player in with probability ``p``."""
    draws = torch.rand(budget, n, generator=generator) < p
    ends = torch.stack([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    return torch.cat([ends, draws])


def msr_values(coalitions: Tensor, values: Tensor) -> Tensor:
    """``(n, D)`` MSR estimate of the vector weighted Banzhaf values (module docstring)
    from the sampled rows (the first two rows, full and empty, are left out).

    A player that is in every sample or in none gets 0 (no estimate)."""
    c = coalitions[2:].to(values.dtype)
    v = values[2:]
    n_in = c.sum(0)  # (n,)
    n_out = c.shape[0] - n_in
    mean_in = (c.T @ v) / n_in.clamp_min(1)[:, None]
    mean_out = ((1 - c).T @ v) / n_out.clamp_min(1)[:, None]
    ok = ((n_in > 0) & (n_out > 0))[:, None]
    return torch.where(ok, mean_in - mean_out, torch.zeros_like(mean_in))
