"""AttnLRP: layer-wise relevance propagation through the attention of CLIP vision towers.

Achtibat, Hatefi, Dreyer, Jain, Wiegand, Lapuschkin, Samek, "AttnLRP: Attention-Aware
Layer-Wise Relevance Propagation for Transformers" (ICML 2024; package ``lxt``). Written
the way ``lxt.efficient`` writes it: relevance is *gradient x input* of a forward pass
whose backward is modified so that every step is an LRP rule:

==================================== =====================================================
operation                            rule (how the backward changes)
==================================== =====================================================
linear layers, convolutions, sums    epsilon rule with epsilon -> 0: the plain gradient
                                     (biases absorb relevance)
element-wise activations (GELU, ...) identity rule: gradient ``act(x) / x``
LayerNorm / RMSNorm (also q/k norms)  identity rule on the normalisation: the standard
                                     deviation is a constant in the backward (over the
                                     channels for the channels-first LayerNorm2d of
                                     convolutional stems; a norm-act module's activation
                                     gets the identity rule after it)
softmax                              the paper's linearisation, ``x (R - s sum R)``: in
                                     gradient x input the plain softmax gradient
``q k^T`` and ``A v``                 uniform rule: each factor gets half -> the
                                     gradients of ``q`` and ``k`` are divided by 4, of
                                     ``v`` by 2 (``lxt``'s ``divide_gradient``)
gated MLP product (SwiGLU, GeGLU)    uniform rule: each factor's gradient halved
final L2 normalisation of the cosine identity rule: the norm is a constant
==================================== =====================================================

Convolutional stems before the blocks (ViTamin's ``MbConvStages``: convolutions, average
pooling, LayerNorm2d, GELU, residual sums) need no other rule: their linear parts and sums
keep the plain gradient (epsilon -> 0) and the norms and activations get the rules above,
so relevance is conserved through the stem as through the blocks
(``tests/test_attnlrp.py`` checks it on a bias-free ViTamin).

``attention="cp"`` is CP-LRP (Ali et al., ICML 2022), what ``lxt`` uses for torchvision
ViTs: no relevance flows through the attention weights (``q`` and ``k`` get no
gradient) and ``A v`` is linear in ``v``.

Convolutional towers (open_clip ModifiedResNet, timm ConvNeXt, FastViT / MobileCLIP) get
the composite of :mod:`captum_clip.attr._conv_lrp` instead: a rule per layer type (the
gamma rule on convolutions with their batch norms merged, epsilon on linear layers, the
rules above on norms, activations and attention), checked against zennit where zennit has
the layers; the table is in ``docs/peers.md``.

On ViTs, the modified backward is installed with hooks only (the model is never edited):
norm and activation modules get forward hooks that return the same value with the rule's
gradient; the attention of every block (and of an attention pooler) is recomputed by
:func:`~captum_clip.models.blocks.trace_blocks` / ``tower.trace_pool`` and the rule is
applied by tensor hooks on the traced ``q``, ``k`` and attention output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import GradientAttribution
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_clip._hooks import HookManager
from captum_clip._validate import check_images, check_target
from captum_clip.attr._base import split_batches
from captum_clip.attr._captum import CaptumConformance
from captum_clip.attr._conv_lrp import CONV_FAMILIES, check_conv_lrp, conv_lrp_rules
from captum_clip.attr._lrp_rules import IdentityRule, halve, norm_rule
from captum_clip.attr.legrad import text_head
from captum_clip.models.adapter import resolve_tower
from captum_clip.models.blocks import trace_blocks
from captum_clip.models.conv import ConvTower

__all__ = ["ATTENTION_RULES", "DEFAULT_INTERNAL_BATCH_SIZE", "AttnLRP", "lrp_module_rules"]

ATTENTION_RULES = ("attnlrp", "cp")
#: Images per backward pass unless ``internal_batch_size`` says otherwise: bounds host
#: memory (it grows with the images processed at once), the maps do not change.
DEFAULT_INTERNAL_BATCH_SIZE = 8
_ACTIVATIONS = ("gelu", "silu", "swish", "relu", "tanh", "sigmoid", "mish", "activation")


def _norm_act_rule(module: nn.Module, x: Tensor, rms: bool) -> Tensor:
    """A norm module's rule: channels-first (``LayerNorm2d``: ``(B, C, H, W)`` normalised
    over ``C``) where its class says so, then its activation (timm norm-act modules) with
    the activation's own hook (the identity rule)."""
    channels_first = type(module).__name__.lower().endswith("2d")
    y = norm_rule(module, x, rms, channels_first=channels_first)
    act = getattr(module, "act", None)
    if isinstance(act, nn.Module):
        drop = getattr(module, "drop", None)
        y = act(drop(y) if isinstance(drop, nn.Module) else y)
    return y


