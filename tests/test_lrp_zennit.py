"""Our LRP composite of convolutional towers against zennit's, where zennit has the layers.

zennit (0.5, a dependency of ``lxt``) is the reference implementation of LRP rules per
layer type. Here the RN50 trunk (convolutions with batch norms merged, ReLU, average
pooling, residual sums) and a plain conv / linear stack (max and adaptive pooling, linear
layers) run through zennit's ``Gamma`` / ``Epsilon`` / ``Pass`` / ``Norm`` rules with its
``MergeBatchNorm`` canonizers and through ours (:mod:`captum_clip.attr._conv_lrp`), from
the same relevance at the output, on the same model.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
from _tiny_conv import IMAGE, make_resnet
from torch import nn

from captum_clip._hooks import HookManager
from captum_clip.attr._conv_lrp import conv_lrp_rules

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
