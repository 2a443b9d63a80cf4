"""AttnLRP on convolutional towers: zennit's composite, hand rules, conservation, guard.

zennit (a dependency of ``lxt``) is the reference where it has the layers: the RN50 trunk
(convolutions with batch norms merged, ReLU, average pooling, residual sums) and a plain
conv / linear stack are run through zennit's ``Gamma`` / ``Epsilon`` / ``Pass`` / ``Norm``
rules with its ``MergeBatchNorm`` canonizers, and through ours, from the same relevance at
the output. What zennit has no rule for (LayerNorm2d, the squeeze-excite gate, the
attention pool) is checked against a computation by hand; whole towers against
conservation (bias-free towers with CP attention: the relevance sums to the logit).
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
from _tiny_conv import IMAGE, make_convnext, make_custom, make_fastvit, make_resnet
from torch import nn

from captum_clip._hooks import HookManager
from captum_clip.attr import AttnLRP, LeGrad
from captum_clip.attr import _conv_lrp as conv_lrp
from captum_clip.attr._conv_lrp import conv_lrp_rules
from captum_clip.models import ClipClassifier

zennit = pytest.importorskip("zennit")
from zennit.canonizers import (  # noqa: E402
    AttributeCanonizer,
    NamedMergeBatchNorm,
    SequentialMergeBatchNorm,
)
from zennit.composites import LayerMapComposite  # noqa: E402
from zennit.layer import Sum  # noqa: E402
from zennit.rules import Epsilon, Gamma, Norm, Pass  # noqa: E402
from zennit.types import Activation, AvgPool, Convolution  # noqa: E402

CLASSES = ["cat", "dog", "car"]
FAMILIES = {"resnet": make_resnet, "convnext": make_convnext, "fastvit": make_fastvit}


def _clf(model, tok):
    return ClipClassifier(model, tok, CLASSES, templates=("a photo of {}",))


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def _random_stats(model: nn.Module, seed: int = 3) -> nn.Module:
    """Batch norms with non-trivial running statistics and affine parameters, and
    ``eps = 0``: zennit's merge leaves the norm computing ``x / sqrt(1 + eps)`` (an
    identity only up to eps, 5e-6 relative per norm), which would be the only difference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.normal_(1, 0.2, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
                m.eps = 0.0
    return model


# ------------------------------------------------------------------------ zennit
def _zennit_composite(gamma: float) -> LayerMapComposite:
    """Our rules, as zennit writes them (Norm without stabiliser: a plain gradient)."""
    conv = Gamma(gamma=gamma) if gamma else Epsilon(epsilon=1e-6)
    return LayerMapComposite([
        (Activation, Pass()), (Sum, Norm(stabilizer=1e-30)), (AvgPool, Norm(stabilizer=1e-30)),
        (Convolution, conv), (nn.Linear, Epsilon(epsilon=1e-6)),
    ])  # fmt: skip


def _bottleneck_sum_forward(self, x):
    """open_clip's Bottleneck.forward with the residual sum as zennit's ``Sum`` layer."""
    out = self.act1(self.bn1(self.conv1(x)))
    out = self.act2(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(self.avgpool(out)))
    identity = x if self.downsample is None else self.downsample(x)
    return self.act3(self.canonizer_sum(torch.stack([identity, out], dim=-1)))


class _Trunk(nn.Module):
    """RN50's stem and four stages (everything before the attention pool)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x):
        v = self.visual
        return v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))


def _weights(out: torch.Tensor) -> torch.Tensor:
    """Fixed random weights ``v``: the relevance at the output is ``out * v``."""
    return torch.rand(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)


def _zennit_relevance(module, x, composite, canonizers=()):
    composite.canonizers = list(canonizers)
    x = x.clone().requires_grad_(True)
    with composite.context(module) as modified:
        out = modified(x)
        (rel,) = torch.autograd.grad(out, x, grad_outputs=out.detach() * _weights(out))
    return rel


def _ours(root, run, x, gamma):
    """Our composite from the same output relevance: gradient ``v`` (``R = out * v``)."""
    x = x.clone().requires_grad_(True)
    with HookManager(root) as hooks:
        root.eval()
        conv_lrp_rules(root, hooks, gamma)
        out = run(x)
        (grad,) = torch.autograd.grad(out, x, grad_outputs=_weights(out))
    return x * grad


def _report(name: str, ours: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (ours - ref).abs().max().item()
    print(f"{name}: max |ours - zennit| = {diff:.3g} (max |R| = {ref.abs().max().item():.3g})")
    return diff


# float64: the two agree to its precision; float32: to its rounding, amplified by the
# epsilon rule's small denominators (tolerance relative to the largest relevance)
ZENNIT_CASES = [(0.25, torch.float64, 1e-12), (0.0, torch.float64, 1e-12),
                (0.25, torch.float32, 1e-5), (0.0, torch.float32, 1e-3)]  # fmt: skip


@pytest.mark.parametrize(("gamma", "dtype", "tol"), ZENNIT_CASES)
def test_resnet_trunk_matches_zennit(gamma, dtype, tol):
    model, _ = make_resnet(0)
    visual = _random_stats(model.visual).eval().to(dtype)
    x = _images(2).to(dtype)
    ours = _ours(visual, lambda x: _Trunk(visual)(x), x, gamma)
    ref_model = copy.deepcopy(visual)
    for m in ref_model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False  # zennit's hooks do not take in-place activations
    names = dict(_Trunk(ref_model).named_modules())  # conv -> bn pairs, merged by zennit
    pairs = [([f"{p}conv{i}"], f"{p}bn{i}") for p in ["visual."] + [
        f"{n}." for n, m in names.items() if type(m).__name__ == "Bottleneck"
    ] for i in (1, 2, 3)] + [([f"{n}.0"], f"{n}.1") for n in names if n.endswith("downsample")]  # fmt: skip
    sums = AttributeCanonizer(lambda name, m: {
        "forward": types.MethodType(_bottleneck_sum_forward, m), "canonizer_sum": Sum()
    } if type(m).__name__ == "Bottleneck" else None)  # fmt: skip
    ref = _zennit_relevance(
        _Trunk(ref_model), x, _zennit_composite(gamma),
        [NamedMergeBatchNorm(pairs), sums],
    )  # fmt: skip
    _report(f"RN50 trunk, gamma={gamma}, {dtype}", ours, ref)
    torch.testing.assert_close(ours, ref, atol=tol * ref.abs().max().item(), rtol=0)
    assert ref.abs().max() > 1e-5


def test_conv_linear_stack_matches_zennit():
    """Linear layers (epsilon), max and adaptive average pooling, flatten, ReLU."""
    torch.manual_seed(0)
    stack = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, groups=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4),
    )  # fmt: skip
    stack = _random_stats(stack).eval().double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    for gamma in (0.25, 0.0):
        ours = _ours(stack, stack, x, gamma)
        ref = _zennit_relevance(
            copy.deepcopy(stack), x, _zennit_composite(gamma), [SequentialMergeBatchNorm()]
        )
        _report(f"conv/linear stack, gamma={gamma}", ours, ref)
        torch.testing.assert_close(ours, ref, atol=1e-12 * ref.abs().max().item(), rtol=0)


# ------------------------------------------------------------------------ by hand
def _relevance_through(module, x, out_grad, gamma=0.25, attention="attnlrp"):
    """Relevance at ``x`` of one module under the composite, ``out * out_grad`` above."""
    x = x.clone().requires_grad_(True)
    with HookManager(module) as hooks:
        module.eval()
        conv_lrp_rules(module, hooks, gamma, attention)
        out = module(x)
        (grad,) = torch.autograd.grad(out, x, grad_outputs=out_grad)
    return x * grad, out.detach()


def test_layernorm2d_is_the_identity_rule_on_the_normalisation():
    """timm LayerNorm2d: y = w (x - mean) / std + b with std held constant, by hand."""
    from timm.layers import LayerNorm2d

    norm = LayerNorm2d(5)
    with torch.no_grad():
        norm.weight.normal_(1, 0.3)
        norm.bias.normal_(0, 0.3)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    norm.double()
    g = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    ours, out = _relevance_through(norm, x, g)
    std = (x.var(1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    wg = norm.weight[None, :, None, None].detach() * g  # d/dx of w (x - mean(x)) / std . g
    hand = x * (wg - wg.mean(1, keepdim=True)) / std
    torch.testing.assert_close(ours, hand, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out, norm(x).detach(), atol=1e-12, rtol=1e-10)
    # without bias the rule is conservative: sum R_x = sum y * g
    with torch.no_grad():
        norm.bias.zero_()
    ours, out = _relevance_through(norm, x, g)
    torch.testing.assert_close(ours.sum(), (out * g).sum(), atol=1e-10, rtol=1e-10)


def test_squeeze_excite_gate_is_held_constant():
    """timm SEModule: x * gate(x) -> all relevance to x, R_x = R_y (element-wise)."""
    from timm.layers import SEModule

    se = SEModule(6, rd_ratio=0.5).double()
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    g = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    ours, out = _relevance_through(se, x, g)  # exact up to the rule's stabiliser (1e-10 / x)
    torch.testing.assert_close(ours, out * g, atol=1e-9, rtol=1e-6)


def _pool_by_hand(pool, x, detach_attention, detach_value):
    """open_clip AttentionPool2d written out: mean token + positions, one query."""
    b, c = x.shape[:2]
    t = x.reshape(b, c, -1).permute(2, 0, 1)
    t = torch.cat([t.mean(0, keepdim=True), t]) + pool.positional_embedding[:, None]
    heads = pool.num_heads

    def split(u):
        return u.reshape(u.shape[0], b, heads, -1).permute(1, 2, 0, 3)

    tq = t.detach() if detach_attention else t
    q, k = split(pool.q_proj(tq[:1])), split(pool.k_proj(tq))
    v = split(pool.v_proj(t.detach() if detach_value else t))
    attn = ((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5).softmax(-1)
    return pool.c_proj((attn @ v).permute(2, 0, 1, 3).reshape(b, c))


def test_attention_pool_rules_by_hand(monkeypatch):
    """AttnLRP's uniform rule = half the value path + a quarter of the attention path
    (through q and k); CP-LRP = the value path alone (attention held constant). The linear
    layers' epsilon is set to 1e-30 here (their rule is then the plain gradient, checked
    against zennit above), so the attention rule alone is compared."""
    monkeypatch.setattr(conv_lrp, "EPSILON_LINEAR", 1e-30)
    model, _ = make_resnet(0)
    pool = model.visual.attnpool.double()
    x = torch.randn(2, pool.k_proj.in_features, 4, 4, dtype=torch.float64)
    g = torch.randn(2, pool.c_proj.out_features, dtype=torch.float64)

    def grad_of(fn):
        xx = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(xx), xx, grad_outputs=g)
        return grad

    value = grad_of(lambda xx: _pool_by_hand(pool, xx, True, False))
    attention = grad_of(lambda xx: _pool_by_hand(pool, xx, False, True))
    for rule, hand in (("attnlrp", x * (0.5 * value + 0.25 * attention)), ("cp", x * value)):
        ours, out = _relevance_through(pool, x, g, attention=rule)
        torch.testing.assert_close(out, pool(x).detach(), atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(ours, hand, atol=1e-12 * hand.abs().max().item(), rtol=0)
    assert not torch.allclose(value, attention)


# ------------------------------------------------------------------------ whole towers
@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model, tok = FAMILIES[request.param](0)
    return request.param, model, _clf(model, tok)


def _bias_free(model: nn.Module) -> nn.Module:
    """Every bias, batch-norm mean and positional embedding of the image tower at zero:
    each rule is then conservative, and with CP attention the tower is too."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in model.visual.named_parameters():
            if name.endswith("bias") or "positional_embedding" in name:
                p.zero_()
        for m in model.visual.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
    return model


