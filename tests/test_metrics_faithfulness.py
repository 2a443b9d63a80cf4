"""Deletion / insertion curves against a straightforward per-step loop and closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from captum_clip.metrics import (
    GRAD_ECLIP,
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    RISE,
    Protocol,
    curve_auc,
    deletion_auc,
    deletion_curve,
    insertion_auc,
    insertion_curve,
    plot_curves,
)

B, C, H, W = 3, 3, 8, 8


def linear_model(n_out: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(C * H * W, n_out, generator=gen, dtype=torch.float64)
    return lambda x: torch.tanh(x.flatten(1) @ weight / 8) * 3


def data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    a = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)  # continuous: no ties
    return x, a


# ----------------------------------------------------------------- straightforward reference
def ref_baseline(name, x, seed=0):
    mean = torch.tensor(OPENAI_DATASET_MEAN, dtype=x.dtype).view(1, C, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, dtype=x.dtype).view(1, C, 1, 1)
    if name == "zeros":
        return torch.zeros_like(x)
    if name == "black":
        return (torch.zeros_like(x) - mean) / std
    if name == "noise":
        u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
        return (u - mean) / std
    if name == "blur":  # scipy convolution with zero padding, kernel written out by hand
        r = np.arange(11) - 5
        g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 5.0**2))
        g /= g.sum()
        out = np.stack(
            [
                [scipy.ndimage.convolve(ch, g, mode="constant", cval=0.0) for ch in img]
                for img in x.numpy()
            ]
        )
        return torch.from_numpy(out)
    raise AssertionError(name)


def ref_curve(f, x, a, target, base, mode, n_steps, max_fraction=1.0, patch=1, score="logit"):
    """One image, one step, one forward at a time."""
    amap = a.sum(1)
    gh, gw = H // patch, W // patch
    units = amap.reshape(B, gh, patch, gw, patch).sum((2, 4)).reshape(B, -1)
    n = gh * gw
    fr, rows = [], []
    for b in range(B):
        order = torch.argsort(units[b], descending=True).tolist()
        row = []
        for t in range(n_steps + 1):
            k = math.floor(t * max_fraction * n / n_steps + 0.5)
            if b == 0:
                fr.append(k / n)
            img = (x[b] if mode == "deletion" else base[b]).clone()
            for u in order[:k]:
                i, j = divmod(u, gw)
                win = (
                    slice(None),
                    slice(i * patch, (i + 1) * patch),
                    slice(j * patch, (j + 1) * patch),
                )
                img[win] = (base[b] if mode == "deletion" else x[b])[win]
            out = f(img[None])[0]
            if score == "logit":
                row.append(out[target[b]].item())
            elif score == "prob":
                row.append(torch.softmax(out, 0)[target[b]].item())
            else:
                kk = int(score[3:])  # tied outputs: average over the positions they share
                above = sum(1 for v in out.tolist() if v > out[target[b]])
                tied = sum(1 for v in out.tolist() if v == out[target[b]])
                row.append(sum(p < kk for p in range(above, above + tied)) / tied)
        rows.append(row)
    return torch.tensor(fr, dtype=torch.float64), torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("unit,patch", [("pixel", 1), ("patch", 2)])
@pytest.mark.parametrize("baseline", ["zeros", "black", "blur", "noise"])
def test_curve_equals_per_step_loop(mode, unit, patch, baseline):
    x, a = data()
    f = linear_model()
    target = torch.tensor([0, 3, 5])
    fn = deletion_curve if mode == "deletion" else insertion_curve
    n_units = (H // patch) * (W // patch)
    n_steps = 7
    fr, sc = fn(
        f,
        x,
        a,
        target=target,
        baselines=baseline,
        n_steps=n_steps,
        max_fraction=0.75,
        unit=unit,
        patch_size=patch,
        seed=3,
        max_examples_per_batch=5,
    )
    base = ref_baseline(baseline, x, seed=3)
    rfr, rsc = ref_curve(f, x, a, target, base, mode, n_steps, 0.75, patch)
    assert sc.shape == (B, n_steps + 1) and fr.shape == (n_steps + 1,)
    torch.testing.assert_close(fr, rfr, rtol=0, atol=1e-12)
    torch.testing.assert_close(sc, rsc, rtol=0, atol=1e-6)
    assert fr[-1] == round(0.75 * n_units) / n_units
    auc_fn = deletion_auc if mode == "deletion" else insertion_auc
    auc = auc_fn(
        f,
        x,
        a,
        target=target,
        baselines=baseline,
        n_steps=n_steps,
        max_fraction=0.75,
        unit=unit,
        patch_size=patch,
        seed=3,
    )
    expected = np.trapezoid(rsc.numpy(), rfr.numpy(), axis=1) / 0.75
    np.testing.assert_allclose(auc.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("score", ["prob", "top1", "top5"])
def test_scores_equal_loop(score):
    x, a = data(1)
    f = linear_model(n_out=8)
    target = torch.tensor([1, 2, 7])
    _, sc = deletion_curve(f, x, a, target=target, baselines="zeros", n_steps=5, score=score)
    _, rsc = ref_curve(f, x, a, target, torch.zeros_like(x), "deletion", 5, score=score)
    torch.testing.assert_close(sc, rsc, rtol=0, atol=1e-6)


def test_tensor_baseline_and_attribution_shapes_agree():
    x, a = data(2)
    f = linear_model()
    kw = dict(target=1, n_steps=6, baselines=torch.full((1, C, 1, 1), 0.3, dtype=torch.float64))
    ref = deletion_curve(f, x, a.sum(1), **kw)[1]
    torch.testing.assert_close(deletion_curve(f, x, a, **kw)[1], ref)
    torch.testing.assert_close(deletion_curve(f, x, a.sum(1, keepdim=True), **kw)[1], ref)
    torch.testing.assert_close(deletion_curve(f, x, a.sum(1), **{**kw, "baselines": 0.3})[1], ref)


# ----------------------------------------------------------------- ties, oracle, normalisation
def top_half_model(x):
    """Output = mean of the top half of the image: pixel order (row-major) would matter."""
    return x[:, :, : x.shape[2] // 2].mean(dim=(1, 2, 3))[:, None]


def test_constant_map_scores_like_random_maps():
    x = torch.ones(4, 3, 8, 8, dtype=torch.float64)
    kw = dict(target=0, baselines="zeros", n_steps=16)
    const = torch.stack(
        [deletion_auc(top_half_model, x, torch.zeros(4, 8, 8), seed=s, **kw) for s in range(10)]
    )
    gen = torch.Generator().manual_seed(0)
    rand = torch.stack(
        [
            deletion_auc(top_half_model, x, torch.rand(4, 8, 8, generator=gen), **kw)
            for _ in range(10)
        ]
    )
    index_order = -torch.arange(64.0).view(1, 8, 8).expand(4, 8, 8)  # ties broken "by position"
    by_position = deletion_auc(top_half_model, x, index_order, **kw)
    # expected curve 1 - fraction -> AUC 0.5; position order gives 0.25 (top half first)
    torch.testing.assert_close(by_position, torch.full((4,), 0.25, dtype=torch.float64))
    assert abs(const.mean().item() - 0.5) < 0.03
    assert abs(const.mean().item() - rand.mean().item()) < 0.03
    assert const.std() > 0  # different seeds -> different tie orders


def test_oracle_is_best_and_reversed_is_worst_bruteforce():
    # 2x2 image, output = mean of a known region (two pixels), every ordering enumerated
    gen = torch.Generator().manual_seed(0)
    x = 1 + torch.rand(1, 3, 2, 2, generator=gen, dtype=torch.float64)
    region = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)

    def f(z):
        return (z * region).sum(dim=(2, 3)).mean(1, keepdim=True) / region.sum()

    kw = dict(target=0, baselines="zeros", n_steps=4)
    aucs = []
    for perm in itertools.permutations(range(4)):
        amap = torch.empty(4, dtype=torch.float64)
        amap[list(perm)] = torch.arange(4, 0, -1, dtype=torch.float64)
        aucs.append(deletion_auc(f, x, amap.view(1, 2, 2), **kw).item())
    oracle = (x[0].mean(0) * region)[None]  # each pixel's contribution to the output
    best = deletion_auc(f, x, oracle, **kw).item()
    worst = deletion_auc(f, x, -oracle, **kw).item()
    assert best == pytest.approx(min(aucs), abs=1e-12)
    assert worst == pytest.approx(max(aucs), abs=1e-12)
    assert min(aucs) < max(aucs)
    ins_best = insertion_auc(f, x, oracle, **kw).item()
    ins_all = [insertion_auc(f, x, -oracle, **kw).item(), ins_best]
    assert ins_best == max(ins_all)


def test_oracle_beats_random_maps_on_larger_image():
    gen = torch.Generator().manual_seed(1)
    x = 1 + torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    region = torch.zeros(8, 8, dtype=torch.float64)
    region[2:6, 1:4] = 1

    def f(z):
        return (z * region).sum(dim=(1, 2, 3))[:, None] / (3 * region.sum())

    oracle = x.mean(1) * region
    kw = dict(target=0, baselines="zeros", n_steps=32)
    best = deletion_auc(f, x, oracle, **kw)
    worst = deletion_auc(f, x, -oracle, **kw)
    for _ in range(5):
        r = deletion_auc(f, x, torch.rand(2, 8, 8, generator=gen), **kw)
        assert (best <= r + 1e-12).all() and (worst >= r - 1e-12).all()


@pytest.mark.parametrize("max_fraction", [1.0, 0.5])
def test_auc_normalisation_closed_form(max_fraction):
    """Output = image mean of an all-ones image -> curve 1 - f, AUC = 1 - max_fraction / 2."""
    x = torch.ones(2, 3, 8, 8, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 8, 8, generator=gen)

    def f(z):
        return z.mean(dim=(1, 2, 3))[:, None]

    for n_steps in (3, 10, 16, 64, 100):
        auc = deletion_auc(
            f, x, a, target=0, baselines="zeros", n_steps=n_steps, max_fraction=max_fraction
        )
        torch.testing.assert_close(auc, torch.full((2,), 1 - max_fraction / 2, dtype=torch.float64))


def test_auc_invariant_to_step_refinement():
    """A smooth toy curve: coarse step counts give the AUC of the finest (every pixel) one."""
    gen = torch.Generator().manual_seed(3)
    x = 1 + torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    weight = torch.exp(-((yy - 6) ** 2 + (xx - 9) ** 2) / 20).double()

    def f(z):
        return torch.sigmoid((z * weight).sum(dim=(1, 2, 3)) / weight.sum() - 2)[:, None]

    a = x.mean(1) * weight + 0.05 * torch.rand(2, 16, 16, generator=gen, dtype=torch.float64)
    kw = dict(target=0, baselines="zeros")
    finest = deletion_auc(f, x, a, n_steps=256, **kw)
    for n_steps, tol in ((128, 1e-3), (64, 2e-3), (100, 2e-3), (20, 1e-2)):
        np.testing.assert_allclose(deletion_auc(f, x, a, n_steps=n_steps, **kw), finest, atol=tol)
    # the same holds over half the pixels (normalised by max_fraction = 0.5)
    half = deletion_auc(f, x, a, n_steps=128, max_fraction=0.5, **kw)
    np.testing.assert_allclose(
        deletion_auc(f, x, a, n_steps=16, max_fraction=0.5, **kw), half, atol=3e-3
    )
    fr, sc = deletion_curve(f, x, a, n_steps=64, **kw)
    torch.testing.assert_close(curve_auc(fr, sc), deletion_auc(f, x, a, n_steps=64, **kw))


# ----------------------------------------------------------------- batching, targets, protocols
def test_batch_split_and_seed_invariance():
    x, a = data(4)
    f = linear_model()
    a = a.round()  # plenty of ties
    kw = dict(target=[0, 1, 2], baselines="noise", n_steps=9, seed=5)
    ref = deletion_curve(f, x, a, **kw)[1]
    for m in (1, 4, 11):
        torch.testing.assert_close(deletion_curve(f, x, a, max_examples_per_batch=m, **kw)[1], ref)
    assert not torch.equal(deletion_curve(f, x, a, **{**kw, "seed": 6})[1], ref)


def test_target_none_and_additional_forward_args():
    x, a = data(5)
    f = linear_model()
    pred = f(x).argmax(1)
    torch.testing.assert_close(
        deletion_curve(f, x, a, n_steps=4)[1], deletion_curve(f, x, a, target=pred, n_steps=4)[1]
    )
    scale = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)

    def g(z, s, offset):
        return f(z) * s[:, None] + offset

    _, sc = deletion_curve(
        g, x, a, target=1, n_steps=4, additional_forward_args=(scale, 0.5), max_examples_per_batch=3
    )
    _, ref = deletion_curve(f, x, a, target=1, n_steps=4)
    torch.testing.assert_close(sc, ref * scale[:, None] + 0.5)


def test_protocols():
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    a = torch.randn(2, 40, 40, dtype=torch.float64)
    f = lambda z: z.flatten(1)[:, :10]  # noqa: E731
    fr, sc = deletion_curve(f, x, a, target=0, protocol=GRAD_ECLIP)
    torch.testing.assert_close(
        fr, torch.arange(11, dtype=torch.float64) * 0.05
    )  # every 10 of 100 steps
    assert set(sc.unique().tolist()) <= {0.0, 1.0}  # top-1 correctness
    fr_r, sc_r = insertion_curve(f, x, a, target=0, protocol=RISE)
    assert len(fr_r) == math.ceil(1600 / 224) + 1 and fr_r[-1] == 1  # 224 pixels per step
    assert ((sc_r >= 0) & (sc_r <= 1)).all()  # probabilities
    blur_ref = insertion_curve(
        f, x, a, target=0, baselines="blur", score="prob", n_steps=len(fr_r) - 1
    )
    torch.testing.assert_close(sc_r, blur_ref[1])
    custom = Protocol("mine", n_steps=4, max_fraction=0.5, deletion_baseline="black", score="logit")
    fr_c, _ = deletion_curve(f, x, a, target=0, protocol=custom, n_steps=2)  # explicit arg wins
    torch.testing.assert_close(fr_c, torch.tensor([0.0, 0.25, 0.5], dtype=torch.float64))
    auc = deletion_auc(f, x, a, target=0, protocol=custom)
    _, sc_c = deletion_curve(f, x, a, target=0, baselines="black", n_steps=4, max_fraction=0.5)
    fr4 = torch.arange(5, dtype=torch.float64) / 8  # 200 px per step
    torch.testing.assert_close(auc, torch.trapezoid(sc_c, fr4, dim=1) / 0.5)


def test_runs_on_tiny_open_clip_cosine_head():
    from conftest import make_tiny_vit

    model = make_tiny_vit()
    texts = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)

    def cosine(z):
        return torch.nn.functional.normalize(model.encode_image(z), dim=-1) @ texts.T

    x = torch.randn(2, 3, 32, 32)
    a = torch.randn(2, 3, 32, 32)
    fr, sc = deletion_curve(
        cosine, x, a, target=[0, 1], unit="patch", patch_size=8, n_steps=4, max_examples_per_batch=4
    )
    with torch.no_grad():
        ref = cosine(x)
    torch.testing.assert_close(sc[:, 0], ref[[0, 1], [0, 1]], atol=1e-5, rtol=0)
    assert (sc.abs() <= 1 + 1e-5).all() and sc.device == x.device and sc.dtype == torch.float32


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(inputs=torch.zeros(3, 8, 8)), ValueError, r"\(B, C, H, W\)"),
        (dict(inputs=np.zeros((3, 3, 8, 8))), TypeError, "torch.Tensor"),
        (dict(inputs=torch.zeros(3, 3, 8, 8, dtype=torch.long)), TypeError, "floating"),
        (dict(attributions=torch.zeros(3, 2, 8, 8)), ValueError, "attributions must have shape"),
        (dict(attributions=torch.full((3, 8, 8), float("nan"))), ValueError, "NaN"),
        (dict(target=9), ValueError, r"target must be in \[0, 5\]"),
        (dict(target=[0, 1]), ValueError, r"one entry per example \(3\)"),
        (dict(target=0.5), TypeError, "integer"),
        (dict(baselines="white"), ValueError, "baselines must be one of"),
        (dict(baselines=torch.zeros(2, 3, 8, 8)), ValueError, "does not broadcast"),
        (dict(unit="patch", patch_size=3), ValueError, "divide the image size"),
        (dict(unit="superpixel"), ValueError, "unit must be one of"),
        (dict(max_fraction=1.5), ValueError, "max_fraction"),
        (dict(n_steps=0), ValueError, "n_steps"),
        (dict(score="top5"), ValueError, "at least 5 outputs"),
        (dict(score="cosine"), ValueError, "score must be one of"),
        (dict(protocol="RISE"), TypeError, "Protocol"),
        (dict(max_examples_per_batch=0), ValueError, "max_examples_per_batch"),
        (dict(baselines="black", mean=(0.5,)), ValueError, "3 entries"),
    ],
)
def test_bad_inputs(kwargs, exc, match):
    x, a = data()
    f = linear_model(n_out=6) if kwargs.get("score") != "top5" else linear_model(n_out=3)
    args = dict(inputs=x, attributions=a, target=0)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        deletion_curve(f, args.pop("inputs"), args.pop("attributions"), **args)


def test_plot_curves_agg():
    x, a = data()
    f = linear_model()
    curves = {
        "map": deletion_curve(f, x, a, target=0, n_steps=8),
        "random": deletion_curve(f, x, -a, target=0, n_steps=8),
    }
    fig = plot_curves(curves, title="deletion")
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    auc = curve_auc(*curves["map"]).mean().item()
    assert ax.get_legend().get_texts()[0].get_text() == f"map (AUC {auc:.3f})"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), curves["map"][1].mean(0).numpy())
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_curves({})


def test_protocol_validation_and_progress(capsys):
    with pytest.raises(ValueError, match="units_per_step"):
        Protocol("bad", n_steps=None)
    with pytest.raises(ValueError, match="score_every"):
        Protocol("bad", score_every=0)
    x, a = data()
    f = linear_model(n_out=12)
    _, with_bar = deletion_curve(f, x, a, target=0, n_steps=4, score="top10", show_progress=True)
    _, ref = ref_curve(
        f, x, a, torch.tensor([0, 0, 0]), torch.zeros_like(x), "deletion", 4, score="top10"
    )
    torch.testing.assert_close(with_bar, ref, rtol=0, atol=1e-6)
    assert "deletion" in capsys.readouterr().err


def test_normalisation_constants_match_open_clip():
    from open_clip.constants import OPENAI_DATASET_MEAN as M
    from open_clip.constants import OPENAI_DATASET_STD as S

    assert tuple(OPENAI_DATASET_MEAN) == tuple(M) and tuple(OPENAI_DATASET_STD) == tuple(S)
