"""The LRP composite of convolutional vision towers: one rule per layer type.

Like a zennit composite, :func:`conv_lrp_rules` walks the tower once and gives every
module the rule of its type (the table is in ``docs/peers.md``); the rules themselves are
in :mod:`captum_clip.attr._lrp_rules`. Everything is installed through a
:class:`~captum_clip._hooks.HookManager` (forward hooks, and a patched ``forward`` for
the two attention modules), so the model is never edited and is restored on any exit.

Operations without a hook keep their plain gradient, which *is* an LRP rule for them in the
gradient x input convention: sums (residuals, re-parameterisable branches, RepMixer's
difference), average pooling and means (zennit's ``Norm`` rule without stabiliser), max
pooling (winner takes all), ReLU (zennit's ``Pass``), products by a constant (layer scale),
reshapes. A module whose forward could hide anything else is not guessed at: the towers'
own block classes are listed in :data:`STRUCTURAL` (each one's forward read: it only
composes its submodules with the operations above), and any other class is refused by
:func:`check_conv_lrp` with a message naming it and the families that work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip._hooks import HookManager
from captum_clip.attr._lrp_rules import (
    IdentityRule,
    batchnorm_affine,
    halve,
    linear_rule,
    merged_batchnorm,
    norm_rule,
)

__all__ = ["CONV_FAMILIES", "STRUCTURAL", "check_conv_lrp", "conv_lrp_rules", "rule_of"]

CONV_FAMILIES = (
    "open_clip ModifiedResNet (RN50, RN101, RN50x4 ...), timm ConvNeXt (convnext_* towers) "
    "and timm FastViT MCi (MobileCLIP-S0..S2, MobileCLIP2-S0..S4), trained or "
    "re-parameterised, and every ViT family"
)
"""The convolutional towers whose every layer type has a rule (named by the refusal)."""

_TIMM, _FASTVIT, _OC = "timm.layers", "timm.models.fastvit", "open_clip"
STRUCTURAL = frozenset({
    f"{_OC}.timm_model.TimmModel", f"{_OC}.modified_resnet.ModifiedResNet",
    f"{_OC}.modified_resnet.Bottleneck",
    "timm.models.convnext.ConvNeXt", "timm.models.convnext.ConvNeXtStage",
    "timm.models.convnext.ConvNeXtBlock",
    f"{_FASTVIT}.FastVit", f"{_FASTVIT}.FastVitStage", f"{_FASTVIT}.MobileOneBlock",
    f"{_FASTVIT}.RepMixerBlock", f"{_FASTVIT}.RepMixer", f"{_FASTVIT}.ConvMlp",
    f"{_FASTVIT}.PatchEmbed", f"{_FASTVIT}.ReparamLargeKernelConv",
    f"{_FASTVIT}.RepConditionalPosEnc", f"{_FASTVIT}.AttentionBlock",
    f"{_FASTVIT}.LayerScale2d",
    f"{_TIMM}.mlp.Mlp", f"{_TIMM}.classifier.NormMlpClassifierHead",
    f"{_TIMM}.classifier.ClassifierHead", f"{_TIMM}.adaptive_avgmax_pool.SelectAdaptivePool2d",
    f"{_TIMM}.conv_bn_act.ConvNormAct", f"{_TIMM}.drop.DropPath",
})  # fmt: skip
"""The towers' own classes (module path and name) whose forward was read: each only
chains its children with sums, products by a constant (ConvNeXtBlock's and LayerScale2d's
``gamma``), RepMixer's difference, means and reshapes -- the plain gradient is its rule."""

