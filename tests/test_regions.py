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


def owen_closed_form(k: int, groups: tuple[int, ...], seed: int) -> torch.Tensor:
    """Owen value of a Harsanyi game: each dividend ``d_T`` is split equally among the
    groups that ``T`` meets, then equally among ``T``'s members inside each group."""
    g = torch.Generator().manual_seed(seed)
    subsets = [frozenset(t) for r in range(1, k + 1) for t in itertools.combinations(range(k), r)]
    dividends = {t: float(torch.randn(1, generator=g)) for t in subsets}
    phi = torch.zeros(k, dtype=torch.float64)
    for t, d in dividends.items():
        met = {groups[j] for j in t}
        for j in t:
            inside = sum(1 for i in t if groups[i] == groups[j])
            phi[j] += d / (len(met) * inside)
    return phi


def brute_owen(v, groups: tuple[int, ...]) -> torch.Tensor:
    """Owen value as the mean marginal contribution over all orders that keep each group's
    members together (an independent enumeration)."""
    k = len(groups)
    ids = sorted(set(groups))
    members = [[j for j in range(k) if groups[j] == g] for g in ids]
    phi, count = torch.zeros(k, dtype=torch.float64), 0
    for order in itertools.permutations(range(len(ids))):
        for inner in itertools.product(*(itertools.permutations(members[o]) for o in order)):
            seen: frozenset = frozenset()
            for j in itertools.chain(*inner):
                phi[j] += v(seen | {j}) - v(seen)
                seen = seen | {j}
            count += 1
    return phi / count


@pytest.mark.parametrize("groups", [(0, 0, 1, 1, 1, 2), (0, 1, 1, 0, 2, 2), (3, 3, 3, 3, 3, 7)])
def test_exact_owen_matches_closed_form_enumeration_and_is_efficient(groups):
    k = len(groups)
    value, v, _, _ = harsanyi_game(k, seed=2)
    phi = estimate("owen", k, value, groups=groups)
    torch.testing.assert_close(phi, owen_closed_form(k, groups, seed=2))
    torch.testing.assert_close(phi, brute_owen(v, groups))
    assert abs(float(phi.sum()) - (v(frozenset(range(k))) - v(frozenset()))) < 1e-9
    # a different tree gives different values (the hierarchy matters)
    assert not torch.allclose(phi, estimate("owen", k, value, groups=(0, 1, 2, 0, 1, 2)))


@pytest.mark.parametrize("groups", [None, (0, 1, 2, 3, 4), (0, 0, 0, 0, 0)])
def test_owen_of_a_one_level_tree_is_shapley(groups):
    value, _, shapley, _ = harsanyi_game(5, seed=4)
    torch.testing.assert_close(estimate("owen", 5, value, groups=groups), shapley)


def test_sampled_owen_converges_to_exact_and_is_efficient():
    groups = (0, 0, 0, 1, 1, 2, 2, 2)
    k = len(groups)
    value, v, _, _ = harsanyi_game(k, seed=6)
    exact = estimate("owen", k, value, groups=groups)
    errors = []
    for budget in (k, 30, 60):
        p = plan("owen", k, budget=budget, seed=0, groups=groups)
        assert p.n_rows <= budget
        phi = estimate("owen", k, value, budget, 0, groups)
        assert abs(float(phi.sum()) - (v(frozenset(range(k))) - v(frozenset()))) < 1e-9
        errors.append(float((phi - exact).abs().max()))
    # every coalition the exact values need fits in 95 rows: then the plan is exact
    full = plan("owen", k, groups=groups)
    torch.testing.assert_close(estimate("owen", k, value, full.n_rows, 0, groups), exact)
    assert errors[-1] < errors[0]
    # K=12, beyond exact enumeration: a symmetric game's value is total / K (symmetry)
    sym = (0,) * 6 + (1,) * 6
    many = estimate("owen", 12, lambda h: (~h).double().sum(1) ** 1.5, 2000, 0, sym)
    expected = torch.full((12,), 12**1.5 / 12, dtype=torch.float64)
    torch.testing.assert_close(many, expected, rtol=0.02, atol=0)
    few = estimate("owen", 12, lambda h: (~h).double().sum(1) ** 1.5, 24, 0, sym)
    assert (many - expected).abs().max() < (few - expected).abs().max()


def test_owen_errors():
    with pytest.raises(ValueError, match="group id >= 0 for each of the 3"):
        plan("owen", 3, groups=(0, 1))
    with pytest.raises(ValueError, match="give a budget"):
        plan("owen", 11)
    with pytest.raises(ValueError, match="too small"):
        plan("owen", 5, budget=4)
