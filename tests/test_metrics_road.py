"""ROAD: noisy linear imputation against a dense solve, MoRF/LeRF plumbing, invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from captum_clip.metrics import RoadResult, noisy_linear_impute, road

WEIGHTS = {
    (dy, dx): (1 / 6 if dy == 0 or dx == 0 else 1 / 12) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
}
del WEIGHTS[(0, 0)]


def dense_impute(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Written pixel by pixel: x_i * sum(w_valid) - sum_{removed j} w x_j = sum_{kept k} w v_k."""
    c, h, w = img.shape
    coords = [(y, x) for y in range(h) for x in range(w) if removed[y, x]]
    index = {p: i for i, p in enumerate(coords)}
    a = np.zeros((len(coords), len(coords)))
    b = np.zeros((len(coords), c))
    for i, (y, x) in enumerate(coords):
        for (dy, dx), wt in WEIGHTS.items():
            ny, nx = y + dy, x + dx
            if not (0 <= ny < h and 0 <= nx < w):
                continue
            a[i, i] += wt
            if removed[ny, nx]:
                a[i, index[(ny, nx)]] -= wt
            else:
                b[i] += wt * img[:, ny, nx]
    sol = np.linalg.solve(a, b)
    out = img.copy()
    for i, (y, x) in enumerate(coords):
        out[:, y, x] = sol[i]
    return out


def test_imputation_equals_dense_solution():
    gen = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 3, 6, 5, generator=gen, dtype=torch.float64)
    removed = torch.rand(3, 6, 5, generator=gen) < torch.tensor([0.3, 0.6, 0.9]).view(3, 1, 1)
    removed[:, 0, 0] = False  # keep at least one pixel
    removed[2, 1:, :] = True  # a big connected hole touching the borders
    out = noisy_linear_impute(imgs, removed, noise_std=0.0)
    for i in range(3):
        ref = dense_impute(imgs[i].numpy(), removed[i].numpy())
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-10)
    # batched (block-diagonal) solve == one image at a time
    single = torch.cat(
        [noisy_linear_impute(imgs[i : i + 1], removed[i : i + 1], noise_std=0.0) for i in range(3)]
    )
    torch.testing.assert_close(out, single, atol=1e-12, rtol=0)
    # kept pixels untouched; a removed pixel is the weighted mean of its neighbours
    torch.testing.assert_close(
        out[~removed[:, None].expand_as(out)], imgs[~removed[:, None].expand_as(imgs)]
    )
    checked = 0
    for y, x in removed[1].nonzero().tolist():
        nb = [
            (out[1, :, y + dy, x + dx], wt)
            for (dy, dx), wt in WEIGHTS.items()
            if 0 <= y + dy < 6 and 0 <= x + dx < 5
        ]
        torch.testing.assert_close(
            out[1, :, y, x], sum(v * wt for v, wt in nb) / sum(wt for _, wt in nb)
        )
        checked += 1
    assert checked > 5


def test_imputation_noise_is_seeded_and_local():
    gen = torch.Generator().manual_seed(1)
    imgs = torch.rand(2, 3, 20, 20, generator=gen, dtype=torch.float64)
    removed = torch.rand(2, 20, 20, generator=gen) < 0.5
    exact = noisy_linear_impute(imgs, removed, noise_std=0.0)
    noisy = noisy_linear_impute(imgs, removed, noise_std=0.1, seed=7)
    diff = noisy - exact
    mask = removed[:, None].expand_as(diff)
    assert (diff[~mask] == 0).all()
    assert abs(diff[mask].std().item() - 0.1) < 0.01 and abs(diff[mask].mean().item()) < 0.01
    torch.testing.assert_close(noisy, noisy_linear_impute(imgs, removed, noise_std=0.1, seed=7))
    torch.testing.assert_close(
        noisy[1:], noisy_linear_impute(imgs[1:], removed[1:], noise_std=0.1, seed=[8])
    )


def region_model(region):
    def f(z):
        return (z * region).sum(dim=(1, 2, 3))[:, None] / (z.shape[1] * region.sum())

    return f


def test_road_equals_reference_loop_and_orders_oracle():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 10, 10, generator=gen, dtype=torch.float64)
    region = torch.zeros(10, 10, dtype=torch.float64)
    region[2:7, 3:8] = 1
    x[:, :, region.bool()] += 1  # the object is brighter than its surround
    f = region_model(region)
    a = region + 0.1 * torch.rand(10, 10, generator=gen, dtype=torch.float64)
    a = a.expand(2, 10, 10)
    pct = (10, 25, 50, 80)
    res = road(f, x, a, target=0, percentages=pct, noise_std=0.0, max_examples_per_batch=3)
    assert isinstance(res, RoadResult) and res.morf.shape == (2, 4)
    for b in range(2):
        order = torch.argsort(a[b].flatten(), descending=True)
        for j, p in enumerate(pct):
            k = math.floor(p / 100 * 100 + 0.5)
            for which, idx in (("morf", order[:k]), ("lerf", order[100 - k :])):
                removed = np.zeros(100, bool)
                removed[idx.numpy()] = True
                img = dense_impute(x[b].numpy(), removed.reshape(10, 10))
                val = f(torch.from_numpy(img)[None])[0, 0].item()
                assert getattr(res, which)[b, j].item() == pytest.approx(val, abs=1e-9)
    torch.testing.assert_close(res.combined, (res.lerf - res.morf) / 2)
    assert (res.combined > 0).all()  # the oracle map is faithful ...
    rev = road(f, x, -a, target=0, percentages=pct, noise_std=0.0)
    assert (rev.combined < 0).all()  # ... its reverse is not
    torch.testing.assert_close(res.score, res.combined.mean(1))


def test_road_batch_split_and_seed_invariance():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 8, 8, generator=gen, dtype=torch.float64)
    weight = torch.randn(3 * 64, 4, generator=gen, dtype=torch.float64)

    def f(z):
        return z.flatten(1) @ weight

    a = torch.rand(3, 3, 8, 8, generator=gen).round()  # many ties
    kw = dict(target=[0, 1, 3], percentages=(20, 60), noise_std=0.05, seed=4)
    ref = road(f, x, a, **kw)
    for m in (1, 5):
        got = road(f, x, a, max_examples_per_batch=m, **kw)
        torch.testing.assert_close(got.morf, ref.morf)
        torch.testing.assert_close(got.lerf, ref.lerf)
    assert not torch.equal(road(f, x, a, **{**kw, "seed": 5}).morf, ref.morf)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(percentages=(10, 100)), ValueError, r"\[0, 100\)"),
        (dict(percentages=()), ValueError, "non-empty"),
        (dict(score="acc"), ValueError, "score must be one of"),
        (dict(target=4), ValueError, "target must be in"),
        (dict(attributions=torch.zeros(2, 5, 5)), ValueError, "attributions must have shape"),
    ],
)
def test_road_bad_inputs(kwargs, exc, match):
    x = torch.rand(2, 3, 6, 6)
    args = dict(attributions=torch.rand(2, 6, 6), target=0)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        road(lambda z: z.flatten(1)[:, :4], x, args.pop("attributions"), **args)


def test_impute_bad_inputs():
    imgs = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="at least one pixel"):
        noisy_linear_impute(imgs, torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        noisy_linear_impute(imgs, torch.ones(1, 4, 4))