_TORCH_GRADIENT = (
    nn.Sequential, nn.ModuleList, nn.Identity, nn.Dropout, nn.Flatten, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.ReLU,
)  # fmt: skip
_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Mish, nn.Hardswish)
_TIMM_ACTIVATIONS = {"GELU", "GELUTanh", "Sigmoid", "Tanh", "Swish", "Mish", "HardSwish"}
_NAMED = {  # rules of classes outside torch.nn, by module path and name
    f"{_TIMM}.norm_act.BatchNormAct2d": "batchnorm",
    f"{_TIMM}.norm.LayerNorm2d": "layernorm2d",
    f"{_TIMM}.norm.LayerNorm": "layernorm",
    f"{_OC}.transformer.LayerNormFp32": "layernorm",
    f"{_OC}.modified_resnet.AttentionPool2d": "attention",
    f"{_FASTVIT}.Attention": "attention",
    f"{_TIMM}.squeeze_excite.SEModule": "gate",
}
EPSILON_LINEAR = 1e-6  # zennit's default for Epsilon / Gamma
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_EXACT = {nn.Linear: "linear", nn.BatchNorm2d: "batchnorm", nn.LayerNorm: "layernorm"}


def rule_of(module: nn.Module) -> str | None:
    """The rule name of ``module``'s type (None: no rule, the tower is refused).

    Classes are matched exactly (a subclass may change the forward: timm's ``Conv2dSame``
    pads, ``StdConv2d`` standardises its weight).
    """
    cls = type(module)
    qualified = f"{cls.__module__}.{cls.__name__}"
    if cls in _CONVS:
        return "conv"
    if cls in _EXACT:
        return _EXACT[cls]
    if qualified in _NAMED:
        return _NAMED[qualified]
    timm_act = cls.__module__ == f"{_TIMM}.activations" and cls.__name__ in _TIMM_ACTIVATIONS
    if cls in _ACTIVATIONS or timm_act:
        return "activation"
    if cls in _TORCH_GRADIENT or qualified in STRUCTURAL:
        return "gradient"
    return None


def check_conv_lrp(root: nn.Module) -> None:
    """Refuse a tower with a module type the composite has no rule for.

    Raises:
        ValueError: Naming the unknown module types and the families that work.
    """
    unknown = sorted({type(m).__name__ for m in root.modules() if rule_of(m) is None})
    if unknown:
        raise ValueError(
            f"AttnLRP has no LRP rule for the module type(s) {', '.join(unknown)} of the "
            f"vision tower {type(root).__name__} (a rule is written per layer type; a "
            "module whose forward is unknown could hide a non-linearity the gradient would "
            f"get wrong). It runs on {CONV_FAMILIES}; other methods that run on any tower: "
            "CCI(clf), vit_gradcam(clf), IntegratedInteractions(model, tokenizer)"
        )


def _attention(t: Tensor, rule: str, query: bool) -> Tensor:
    """AttnLRP's uniform rule (half to each factor) or CP-LRP (no relevance via q, k)."""
    if rule == "cp":
        return t.detach() if query else t
    return halve(t)


def _attend(q: Tensor, k: Tensor, v: Tensor, rule: str) -> Tensor:
    """``softmax(q k^T / sqrt(d)) v`` with the attention rule on ``q``, ``k`` and the output."""
    q, k = _attention(q, rule, True), _attention(k, rule, True)
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    context = attn.softmax(dim=-1) @ v
    return context if rule == "cp" else halve(context)


