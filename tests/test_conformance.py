"""Captum conformance of every registered attribution method (``captum_clip.methods``).

One parametrised test per Captum tool, over the whole registry: a method that is
registered gets every check, so a new one cannot land without them. Each check compares
with a computation by hand (the same noise, the same perturbations, one image at a time),
not only shapes. ``interactions`` (a ``(B, S, 1+P)`` result, captions as ``target``) gets
the checks that apply to it.
"""

from __future__ import annotations

import matplotlib
import pytest
import torch
from captum.attr import NoiseTunnel
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max

from captum_clip.attr._captum import CaptumConformance
from captum_clip.methods import METHOD_NAMES, METHODS, TOWERS, build, get_method
from captum_clip.models import ClipClassifier, load_clip
from captum_clip.testbed import shapes

PIXELS = [n for n in METHOD_NAMES if METHODS[n].output == "pixels"]
TARGETS = [0, 2]
ATOL = 1e-4


@pytest.fixture(scope="module")
def setup():
    model, _, tok = load_clip("testbed")
    clf = ClipClassifier(model, tok, list(shapes.CLASS_NAMES[:3]), templates=("a photo of {}",))
    x = shapes.normalize(shapes.generate_scenes(2, seed=3, size=64).images)
    return clf, x


def _fingerprint(model: torch.nn.Module) -> tuple:
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = tuple(m.training for m in model.modules())
    grads = tuple(p.requires_grad for p in model.parameters())
    return hooks, state, modes, grads


def _assert_same_model(before: tuple, model: torch.nn.Module) -> None:
    after = _fingerprint(model)
    assert before[0] == after[0] and before[2:] == after[2:]
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])


def _captions(clf, targets):
    return [clf.templates[0].format(clf.class_names[t]) for t in targets]


def _call(name, method, clf, x, targets, **kw):
    """``attribute`` with the method's own form of the target (class or caption)."""
    if METHODS[name].output == "interactions":
        return method.attribute(x, target=_captions(clf, targets), n_steps=4, **kw)
    return method.attribute(x, target=targets, **kw)


def _allclose(a, b, atol=ATOL):
    scale = max(1.0, float(b.abs().max()))
    return torch.allclose(a, b, rtol=1e-4, atol=atol * scale)


def test_registry_entries_are_captum_attributions(setup):
    from captum.attr import Attribution

    clf, _ = setup
    for name in METHOD_NAMES:
        method = build(name, clf)
        assert isinstance(method, Attribution), name
        assert callable(getattr(method.attribute, "__wrapped__", None)), name
        assert get_method(name).name == name and METHODS[name].towers in TOWERS


@pytest.mark.filterwarnings("ignore:Internal batch size cannot be less")  # IG: steps x images
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_tuple_inputs_and_target_forms(setup, name):
    """A tensor or a 1-tuple in, the same form out; target as int, list or tensor; a
    batch equals its images one at a time; internal_batch_size does not change it."""
    clf, x = setup
    before = _fingerprint(clf.model)
    method = build(name, clf)
    ref = _call(name, method, clf, x, TARGETS)
    as_tuple = _call(name, method, clf, (x,), TARGETS)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert torch.equal(as_tuple[0], ref)
    if METHODS[name].output == "pixels":
        assert ref.shape == x.shape
        same = method.attribute(x, target=torch.tensor(TARGETS))
        assert torch.equal(same, ref)
        one = method.attribute(x, target=2)
        assert _allclose(one, method.attribute(x, target=[2, 2]))
    for i, t in enumerate(TARGETS):
        alone = _call(name, method, clf, x[i : i + 1], [t])
        assert _allclose(alone[0], ref[i]), f"{name}: image {i} alone differs from the batch"
    split = _call(name, method, clf, x, TARGETS, internal_batch_size=1)
    assert _allclose(split, ref)
    _assert_same_model(before, clf.model)


