"""Trust metrics (``captum_clip.metrics.trust``) against Quantus 0.6 and closed forms, and
the edge-map control that model randomisation must flag on both bundled models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from captum_clip.methods import build, pixel_map
from captum_clip.metrics import trust
from captum_clip.models import ClipClassifier, load_clip
from captum_clip.testbed import shapes

if not hasattr(np, "trapz"):  # quantus 0.6.0 calls np.trapz, removed in numpy 2.4
    np.trapz = np.trapezoid

B, C, H, W = 3, 3, 8, 8


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(C, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 16, 5)

    def forward(self, x):
        h = torch.relu(self.norm(self.conv(x)))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 4).flatten(1))


def grad_x_input(model, inputs, targets, **kw):
    """Quantus' ``explain_func`` signature; gradient x input as numpy."""
    x = torch.as_tensor(inputs).detach().clone().float().requires_grad_(True)
    out = model(x).gather(1, torch.as_tensor(targets).long()[:, None]).sum()
    (g,) = torch.autograd.grad(out, x)
    return (g * x).detach().numpy()


def _data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(B, C, H, W, generator=gen), np.array([0, 1, 2])


def test_sparseness_and_complexity_closed_forms():
    one_hot = torch.zeros(2, 1, 4, 4)
    one_hot[:, 0, 1, 2] = -3.0
    flat = torch.ones(2, 1, 4, 4)
    assert torch.allclose(trust.sparseness(one_hot), torch.tensor(15 / 16, dtype=torch.float64))
    assert torch.allclose(trust.sparseness(flat), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(
        trust.complexity(flat), torch.full((2,), math.log(16), dtype=torch.float64)
    )
    assert torch.allclose(trust.complexity(one_hot), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    with pytest.raises(ValueError, match=r"\(B, \.\.\.\) tensor"):
        trust.sparseness(torch.ones(5))


@pytest.mark.parametrize("name", ["Sparseness", "Complexity"])
def test_sparseness_and_complexity_equal_quantus(name):
    quantus = pytest.importorskip("quantus")
    x, y = _data()
    a = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(1))
    q = getattr(quantus, name)(disable_warnings=True)(
        model=None, x_batch=x.numpy(), y_batch=y, a_batch=a.numpy().copy()
    )
    ours = getattr(trust, name.lower())(a)
    np.testing.assert_allclose(ours.numpy(), np.asarray(q), rtol=1e-5)


def test_model_randomisation_equals_quantus_mprt_and_leaves_the_model():
    quantus = pytest.importorskip("quantus")
    x, y = _data()
    model = Toy().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = grad_x_input(model, x.numpy(), y)
    q = quantus.MPRT(disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y, a_batch=a.copy(), explain_func=grad_x_input
    )
    layers = [m for _, m in model.named_modules() if hasattr(m, "reset_parameters")]
    ours = trust.model_randomisation(
        lambda m: lambda i, t: torch.as_tensor(grad_x_input(m, i, t)),
        model, x, torch.as_tensor(y), layers=layers,
    )  # fmt: skip
    names = [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]
    assert list(ours) == ["original", "1", "2", "3"]
    for k, layer in enumerate(names, start=1):
        np.testing.assert_allclose(ours[str(k)].numpy(), np.asarray(q[layer]), atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="not in it: \\['Linear'\\]"):
        trust.model_randomisation(lambda m: None, model, x, 0, layers=[torch.nn.Linear(2, 2)])


def test_random_logit_equals_quantus():
    """The same off-class draw; Spearman for any batch. Quantus divides the whole batch by
    one maximum before SSIM (its default normalise axes), we each example by its own: the
    SSIM agrees for one example."""
    quantus = pytest.importorskip("quantus")
    x, y = _data()
    model = Toy().eval()
    a = grad_x_input(model, x.numpy(), y)

    def explain(i, t):
        return torch.as_tensor(grad_x_input(model, i, t))

    spearman = quantus.similarity_func.correlation_spearman
    q = quantus.RandomLogit(num_classes=5, similarity_func=spearman, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y, a_batch=a.copy(), explain_func=grad_x_input
    )
    ours = trust.random_logit(explain, x, torch.as_tensor(y), 5, similarity="spearman")
    np.testing.assert_allclose(ours.numpy(), np.asarray(q), atol=1e-6)
    q1 = quantus.RandomLogit(num_classes=5, disable_warnings=True)(
        model=model, x_batch=x[:1].numpy(), y_batch=y[:1], a_batch=a[:1].copy(),
        explain_func=grad_x_input,
    )  # fmt: skip
    ours1 = trust.random_logit(explain, x[:1], torch.as_tensor(y[:1]), 5)
    np.testing.assert_allclose(ours1.numpy(), np.asarray(q1), atol=1e-5)


def test_rank_correlation_is_scipys_and_seed_stability():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 30, generator=gen), torch.randn(4, 30, generator=gen)
    b[:, :5] = 0.0  # ties
    ref = [scipy.stats.spearmanr(a[i], b[i])[0] for i in range(4)]
    np.testing.assert_allclose(trust.rank_correlation(a, b).numpy(), ref, atol=1e-12)
    fixed = trust.seed_stability(lambda s: lambda i, t: i * 2.0, a.view(4, 1, 5, 6), None)
    assert torch.allclose(fixed, torch.ones(4, dtype=torch.float64))
    noisy = trust.seed_stability(
        lambda s: lambda i, t: torch.randn(i.shape, generator=torch.Generator().manual_seed(s)),
        a.view(4, 1, 5, 6), None, seeds=(0, 1, 2, 3),
    )  # fmt: skip
    assert noisy.abs().max() < 0.6
    with pytest.raises(ValueError, match="at least 2 seeds"):
        trust.seed_stability(lambda s: None, a, None, seeds=(0,))


@pytest.mark.parametrize("variant", ["default", "shortcut"])
def test_randomisation_flags_the_edge_map_and_passes_gradient_methods(variant):
    """Re-initialising every block of the bundled model leaves the edge map exactly as it
    was (correlation 1: flagged) and moves the maps of the gradient methods (final
    correlation < 0.9 on average over the scenes)."""
    model, _, tok = load_clip("testbed", variant=variant)
    scenes = shapes.generate_scenes(4, seed=5, size=64)
    x, t = shapes.normalize(scenes.images), scenes.labels
    names = list(shapes.CLASS_NAMES)

    def builder(name):
        def build_on(m):
            if name == "edge":
                return trust.edge_map
            clf = ClipClassifier(m, tok, names, templates=("a photo of {}",))
            method = build(name, clf)
            return lambda i, tt: pixel_map(name, method, clf, i, tt)

        return build_on

    edge = trust.model_randomisation(builder("edge"), model, x, t)
    assert all(torch.allclose(v, torch.ones(4, dtype=torch.float64)) for k, v in edge.items()
               if k != "original")  # fmt: skip
    for name in ("attnlrp", "rollout", "legrad", "gradcam"):
        res = trust.model_randomisation(builder(name), model, x, t)
        assert len(res) == 1 + 4  # the testbed tower's four blocks, top first
        assert float(res["4"].mean()) < 0.9, name
