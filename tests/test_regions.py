"""Region estimators: closed forms on toy games, efficiency, sampled -> exact, plans, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from captum_clip.attr import _regions
from captum_clip.attr._regions import ESTIMATORS, estimate, plan


def harsanyi_game(k: int, seed: int = 0):
    """A random game given by its Harsanyi dividends ``d_T`` (v(S) = sum_{T <= S} d_T).

    Its Shapley value is ``sum_{T ∋ j} d_T / |T|`` and its Banzhaf value
    ``sum_{T ∋ j} d_T / 2^(|T|-1)`` -- closed forms independent of the estimators' sums.
    """
    g = torch.Generator().manual_seed(seed)
    subsets = [frozenset(t) for r in range(1, k + 1) for t in itertools.combinations(range(k), r)]
    dividends = {t: float(torch.randn(1, generator=g)) for t in subsets}

    def v(visible: frozenset) -> float:
        return sum(d for t, d in dividends.items() if t <= visible)

    def value(hidden: torch.Tensor) -> torch.Tensor:
        rows = [frozenset(j for j in range(k) if not h[j]) for h in hidden.tolist()]
        return torch.tensor([v(r) for r in rows], dtype=torch.float64)

    shapley = torch.tensor(
        [sum(d / len(t) for t, d in dividends.items() if j in t) for j in range(k)],
        dtype=torch.float64,
    )
    banzhaf = torch.tensor(
        [sum(d / 2 ** (len(t) - 1) for t, d in dividends.items() if j in t) for j in range(k)],
        dtype=torch.float64,
    )
    return value, v, shapley, banzhaf


def brute_shapley(v, k: int) -> torch.Tensor:
    """Shapley value by averaging marginal contributions over all k! orders."""
    phi = torch.zeros(k, dtype=torch.float64)
    for order in itertools.permutations(range(k)):
        seen: frozenset = frozenset()
        for j in order:
            phi[j] += v(seen | {j}) - v(seen)
            seen = seen | {j}
    return phi / math.factorial(k)


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_exact_shapley_and_banzhaf_match_closed_forms(k):
    value, v, shapley, banzhaf = harsanyi_game(k, seed=k)
    torch.testing.assert_close(estimate("shapley", k, value), shapley)
    torch.testing.assert_close(estimate("banzhaf", k, value), banzhaf)
    if k <= 4:
        torch.testing.assert_close(estimate("shapley", k, value), brute_shapley(v, k))


def test_efficiency_identity_of_exact_shapley():
    k = 7
    value, v, _, _ = harsanyi_game(k, seed=3)
    phi = estimate("shapley", k, value)
    full, empty = v(frozenset(range(k))), v(frozenset())
    assert abs(float(phi.sum()) - (full - empty)) < 1e-10
    # Banzhaf is not efficient in general: the identity is a property, not a tautology
    assert abs(float(estimate("banzhaf", k, value).sum()) - (full - empty)) > 1e-3


def test_unanimity_game_and_redundancy():
    """v(S) = 1 iff S holds regions 0 and 1 (they are needed together); region 2 is a
    redundant copy in the max game: occlusion sees nothing, Shapley splits the credit."""

    def unanimity(hidden):
        return (~hidden[:, 0] & ~hidden[:, 1]).double()

    torch.testing.assert_close(
        estimate("shapley", 3, unanimity), torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        estimate("banzhaf", 3, unanimity), torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        estimate("sufficiency", 3, unanimity), torch.zeros(3, dtype=torch.float64)
    )

    def either(hidden):  # regions 0 and 1 carry the same evidence
        return (~hidden[:, 0] | ~hidden[:, 1]).double()

    torch.testing.assert_close(
        estimate("occlusion", 3, either), torch.zeros(3, dtype=torch.float64)
    )
    torch.testing.assert_close(
        estimate("sufficiency", 3, either), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        estimate("shapley", 3, either), torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    )


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_additive_game_every_estimator_recovers_the_weights(estimator):
    a = torch.tensor([0.3, -1.2, 2.0, 0.7, 0.0], dtype=torch.float64)

    def value(hidden):
        return ((~hidden).double() * a).sum(1) + 5.0

    torch.testing.assert_close(estimate(estimator, 5, value, budget=12, seed=1), a)


def test_sampled_shapley_converges_to_exact():
    k = 8
    value, _, shapley, _ = harsanyi_game(k, seed=5)
    errors = []
    for budget in (k, 40, 255):
        p = plan("sampled_shapley", k, budget=budget, seed=0)
        assert p.n_rows <= budget
        errors.append(
            float((estimate("sampled_shapley", k, value, budget, 0) - shapley).abs().max())
        )
    assert errors[-1] < 0.05 * float(shapley.abs().max())
    assert errors[-1] < errors[0]


def test_sampled_shapley_is_efficient_and_seeded():
    k = 12

    def val(hidden):  # a smooth non-additive game
        vis = (~hidden).double()
        return (
            torch.sqrt(vis @ torch.arange(1.0, k + 1, dtype=torch.float64)) + vis[:, 0] * vis[:, 1]
        )

    p = plan("sampled_shapley", k, budget=50, seed=3)
    assert p.n_permutations >= 2 and p.n_rows <= 50
    phi = estimate("sampled_shapley", k, val, budget=50, seed=3)
    ends = val(torch.tensor([[False] * k, [True] * k]))
    assert abs(float(phi.sum()) - float(ends[0] - ends[1])) < 1e-9
    torch.testing.assert_close(phi, estimate("sampled_shapley", k, val, budget=50, seed=3))
    assert not torch.allclose(phi, estimate("sampled_shapley", k, val, budget=50, seed=4))


def test_plan_rows_are_distinct_and_row_zero_is_unmasked():
    for est, k, rows in (("occlusion", 5, 6), ("sufficiency", 5, 7), ("shapley", 5, 32)):
        p = plan(est, k, budget=None)
        assert p.hidden.shape == (rows, k) and not p.hidden[0].any()
        assert len({tuple(r) for r in p.hidden.tolist()}) == rows
    one = plan("sufficiency", 1)  # keep-only region 0 = the unmasked image: merged
    assert one.hidden.shape == (2, 1)


def test_errors():
    with pytest.raises(ValueError, match="estimator must be one of"):
        plan("lime", 3)
    with pytest.raises(ValueError, match="K <= 10"):
        plan("shapley", 11)
    with pytest.raises(ValueError, match="needs budget"):
        plan("sampled_shapley", 5)
    with pytest.raises(ValueError, match="too small"):
        plan("sampled_shapley", 5, budget=4)
    with pytest.raises(ValueError, match="int >= 1"):
        plan("occlusion", 0)
    with pytest.raises(ValueError, match="one number per coalition"):
        estimate("occlusion", 3, lambda h: torch.zeros(2))
    assert _regions.MAX_EXACT_K == 10
