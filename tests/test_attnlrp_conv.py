"""AttnLRP on convolutional towers: hand rules, conservation, the guard, refusals.

The layers zennit has are checked against it in ``test_lrp_zennit.py``. What zennit has
no rule for (LayerNorm2d, the squeeze-excite gate, the attention pool) is checked here
against a computation by hand; whole towers against conservation (bias-free towers with
CP attention: the relevance sums to the logit).
"""

from __future__ import annotations

import copy

import pytest
import torch
from _tiny_conv import IMAGE, make_convnext, make_custom, make_fastvit, make_resnet
from torch import nn

from captum_clip._hooks import HookManager
from captum_clip.attr import AttnLRP, LeGrad
from captum_clip.attr import _conv_lrp as conv_lrp
from captum_clip.attr._conv_lrp import conv_lrp_rules
from captum_clip.models import ClipClassifier

CLASSES = ["cat", "dog", "car"]
FAMILIES = {"resnet": make_resnet, "convnext": make_convnext, "fastvit": make_fastvit}


def _clf(model, tok):
    return ClipClassifier(model, tok, CLASSES, templates=("a photo of {}",))


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


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


def _fastvit_attention_by_hand(attn_module, x, detach_attention, detach_value):
    """timm FastViT Attention written out: tokens of the map, fused qkv split by hand."""
    a, (b, c, h, w) = attn_module, x.shape
    t = x.flatten(2).transpose(-2, -1)

    def project(u, i):
        bias = None if a.qkv.bias is None else a.qkv.bias[i * c : (i + 1) * c]
        out = torch.nn.functional.linear(u, a.qkv.weight[i * c : (i + 1) * c], bias)
        return out.reshape(b, h * w, a.num_heads, -1).transpose(1, 2)

    ta, tv = (t.detach() if detach_attention else t), (t.detach() if detach_value else t)
    attn = ((project(ta, 0) @ project(ta, 1).transpose(-2, -1)) * a.scale).softmax(-1)
    out = a.proj((attn @ project(tv, 2)).transpose(1, 2).reshape(b, h * w, c))
    return out.transpose(-2, -1).reshape(b, c, h, w)


def _attention_modules():
    resnet, _ = make_resnet(0)
    fastvit, _ = make_fastvit(0)
    attention = next(m for m in fastvit.modules() if type(m).__name__ == "Attention")
    return {"resnet attnpool": (resnet.visual.attnpool, _pool_by_hand),
            "fastvit attention": (attention, _fastvit_attention_by_hand)}  # fmt: skip


@pytest.mark.parametrize("which", ["resnet attnpool", "fastvit attention"])
def test_attention_rules_by_hand(which, monkeypatch):
    """AttnLRP's uniform rule = half the value path + a quarter of the attention path
    (through q and k); CP-LRP = the value path alone (attention held constant). The linear
    layers' epsilon is set to 1e-30 here (their rule is then the plain gradient, checked
    against zennit in test_lrp_zennit.py), so the attention rule alone is compared."""
    monkeypatch.setattr(conv_lrp, "EPSILON_LINEAR", 1e-30)
    module, by_hand = _attention_modules()[which]
    module = module.double().eval()
    width = (module.qkv if hasattr(module, "qkv") else module.k_proj).in_features
    x = torch.randn(2, width, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        g = torch.randn_like(module(x))

    def grad_of(fn):
        xx = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(xx), xx, grad_outputs=g)
        return grad

    value = grad_of(lambda xx: by_hand(module, xx, True, False))
    attention = grad_of(lambda xx: by_hand(module, xx, False, True))
    for rule, hand in (("attnlrp", x * (0.5 * value + 0.25 * attention)), ("cp", x * value)):
        ours, out = _relevance_through(module, x, g, attention=rule)
        torch.testing.assert_close(out, module(x).detach(), atol=1e-12, rtol=1e-10)
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


def test_half_precision_towers(family):
    """float16 / bfloat16 towers: the rules run in float32 inside (the stabilisers underflow
    in half precision), the values stay the model's; the map is float32's to rounding."""
    name, model, clf = family
    x = _images(2)
    ref = AttnLRP(clf).attribute(x, target=[0, 2])
    for dtype in (torch.float16, torch.bfloat16):
        half = copy.deepcopy(model).to(dtype)
        rel = AttnLRP(_clf(half, clf.tokenizer)).attribute(x.to(dtype), target=[0, 2])
        assert rel.dtype == dtype and torch.isfinite(rel).all()
        cos = torch.nn.functional.cosine_similarity(rel.float().flatten(1), ref.flatten(1))
        assert (cos > 0.98).all(), (name, dtype, cos)  # bfloat16 keeps 8 bits


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
    from timm.layers import Conv2dSame  # a Conv2d subclass that pads in its own forward

    with pytest.raises(ValueError, match="module type.s. Conv2dSame of the vision tower"):
        conv_lrp.check_conv_lrp(nn.Sequential(Conv2dSame(3, 4, 3), nn.ReLU()))