def _kind(module: nn.Module) -> str | None:
    name = type(module).__name__.lower()
    if isinstance(module, nn.LayerNorm) or name in ("layernorm", "layernorm2d", "layernormfp32"):
        return "layernorm"
    if "rmsnorm" in name:
        return "rmsnorm"
    if hasattr(module, "fc1_g") and hasattr(module, "fc1_x"):
        return "swiglu"
    if type(module).__name__ == "GeGluMlp" and hasattr(module, "w0") and hasattr(module, "w1"):
        return "geglu"  # ViTamin: act(w0 x) * w1 x
    if type(module).__name__ == "GluMlp":
        return "glu"
    leaf = next(module.children(), None) is None and next(module.parameters(), None) is None
    if leaf and any(a in name for a in _ACTIVATIONS):
        return "activation"
    return None


def lrp_module_rules(root: nn.Module, hooks: HookManager) -> None:
    """Install the norm, activation and gated-MLP rules on every submodule of ``root``.

    The gated products' halving hooks are installed after every activation's identity
    rule: hooks run in the order they were registered, and the identity rule (whose
    backward goes to the activation's input only) must come first on the gate's
    activation, or it would drop the halving behind it.

    Raises:
        ValueError: A gated MLP the rules do not cover (timm ``GluMlp``).
    """
    kinds = [(module, _kind(module)) for module in root.modules()]
    for module, kind in kinds:
        if kind in ("layernorm", "rmsnorm"):
            rms = kind == "rmsnorm"
            hooks.forward(module, lambda m, a, out, rms=rms: _norm_act_rule(m, a[0], rms))
        elif kind == "activation":
            hooks.forward(module, lambda m, a, out: IdentityRule.apply(a[0], out))
    for module, kind in kinds:
        if kind == "swiglu":  # act(fc1_g x) * fc1_x x: uniform rule on the product
            hooks.forward(module.fc1_x, lambda m, a, out: halve(out))
            hooks.forward(module.act, lambda m, a, out: halve(out))
        elif kind == "geglu":  # act(w0 x) * w1 x
            hooks.forward(module.w1, lambda m, a, out: halve(out))
            hooks.forward(module.act, lambda m, a, out: halve(out))
        elif kind == "glu":
            raise ValueError(
                "AttnLRP does not cover timm's GluMlp (the gated product is inside one "
                "forward); towers with SwiGLU (fc1_g / fc1_x) or plain MLPs are supported"
            )