def test_forward_value_unchanged_under_the_rules(family):
    """The rules change the backward only: the embedding inside equals encode_image."""
    _, model, clf = family
    lrp = AttnLRP(clf)
    x = _images(2)
    with HookManager(*lrp._guarded()) as hooks, torch.enable_grad():
        emb = lrp._embedding(x.clone().requires_grad_(True), hooks)
    with torch.no_grad():
        ref = model.encode_image(x)
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=1e-5)


def test_bias_free_towers_conserve_the_logit(family, monkeypatch):
    """Sum of the pixel relevance = the logit (CP attention, no bias anywhere). With the
    stabiliser of the gamma / epsilon denominators at 1e-12 (default 1e-6, which absorbs
    up to 0.2% of the logit in these tiny random towers)."""
    monkeypatch.setattr(conv_lrp, "EPSILON_LINEAR", 1e-12)
    name, model, clf = family
    free = _bias_free(model)
    clf = ClipClassifier(free, clf.tokenizer, CLASSES, templates=("a photo of {}",))
    x, t = _images(3, seed=1), torch.tensor([0, 2, 1])
    with torch.no_grad():
        logit = clf(x).gather(1, t[:, None])[:, 0]
    rel = AttnLRP(clf, attention="cp").attribute(x, target=t).sum((1, 2, 3))
    full = AttnLRP(clf).attribute(x, target=t).sum((1, 2, 3))
    print(f"{name} bias-free: logit {logit.tolist()}, sum R cp {rel.tolist()}, "
          f"attnlrp {full.tolist()}")  # fmt: skip
    torch.testing.assert_close(rel, logit, atol=1e-5, rtol=1e-5)
    if name == "convnext":  # no attention: the attention rule does not matter
        torch.testing.assert_close(full, logit, atol=1e-5, rtol=1e-5)
    if name == "resnet":  # the softmax rule of AttnLRP is not conservative
        assert not torch.allclose(full, logit, atol=1e-3)


