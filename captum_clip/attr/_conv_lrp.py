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

STRUCTURAL = frozenset({
    # containers, and timm / open_clip wrappers whose forward only chains submodules
    "Sequential", "ModuleList", "TimmModel", "ModifiedResNet", "Bottleneck",
    "ConvNeXt", "ConvNeXtStage", "ConvNeXtBlock", "Mlp", "NormMlpClassifierHead",
    "ClassifierHead", "SelectAdaptivePool2d", "FastVit", "FastVitStage", "MobileOneBlock",
    "ConvNormAct", "RepMixerBlock", "RepMixer", "ConvMlp", "PatchEmbed",
    "ReparamLargeKernelConv", "RepConditionalPosEnc", "AttentionBlock", "LayerScale2d",
    # element-wise linear or no-ops
    "Identity", "Dropout", "DropPath", "Flatten", "AvgPool2d", "AdaptiveAvgPool2d",
    "MaxPool2d", "ReLU",
})  # fmt: skip
"""Classes whose plain gradient is their rule (ConvNeXtBlock and LayerScale2d multiply by
their ``gamma``; RepMixer subtracts its ``norm`` branch; the rest are sums and reshapes)."""

_ACTIVATIONS = ("gelu", "silu", "swish", "tanh", "sigmoid", "mish", "hardswish")
_GATES = ("SEModule", "SqueezeExcite", "EffectiveSEModule")
EPSILON_LINEAR = 1e-6  # zennit's default for Epsilon / Gamma
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def rule_of(module: nn.Module) -> str | None:
    """The rule name of ``module``'s type (None: no rule, the tower is refused)."""
    name = type(module).__name__
    if type(module) in _CONVS:  # subclasses may pad or standardise their weights in forward
        return "conv"
    if type(module) is nn.Linear:
        return "linear"
    if isinstance(module, nn.BatchNorm2d) and name in ("BatchNorm2d", "BatchNormAct2d"):
        return "batchnorm"
    if name == "LayerNorm2d":
        return "layernorm2d"
    if isinstance(module, nn.LayerNorm) and name in ("LayerNorm", "LayerNormFp32"):
        return "layernorm"
    if name in ("AttentionPool2d", "Attention") and type(module).__module__ in (
        "open_clip.modified_resnet", "timm.models.fastvit"
    ):  # fmt: skip
        return "attention"
    if name in _GATES:
        return "gate"
    leaf = next(module.children(), None) is None and next(module.parameters(), None) is None
    if leaf and name.lower() in _ACTIVATIONS:
        return "activation"
    if name in STRUCTURAL:
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