class AttnLRP(CaptumConformance, GradientAttribution):
    """AttnLRP relevance at the input pixels of a CLIP image tower (ViT or convolutional).

    The explained score is the target logit ``scale * cos(image, text_c) (+ bias)`` of a
    :class:`~captum_clip.models.ClipClassifier` (the cosine of a
    :class:`~captum_clip.models.ClipSimilarity`); the relevance is propagated through the
    vision tower with the rules in the module docstring and returned at the pixels,
    ``(B, 3, H, W)`` like the inputs (sum over channels for a map). Relevance is
    conserved layer to layer up to what biases and the epsilon absorb.

    On a convolutional tower (open_clip ModifiedResNet, timm ConvNeXt, FastViT /
    MobileCLIP) the rules are the composite of :mod:`captum_clip.attr._conv_lrp` (one
    rule per layer type, zennit's where zennit has one: the gamma rule on convolutions
    with batch norms merged, epsilon on linear layers, the identity rule on activations,
    LayerNorm as above, the attention rule of ``attention`` in attention pools and
    FastViT's attention stage); the tower runs in eval mode (restored afterwards).

    One forward and one backward pass per image (no parameter gradients kept), 8 images
    at a time unless ``internal_batch_size`` says otherwise (memory grows with the images
    in one backward pass; the maps do not depend on it).

    Args:
        forward_func: A ClipClassifier / ClipSimilarity, or any callable with
            ``text_embeddings=`` and ``vision_model=`` given (only the tower and the text
            embeddings are used).
        vision_model: See :class:`~captum_clip.attr._base.PatchMapAttribution`.
        attention: ``"attnlrp"`` (uniform rule through ``q k^T`` and ``A v``, the paper)
            or ``"cp"`` (CP-LRP: attention weights held constant).
        conv_gamma: The gamma of the convolutions' gamma rule on a convolutional tower
            (zennit's default 0.25; 0 gives the epsilon rule). Unused on a ViT.
        text_embeddings: ``(n_outputs, D)`` text embeddings (default: the forward
            function's).
    """

    def __init__(
        self,
        forward_func: Callable,
        vision_model: Any = None,
        attention: str = "attnlrp",
        text_embeddings: Tensor | None = None,
        conv_gamma: float = 0.25,
    ) -> None:
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        if attention not in ATTENTION_RULES:
            raise ValueError(f"attention must be one of {ATTENTION_RULES}, got {attention!r}")
        if isinstance(conv_gamma, bool) or not isinstance(conv_gamma, (int, float)):
            raise TypeError(f"conv_gamma must be a float >= 0, got {type(conv_gamma).__name__}")
        if not conv_gamma >= 0:
            raise ValueError(f"conv_gamma must be a float >= 0, got {conv_gamma!r}")
        super().__init__(forward_func)
        tower = resolve_tower(forward_func, vision_model)
        self.is_conv = not tower.is_vit
        if self.is_conv:
            check_conv_lrp(tower.module)
            if not isinstance(tower, ConvTower):
                raise ValueError(
                    f"AttnLRP needs a ViT or a known convolutional tower ({CONV_FAMILIES}); "
                    f"got {type(tower.module).__name__}"
                )
            self.tower = tower
        else:
            self.tower = resolve_tower(forward_func, vision_model, vit=True, need_cls=False)
        self.conv_gamma = float(conv_gamma)
        self.attention = attention
        self.text = text_head(forward_func, text_embeddings)
        scale = getattr(forward_func, "scale", None)
        bias = getattr(forward_func, "bias", None)
        self.scale = float(scale) if isinstance(scale, Tensor) else 1.0
        self.bias = float(bias) if isinstance(bias, Tensor) else 0.0

    def has_convergence_delta(self) -> bool:
        return False

    def _guarded(self) -> list[nn.Module]:
        ff = self.forward_func
        return self.tower.guarded + ([ff] if isinstance(ff, nn.Module) else [])

    def _apply_attention_rule(self, traces: list[Any], pooler: Any) -> None:
        for t in traces:
            if self.attention == "cp":
                t.q.register_hook(torch.zeros_like)
                t.k.register_hook(torch.zeros_like)
            else:
                for x in (t.q, t.k, t.context):
                    x.register_hook(lambda g: 0.5 * g)
        if pooler is not None:  # the pooler's query is a constant: q k^T is linear in k
            if self.attention == "cp":
                pooler.k.register_hook(torch.zeros_like)
            else:
                pooler.context.register_hook(lambda g: 0.5 * g)

    def _embedding(self, x: Tensor, hooks: HookManager) -> Tensor:
        """The image embedding of ``x`` with the rules installed on the tower."""
        tower = self.tower
        if self.is_conv:
            for m in self._guarded():
                m.eval()  # the batch norms' rules read the running statistics
            conv_lrp_rules(tower.module, hooks, self.conv_gamma, self.attention)
            return tower.run(x).float()
        lrp_module_rules(tower.module, hooks)
        pool = tower.trace_pool(hooks) if tower.pool_type == "attn" else None
        store = trace_blocks(tower, list(range(tower.n_blocks)), hooks)
        emb = tower.head(tower.run_blocks(tower.embed(x), 0, tower.n_blocks)).float()
        self._apply_attention_rule(
            [store[i] for i in range(tower.n_blocks)], None if pool is None else pool["pool"]
        )
        return emb

    def _relevance(self, images: Tensor, target: Tensor) -> Tensor:
        with HookManager(*self._guarded()) as hooks, torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            emb = self._embedding(x, hooks)
            unit = emb / emb.norm(dim=-1, keepdim=True).detach()  # identity rule on the norm
            text = self.text.to(emb.device)[target.to(emb.device)]
            score = self.scale * (unit * text).sum(-1)
            (grad,) = torch.autograd.grad(score.sum(), x)
        return (x * grad).detach()

    def attribute(  # type: ignore[override]
        self,
        inputs: Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        show_progress: bool = False,
    ) -> Tensor:
        """Pixel relevance ``(B, 3, H, W)`` of the target score.

        Args:
            inputs: ``(B, 3, H, W)`` preprocessed images at the model's size.
            target: See :mod:`captum_clip._validate` (an int, or one per example); may be
                None with a single text embedding.
            additional_forward_args: Must be None (the tower is read directly).
            internal_batch_size: Process at most this many images at once (None: all).
                The backward keeps every block's activations and attention maps of the
                images it processes: about 0.25 GB of host memory per image for a
                ViT-B-16 (32 images at once: 8.0 GB above the model; 8 at once: 2.2 GB,
                no slower on the CPU; ``benchmarks/results/lrp_memory.md``), hence the
                default 8. The maps do not depend on it.
            show_progress: Show a tqdm bar over the internal batches.
        """
        if additional_forward_args is not None:
            raise ValueError(
                "AttnLRP reads the vision tower directly and never calls forward_func; "
                "additional_forward_args must be None"
            )
        inputs = check_images(inputs, self.tower.image_size, name="inputs", dtype=self.tower.dtype)
        b, n_out = inputs.shape[0], self.text.shape[0]
        targets = check_target(target, b, n_out)
        if targets is None:
            if n_out != 1:
                raise ValueError(f"target is required: there are {n_out} text embeddings")
            targets = torch.zeros(b, dtype=torch.long)
        out = []
        for sl in tqdm(split_batches(b, internal_batch_size), desc="AttnLRP",
                       disable=not show_progress):  # fmt: skip
            out.append(self._relevance(inputs[sl], targets[sl]))
        return torch.cat(out).to(inputs.dtype)
