"""LRP rules written as modified backward passes (relevance = gradient x input).

Every function here returns a tensor with the *same forward value* as the layer it stands
for, whose backward is changed so that ``input * input.grad`` is the rule's relevance when
``output * output.grad`` is the relevance above (the convention of ``lxt.efficient``). The
rules follow zennit 0.5 (``zennit.rules``) to the letter where zennit has them:

* :func:`linear_rule` with ``gamma > 0`` is zennit's generalised ``Gamma`` (positive and
  negative inputs and outputs handled apart, the bias in the denominators); with
  ``gamma == 0`` it is zennit's ``Epsilon``. ``fn(x, weight, bias)`` is the layer's
  functional form (a convolution, ``F.linear``, an element-wise affine map).
* :func:`merged_batchnorm`: a batch norm that follows a convolution is folded into it
  (zennit's ``MergeBatchNorm`` canonizer) and the conv rule runs on the merged layer.
* :class:`IdentityRule`: element-wise non-linearities (and a held-constant gate) pass the
  relevance unchanged, ``R_x = R_y`` (zennit's ``Pass``; the AttnLRP identity rule).
* :func:`norm_rule`: LayerNorm / RMSNorm with the standard deviation held constant
  (AttnLRP's identity rule on the normalisation); ``channels_first`` for LayerNorm2d.
* :func:`halve`: the uniform rule on one factor of a product (AttnLRP's attention).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "EPSILON",
    "IdentityRule",
    "batchnorm_affine",
    "halve",
    "linear_rule",
    "merged_batchnorm",
    "norm_rule",
    "stabilize",
]

EPSILON = 1e-10
"""Stabiliser of the identity rule's division (the rule is exact away from zero)."""

LayerFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + sign(z) * epsilon`` with sign(0) = +1 (zennit's ``stabilize``)."""
    return z + ((z == 0).to(z) + z.sign()) * epsilon


class IdentityRule(torch.autograd.Function):
    """``y = fn(x)`` given as ``y``; backward ``grad * y / x`` (the identity rule)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor) -> Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # 1e-10 is 0 there
        sign = torch.where(xf >= 0, 1.0, -1.0).to(xf.dtype)
        ctx.save_for_backward((y.to(xf.dtype) / (xf + EPSILON * sign)).to(x.dtype))
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


def halve(t: Tensor) -> Tensor:
    """Same value, half the gradient (the uniform rule on one factor of a product)."""
    return 0.5 * t + 0.5 * t.detach()


def norm_rule(module: nn.Module, x: Tensor, rms: bool, channels_first: bool = False) -> Tensor:
    """LayerNorm / RMSNorm recomputed with its scale constant in the backward.

    Args:
        module: The norm (its ``normalized_shape``, ``eps``, ``weight`` and ``bias`` are read).
        x: Its input.
        rms: RMSNorm (no centring).
        channels_first: A ``(B, C, H, W)`` LayerNorm2d normalising over ``C``.
    """
    if channels_first:
        return norm_rule(module, x.permute(0, 2, 3, 1), rms).permute(0, 3, 1, 2)
    dims = (
        tuple(range(-len(module.normalized_shape), 0))
        if hasattr(module, "normalized_shape")
        else (-1,)
    )
    xf = x if x.dtype == torch.float64 else x.float()  # half precision computed in float32
    eps = float(getattr(module, "eps", None) or getattr(module, "variance_epsilon", 1e-6))
    if rms:
        y = xf * torch.rsqrt(xf.pow(2).mean(dims, keepdim=True) + eps).detach()
    else:
        centred = xf - xf.mean(dims, keepdim=True)
        y = centred * torch.rsqrt(centred.pow(2).mean(dims, keepdim=True) + eps).detach()
    w, b = getattr(module, "weight", None), getattr(module, "bias", None)
    y = y * w.to(xf.dtype) if isinstance(w, Tensor) else y
    y = y + b.to(xf.dtype) if isinstance(b, Tensor) else y
    return y.to(x.dtype)


def _plus(t: Tensor | None, gamma: float, positive: bool) -> Tensor | None:
    """``t + gamma * t^+`` (or ``t^-``): zennit's ``GammaMod``."""
    if t is None:
        return None
    return t + gamma * (t.clamp(min=0) if positive else t.clamp(max=0))


def linear_rule(
    x: Tensor,
    z: Tensor,
    fn: LayerFn,
    weight: Tensor,
    bias: Tensor | None,
    gamma: float,
    epsilon: float,
) -> Tensor:
    """The generalised gamma rule (``gamma == 0``: the epsilon rule) on ``z = fn(x, w, b)``.

    Args:
        x: The layer's input (the relevance flows to it).
        z: The layer's output value (returned unchanged; ``z * grad`` is the relevance
            above).
        fn: ``fn(x, weight, bias)``, linear in ``x`` for a fixed ``weight``.
        weight: The layer's weight (merged with a batch norm where one follows).
        bias: Its bias, or None.
        gamma: Weight of the positive (same-sign) contributions; 0 gives LRP-epsilon.
        epsilon: Stabiliser of the denominators (zennit's default 1e-6).

    Returns:
        ``z`` with the rule's backward.
    """
    if x.dtype in (torch.float16, torch.bfloat16):  # the rule in float32, the value kept
        b = None if bias is None else bias.float()
        y = linear_rule(x.float(), z.float(), fn, weight.float(), b, gamma, epsilon)
        return z.detach() + (y - y.detach()).to(z.dtype)
    w = weight.detach()
    b = None if bias is None else bias.detach()
    z = z.detach()
    if gamma == 0:
        y = (z / stabilize(z, epsilon)) * fn(x, w, None)
        return z + (y - y.detach())
    xd = x.detach()
    w_pos, w_neg = _plus(w, gamma, True), _plus(w, gamma, False)
    with torch.no_grad():
        x_pos, x_neg = xd.clamp(min=0), xd.clamp(max=0)
        den_pos = fn(x_pos, w_pos, _plus(b, gamma, True)) + fn(x_neg, w_neg, None)
        den_neg = fn(x_pos, w_neg, _plus(b, gamma, False)) + fn(x_neg, w_pos, None)
        c_pos = (z > 0).to(z) * z / stabilize(den_pos, epsilon)
        c_neg = (z < 0).to(z) * z / stabilize(den_neg, epsilon)
    on_pos = x * (xd > 0).to(x)  # x^+ and x^- with their masks held constant
    on_neg = x * (xd < 0).to(x)
    y = c_pos * (fn(on_pos, w_pos, None) + fn(on_neg, w_neg, None)) + c_neg * (
        fn(on_pos, w_neg, None) + fn(on_neg, w_pos, None)
    )
    return z + (y - y.detach())


def batchnorm_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` of an eval-mode batch norm: ``bn(x) = scale * x + shift`` per channel."""
    scale = _bn_scale(bn)
    shift = -bn.running_mean.detach() * scale
    return scale, shift if bn.bias is None else shift + bn.bias.detach()


def _bn_scale(bn: nn.Module) -> Tensor:
    scale = 1.0 / (bn.running_var.detach() + bn.eps) ** 0.5
    return scale if bn.weight is None else bn.weight.detach() * scale


def merged_batchnorm(conv: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (zennit's ``MergeBatchNorm``)."""
    w = conv.weight.detach()
    scale = _bn_scale(bn)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros((), dtype=w.dtype)
    shift = bn.bias.detach() if bn.bias is not None else 0.0
    index = (slice(None),) + (None,) * (w.ndim - 1)
    return w * scale[index], (bias.to(w.device) - bn.running_mean.detach()) * scale + shift
