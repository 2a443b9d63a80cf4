"""sMPRT, eMPRT, local Lipschitz and RIS (``captum_clip.metrics.trust``) against Quantus 0.6
on the same toy model, inputs and noise draws; closed forms; the edge-map control on the
bundled testbed model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_metrics_trust import Toy, _data, grad_x_input

from captum_clip.methods import build, pixel_map
from captum_clip.metrics import trust
from captum_clip.models import ClipClassifier, load_clip
from captum_clip.testbed import shapes

quantus = pytest.importorskip("quantus")
if not hasattr(np, "trapz"):  # quantus 0.6.0 calls np.trapz, removed in numpy 2.4
    np.trapz = np.trapezoid

IXG = {"method": "InputXGradient"}


def _toy():
    model = Toy().eval()
    names = [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")]
    layers = [m for _, m in model.named_modules() if hasattr(m, "reset_parameters")]
    return model, names, layers, {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("order", "last_only"), [("bottom_up", False), ("top_down", True)])
def test_smooth_model_randomisation_equals_quantus_smprt(order, last_only):
    """Quantus' SmoothMPRT explains with ``quantus.explain`` (its explain_func is only
    checked) and compares with ``a_batch``: given our smoothed original as ``a_batch`` and
    the same global seed, its noise draws are ours, map for map."""
    x, y = _data()
    model, names, layers, before = _toy()

    def explain_on(m):
        return lambda i, t: torch.as_tensor(quantus.explain(m, i.numpy(), np.asarray(t), **IXG))

    ours = trust.smooth_model_randomisation(
        explain_on, model, x, torch.as_tensor(y), layers=layers, n_noise=5, order=order,
        last_only=last_only,
    )  # fmt: skip
    np.random.seed(42)
    q = quantus.SmoothMPRT(
        nr_samples=5, layer_order=order, skip_layers=last_only, disable_warnings=True
    )(
        model=model, x_batch=x.numpy(), y_batch=y, a_batch=ours["original"].numpy(),
        explain_func=quantus.explain, explain_func_kwargs=IXG,
    )  # fmt: skip
    np.testing.assert_allclose(q["original"], 1.0, atol=1e-12)  # the same first draws
    steps = names if order == "bottom_up" else names[::-1]
    keys = ["3"] if last_only else ["1", "2", "3"]
    assert list(ours) == ["original", *keys]
    for key in keys:
        np.testing.assert_allclose(ours[key].numpy(), q[steps[int(key) - 1]], atol=1e-12)
    assert ours[keys[-1]].max() < 0.5  # a real fall, not a constant
    assert _unchanged(model, before)


def test_efficient_model_randomisation_equals_quantus_emprt():
    x, y = _data()
    model, _, layers, before = _toy()
    q = quantus.EfficientMPRT(disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y, a_batch=grad_x_input(model, x.numpy(), y),
        explain_func=grad_x_input,
    )  # fmt: skip
    ours = trust.efficient_model_randomisation(
        lambda m: lambda i, t: torch.as_tensor(grad_x_input(m, i, t)),
        model, x, torch.as_tensor(y), layers=layers,
    )  # fmt: skip
    np.testing.assert_allclose(ours.numpy(), q, rtol=1e-10)
    assert ours.abs().min() > 0.01
    assert _unchanged(model, before)
    a = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    ref = [quantus.functions.complexity_func.discrete_entropy(r, r, n_bins=7) for r in a.numpy()]
    np.testing.assert_allclose(trust.histogram_entropy(a, n_bins=7).numpy(), ref, rtol=1e-12)
    assert trust.histogram_entropy(torch.ones(2, 5)).eq(0).all()


def test_local_lipschitz_equals_quantus():
    """The same Gaussian draws; Quantus divides the batch by one maximum by default, we each
    map by its own: equal for one example, or for a batch with per-example axes."""
    x, y = _data()
    model = Toy().eval()
    a = grad_x_input(model, x.numpy(), y)

    def explain(i, t):
        return torch.as_tensor(grad_x_input(model, i, t))

    for b, kwargs in ((1, {}), (3, {"normalise_func_kwargs": {"normalise_axes": [1, 2, 3]}})):
        np.random.seed(42)
        q = quantus.LocalLipschitzEstimate(nr_samples=10, disable_warnings=True, **kwargs)(
            model=model, x_batch=x[:b].numpy(), y_batch=y[:b], a_batch=a[:b].copy(),
            explain_func=grad_x_input,
        )  # fmt: skip
        ours = trust.local_lipschitz(explain, x[:b], torch.as_tensor(y[:b]), n_samples=10)
        np.testing.assert_allclose(ours.numpy(), q, rtol=1e-6)
    assert ours.min() > 0.5


def test_relative_input_stability_equals_quantus():
    """The same uniform draws. Quantus' default makes an example NaN as soon as one
    perturbation changes its prediction; ``forward_func`` leaves those perturbations out:
    equal where Quantus has a value."""
    x, y = _data()
    model = Toy().eval()
    a = grad_x_input(model, x.numpy(), y)

    def explain(i, t):
        return torch.as_tensor(grad_x_input(model, i, t))

    def ris(**kwargs):
        np.random.seed(42)
        return np.asarray(
            quantus.RelativeInputStability(nr_samples=10, disable_warnings=True, **kwargs)(
                model=model, x_batch=x.numpy(), y_batch=y, a_batch=a.copy(),
                explain_func=grad_x_input,
            )
        )  # fmt: skip

    ours = trust.relative_input_stability(explain, x, torch.as_tensor(y), n_samples=10)
    np.testing.assert_allclose(
        ours.numpy(), ris(return_nan_when_prediction_changes=False), rtol=1e-5
    )
    kept = trust.relative_input_stability(
        explain, x, torch.as_tensor(y), n_samples=10, forward_func=model
    )
    q = ris()
    assert np.isnan(q).any() and not kept.isnan().any()
    np.testing.assert_allclose(kept.numpy()[~np.isnan(q)], q[~np.isnan(q)], rtol=1e-5)
    assert (kept <= ours).all()


def test_closed_forms_with_a_perturb_func():
    """``e(x) = 2x``: Lipschitz 2 (unnormalised), RIS 1, for any perturbation."""
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64) + 0.5
    calls = []

    def shift(i):
        calls.append(1)
        return i + 0.1 * (len(calls) % 3 + 1)

    def explain(i, t):
        return 2 * i

    lip = trust.local_lipschitz(explain, x, None, n_samples=4, normalise=False, perturb_func=shift)
    np.testing.assert_allclose(lip.numpy(), 2.0, rtol=1e-9)
    ris = trust.relative_input_stability(explain, x, None, n_samples=4, perturb_func=shift)
    np.testing.assert_allclose(ris.numpy(), 1.0, rtol=1e-9)
    assert len(calls) == 8


def test_bad_arguments():
    x, _ = _data()
    model, _, layers, before = _toy()
    with pytest.raises(ValueError, match=r"order must be one of \('top_down', 'bottom_up'\)"):
        trust.smooth_model_randomisation(lambda m: None, model, x, 0, layers=layers, order="up")
    with pytest.raises(ValueError, match="n_noise must be a positive int, got 0"):
        trust.smooth_model_randomisation(lambda m: None, model, x, 0, n_noise=0)
    with pytest.raises(TypeError, match="inputs must be a floating .* got ndarray"):
        trust.local_lipschitz(lambda i, t: i, x.numpy(), None)
    with pytest.raises(ValueError, match=r"not in it: \['Linear'\]"):
        trust.efficient_model_randomisation(
            lambda m: None, model, x, 0, layers=[torch.nn.Linear(2, 2)]
        )
    with pytest.raises(ValueError, match="high must be larger than low"):
        trust.relative_input_stability(lambda i, t: i, x, None, low=0.2, high=0.1)
    with pytest.raises(TypeError, match="explain must return a tensor of maps, got list"):
        trust.local_lipschitz(lambda i, t: [i], x, None, attributions=x, n_samples=1)
    assert _unchanged(model, before)


def test_smooth_and_efficient_randomisation_flag_the_edge_map():
    """On the testbed CLIP: with the same noise for every model state the edge map's sMPRT
    correlation stays exactly 1 and its eMPRT rise exactly 0 (flagged); gradient rollout's
    correlation falls and its complexity moves."""
    model, _, tok = load_clip("testbed")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scenes = shapes.generate_scenes(4, seed=5, size=64)
    x, t = shapes.normalize(scenes.images), scenes.labels

    def rollout_on(m):
        clf = ClipClassifier(m, tok, list(shapes.CLASS_NAMES), templates=("a photo of {}",))
        method = build("rollout", clf)
        return lambda i, tt: pixel_map("rollout", method, clf, i, tt)

    kw = {"n_noise": 4, "last_only": True, "same_noise": True}
    edge = trust.smooth_model_randomisation(lambda m: trust.edge_map, model, x, t, **kw)
    assert list(edge) == ["original", "4"]  # the testbed tower's four blocks
    assert torch.equal(edge["4"], torch.ones(4, dtype=torch.float64))
    rollout = trust.smooth_model_randomisation(rollout_on, model, x, t, **kw)
    assert float(rollout["4"].mean()) < 0.5
    rise = trust.efficient_model_randomisation(lambda m: trust.edge_map, model, x, t)
    assert torch.equal(rise, torch.zeros(4, dtype=torch.float64))
    rise = trust.efficient_model_randomisation(rollout_on, model, x, t)
    assert float(rise.abs().min()) > 0.01
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