def _attention_forward(module: nn.Module, rule: str) -> Callable[[Tensor], Tensor]:
    """A forward of open_clip's ``AttentionPool2d`` / FastViT's ``Attention`` with the rule."""
    heads = module.num_heads
    if type(module).__name__ == "AttentionPool2d":

        def pool(x: Tensor) -> Tensor:
            b, c = x.shape[:2]
            t = x.reshape(b, c, -1).permute(2, 0, 1)  # (HW, B, C)
            t = torch.cat([t.mean(0, keepdim=True), t]) + module.positional_embedding[:, None]
            split = lambda u: u.reshape(u.shape[0], b, heads, -1).permute(1, 2, 0, 3)  # noqa: E731
            q = split(module.q_proj(t[:1]))  # only the first (mean) token is returned
            ctx = _attend(q, split(module.k_proj(t)), split(module.v_proj(t)), rule)
            return module.c_proj(ctx.permute(2, 0, 1, 3).reshape(b, c))

        return pool

    def attend(x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(-2, -1)
        qkv = module.qkv(t).reshape(b, h * w, 3, heads, module.head_dim).permute(2, 0, 3, 1, 4)
        ctx = _attend(qkv[0], qkv[1], qkv[2], rule).transpose(1, 2).reshape(b, h * w, c)
        return module.proj_drop(module.proj(ctx)).transpose(-2, -1).reshape(b, c, h, w)

    return attend


def _conv_fn(conv: nn.Module) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    return lambda x, w, b: conv._conv_forward(x, w, b)


def _channel_fn(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    out = x * w.reshape(shape)
    return out if b is None else out + b.reshape(shape)


def conv_lrp_rules(
    root: nn.Module, hooks: HookManager, gamma: float = 0.25, attention: str = "attnlrp"
) -> None:
    """Install the composite's rule on every submodule of ``root``.

    The batch norms' rules read their running statistics: call it on a model in eval mode
    (:class:`~captum_clip.attr.AttnLRP` sets it, and its hook manager restores the mode).

    Args:
        root: The vision tower (every module type must have a rule: :func:`check_conv_lrp`).
        hooks: Owns the hooks and patches (removed on its exit).
        gamma: The convolutions' gamma (0: LRP-epsilon for them as for linear layers).
        attention: ``"attnlrp"`` or ``"cp"`` for the attention of a pooler / FastViT stage.
    """
    check_conv_lrp(root)
    produced: dict[int, tuple[Tensor, nn.Module, Tensor]] = {}  # conv rule output -> conv

    def conv_hook(m: nn.Module, args: tuple, out: Tensor) -> Tensor:
        bias = m.bias
        res = linear_rule(args[0], out, _conv_fn(m), m.weight, bias, gamma, EPSILON_LINEAR)
        produced[id(res)] = (res, m, args[0])
        return res

    def bn_hook(m: nn.Module, args: tuple, out: Tensor) -> Tensor:
        x = args[0]
        with torch.no_grad():
            z = F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
        seen = produced.get(id(x))
        if seen is not None and seen[0] is x:  # conv -> bn: the merged layer gets the conv rule
            conv, cx = seen[1], seen[2]
            w, b = merged_batchnorm(conv, m)
            res = linear_rule(cx, z, _conv_fn(conv), w, b, gamma, EPSILON_LINEAR)
        else:  # a batch norm on its own: epsilon rule on the per-channel affine map
            scale, shift = batchnorm_affine(m)
            res = linear_rule(x, z, _channel_fn, scale, shift, 0.0, EPSILON_LINEAR)
        if hasattr(m, "act"):  # timm BatchNormAct2d: drop and act after the norm
            res = m.act(m.drop(res))
        return res

    def linear_hook(m: nn.Module, args: tuple, out: Tensor) -> Tensor:
        return linear_rule(args[0], out, F.linear, m.weight, m.bias, 0.0, EPSILON_LINEAR)

    def identity_hook(m: nn.Module, args: tuple, out: Tensor) -> Tensor:
        return IdentityRule.apply(args[0], out)

    handlers: dict[str, Callable[..., Any]] = {
        "conv": conv_hook,
        "batchnorm": bn_hook,
        "linear": linear_hook,
        "layernorm": lambda m, a, out: norm_rule(m, a[0], rms=False),
        "layernorm2d": lambda m, a, out: norm_rule(m, a[0], rms=False, channels_first=True),
        "activation": identity_hook,  # the identity rule
        "gate": identity_hook,  # x * gate(x): the gate held constant, all relevance to x
    }
    for module in root.modules():
        kind = rule_of(module)
        if kind == "attention":
            hooks.patch_attr(module, "forward", _attention_forward(module, attention))
        elif kind in handlers:
            hooks.forward(module, handlers[kind])