def test_conservation_report(family):
    """What the biases absorb in the (random) towers: printed, and bounded by the
    relevance the biases take (the gap vanishes with them, previous test)."""
    name, model, clf = family
    x, t = _images(3, seed=1), torch.tensor([0, 2, 1])
    with torch.no_grad():
        logit = clf(x).gather(1, t[:, None])[:, 0]
    for rule in ("attnlrp", "cp"):
        rel = AttnLRP(clf, attention=rule).attribute(x, target=t)
        print(f"{name} {rule}: sum R {rel.sum((1, 2, 3)).tolist()} vs logit {logit.tolist()}")
        assert torch.isfinite(rel).all() and rel.abs().sum() > 0


def test_batch_split_and_model_restored(family):
    """Same relevance in one batch or split; no hook, patch, mode or flag left behind,
    also after an exception in the middle of the backward's forward."""
    _, model, clf = family
    x = _images(2)
    lrp = AttnLRP(clf)
    rel = lrp.attribute(x, target=[0, 2])
    torch.testing.assert_close(rel, lrp.attribute(x, target=[0, 2], internal_batch_size=1),
                               atol=1e-7, rtol=1e-5)  # fmt: skip
    model.train()
    first = next(model.visual.parameters())
    first.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    run = lrp.tower.run
    lrp.tower.run = lambda images: (run(images), (_ for _ in ()).throw(RuntimeError("boom")))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            lrp.attribute(x, target=[0, 1])
    finally:
        del lrp.tower.run
    lrp.attribute(x[:1], target=0)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert not [m for m in model.modules() if m._forward_hooks or "forward" in vars(m)]
    model.eval()
    first.requires_grad_(True)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), clf(x))
    torch.testing.assert_close(lrp.attribute(x, target=[0, 2]), rel)