def test_a_tuple_of_two_tensors_is_a_type_error_naming_both(setup):
    clf, x = setup
    with pytest.raises(TypeError, match=r"1-tuple.*got a tuple of 2 \(Tensor, Tensor\)"):
        build("rollout", clf).attribute((x, x), target=0)


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("nt_type", ["smoothgrad", "vargrad"])
def test_noise_tunnel_equals_hand_smoothing(setup, name, nt_type):
    """NoiseTunnel's smoothgrad / vargrad = mean / variance of the method over the same
    noisy copies, each explained on its own with its own target."""
    clf, x = setup
    before = _fingerprint(clf.model)
    method = build(name, clf)
    n, sd = 3, 0.2
    interactions = METHODS[name].output == "interactions"
    target = _captions(clf, TARGETS) if interactions else TARGETS
    kw = {"n_steps": 4} if interactions else {}
    torch.manual_seed(0)
    nt = NoiseTunnel(method).attribute(
        x, nt_type=nt_type, nt_samples=n, stdevs=sd, target=target, **kw
    )
    torch.manual_seed(0)
    noisy = x.repeat_interleave(n, 0) + torch.normal(
        0, torch.tensor(sd).repeat((len(x) * n, *x.shape[1:]))
    )
    per = torch.stack(
        [
            _call(name, method, clf, noisy[j : j + 1], [TARGETS[j // n]])[0]
            for j in range(len(noisy))
        ]
    ).view(len(x), n, *nt.shape[1:])
    hand = per.mean(1) if nt_type == "smoothgrad" else (per**2).mean(1) - per.mean(1) ** 2
    assert nt.shape == hand.shape
    assert _allclose(nt, hand)
    _assert_same_model(before, clf.model)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_sensitivity_max_equals_hand_computation(setup, name):
    """Captum's ``sensitivity_max`` with fixed perturbations = the largest relative change
    of the explanation, recomputed here."""
    clf, x = setup
    method = build(name, clf)
    n = 2
    torch.manual_seed(1)
    delta = 0.05 * torch.randn(len(x) * n, *x.shape[1:])
    interactions = METHODS[name].output == "interactions"
    target = _captions(clf, TARGETS) if interactions else TARGETS
    kw = {"n_steps": 4} if interactions else {}
    sens = sensitivity_max(
        method.attribute, x, perturb_func=lambda inp: inp + delta, n_perturb_samples=n,
        target=target, **kw,
    )  # fmt: skip
    base = _call(name, method, clf, x, TARGETS)
    moved = _call(name, method, clf, x.repeat_interleave(n, 0) + delta,
                  [t for t in TARGETS for _ in range(n)])  # fmt: skip
    diff = (moved - base.repeat_interleave(n, 0)).flatten(1).norm(dim=1).view(len(x), n)
    hand = (diff / base.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None]).max(1).values
    assert sens.shape == (len(x),)
    assert torch.allclose(sens, hand, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", PIXELS)
def test_infidelity_equals_hand_computation(setup, name):
    """Captum's ``infidelity`` of the method's attributions with fixed perturbations =
    ``mean_j (<I_j, attr> - (f(x) - f(x - I_j))_t)^2``."""
    clf, x = setup
    attr = build(name, clf).attribute(x, target=TARGETS)
    n = 3
    torch.manual_seed(2)
    pert = 0.1 * torch.randn(len(x) * n, *x.shape[1:])
    value = infidelity(
        clf, lambda inp: (pert, inp - pert), x, attr, target=TARGETS,
        n_perturb_samples=n, normalize=False,
    )  # fmt: skip
    with torch.no_grad():
        t = torch.tensor(TARGETS).repeat_interleave(n)
        drop = clf(x).gather(1, torch.tensor(TARGETS)[:, None])[:, 0].repeat_interleave(n)
        drop = drop - clf(x.repeat_interleave(n, 0) - pert).gather(1, t[:, None])[:, 0]
    dot = (pert * attr.repeat_interleave(n, 0)).flatten(1).sum(1)
    hand = ((dot - drop) ** 2).view(len(x), n).mean(1)
    assert torch.allclose(value, hand, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", PIXELS)
def test_captum_visualize_image_attr_shows_the_map(setup, name):
    """``visualize_image_attr`` on an (H, W, 3) attribution plots its channel sum,
    normalised by the 98th-percentile absolute value (Captum's ``heat_map``)."""
    matplotlib.use("Agg")
    clf, x = setup
    attr = build(name, clf).attribute(x[:1], target=TARGETS[0])[0]
    hwc = attr.permute(1, 2, 0).detach().numpy()
    fig, ax = viz.visualize_image_attr(hwc, method="heat_map", sign="all", use_pyplot=False)
    shown = torch.as_tensor(ax.images[-1].get_array().data)
    summed = torch.as_tensor(hwc.sum(-1))
    assert shown.shape == summed.shape
    if summed.abs().max() > 0:  # the brightest pixel of the map is the plot's extreme
        i = int(summed.abs().argmax())
        assert float(shown.flatten()[i].abs()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_convergence_delta_where_an_identity_exists(setup, name):
    """``has_convergence_delta`` methods return the delta of their identity, equal to
    ``compute_convergence_delta`` and small (integrated gradients: completeness; the
    interactions: the four-term score difference)."""
    clf, x = setup
    method = build(name, clf)
    if not method.has_convergence_delta():
        with pytest.raises(TypeError):
            method.attribute(x, target=TARGETS, return_convergence_delta=True)
        return
    if name == "interactions":
        caps = _captions(clf, TARGETS)
        attr, delta = method.attribute(x, target=caps, n_steps=16, return_convergence_delta=True)
        assert torch.allclose(method.compute_convergence_delta(attr, x, caps), delta, atol=1e-6)
        (a_t,), d_t = method.attribute((x,), target=caps, n_steps=16, return_convergence_delta=True)
        assert torch.equal(a_t, attr) and torch.equal(d_t, delta)
    else:
        attr, delta = method.attribute(x, target=TARGETS, return_convergence_delta=True)
        again = method.compute_convergence_delta(attr, torch.zeros_like(x), x, target=TARGETS)
        assert torch.allclose(again, delta, atol=1e-5)
    with torch.no_grad():
        scores = clf(x).gather(1, torch.tensor(TARGETS)[:, None]).abs().max()
    assert delta.abs().max() < 0.05 * float(scores) + 1e-3


def test_a_new_subclass_is_conformant_without_writing_anything():
    from captum.attr import Attribution

    class Doubler(CaptumConformance, Attribution):
        def attribute(self, inputs, target=None):
            assert isinstance(inputs, torch.Tensor)  # the wrapper unpacked the tuple
            return 2 * inputs

    d = Doubler(lambda v: v)
    x = torch.ones(2, 3)
    assert torch.equal(d.attribute(x), 2 * x)
    (out,) = d.attribute((x,))
    assert torch.equal(out, 2 * x)
    assert torch.equal(NoiseTunnel(d).attribute(x, nt_samples=2, stdevs=0.0), 2 * x)


def test_declared_cost_is_the_counted_cost(setup):
    """The registry's forwards per image (and whether they record a graph) are what a
    counter on the patch embedding sees (the testbed's 64 patches: CCI's K is 32)."""
    from captum_clip.benchmark.methods import ForwardCounter
    from captum_clip.methods import pixel_map

    clf, x = setup
    for name in METHOD_NAMES:
        method = build(name, clf)
        with ForwardCounter(clf) as count:
            pixel_map(name, method, clf, x, TARGETS)
        entry = METHODS[name]
        assert count.images == entry.forwards * len(x), name
        assert (count.autograd > 0) == entry.gradients, name


def test_inputs_by_name_and_missing_inputs(setup):
    clf, x = setup
    method = build("attnlrp", clf)
    assert torch.equal(method.attribute(inputs=(x,), target=0)[0], method.attribute(x, target=0))
    with pytest.raises(TypeError, match="inputs"):
        method.attribute(target=0)