def test_reparameterised_fastvit(monkeypatch):
    """FastViT / MobileCLIP after timm's reparameterize_model (one conv per block): same
    embedding, conservation on the bias-free tower, a different map (the gamma rule on
    one merged kernel is not the sum of the rules on its branches)."""
    from timm.utils.model import reparameterize_model

    monkeypatch.setattr(conv_lrp, "EPSILON_LINEAR", 1e-12)
    model, tok = make_fastvit(0)
    model = _bias_free(model)
    fused = copy.deepcopy(model)
    fused.visual.trunk = reparameterize_model(fused.visual.trunk)
    assert any(getattr(m, "reparam_conv", None) is not None for m in fused.modules())
    x, t = _images(2), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(fused.encode_image(x), model.encode_image(x),
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
        logit = _clf(fused, tok)(x).gather(1, t[:, None])[:, 0]
    rel = AttnLRP(_clf(fused, tok), attention="cp").attribute(x, target=t)
    print(f"reparameterised FastViT, bias-free, cp: sum R {rel.sum((1, 2, 3)).tolist()}, "
          f"logit {logit.tolist()}")  # fmt: skip
    torch.testing.assert_close(rel.sum((1, 2, 3)), logit, atol=1e-3, rtol=1e-3)
    branched = AttnLRP(_clf(model, tok), attention="cp").attribute(x, target=t)
    assert not torch.allclose(rel, branched, atol=1e-6)


# ------------------------------------------------------------------------ refusals
def test_refusals_name_what_works(family):
    name, model, clf = family
    with pytest.raises(ValueError, match="not a ViT") as err:
        LeGrad(clf)
    assert "AttnLRP" in str(err.value)
    with pytest.raises(TypeError, match="conv_gamma must be a float >= 0, got str"):
        AttnLRP(clf, conv_gamma="0.25")
    with pytest.raises(ValueError, match=r"conv_gamma must be a float >= 0, got -1"):
        AttnLRP(clf, conv_gamma=-1)


def test_unknown_module_types_are_refused():
    """A user's encoder: its forward is unknown, so no rule is guessed."""
    model, tok = make_custom(0)
    with pytest.raises(ValueError) as err:
        AttnLRP(_clf(model, tok))
    message = str(err.value)
    for expected in ("TinyEncoder", "ModifiedResNet", "ConvNeXt", "FastViT", "CCI(clf)"):
        assert expected in message
