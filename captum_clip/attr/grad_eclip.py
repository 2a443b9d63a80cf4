"""Grad-ECLIP: gradient-weighted values with a loosened attention of the last block.

Zhao, Wang, Zeng, Zhao, Chan, "Gradient-based Visual Explanation for Transformer-based
CLIP" (ICML 2024). The class token at the output of the last attention layer is
``o = sum_i A_i v_i``; a first-order expansion of the target score ``s`` around it gives
channel weights ``w_c = ds/do_c`` and per-token contributions ``w_c A_i v_ic``. Because
CLIP's last-layer attention is extremely sparse, the paper replaces the softmax ``A_i`` by
a "loosened" spatial weight: the min-max normalised cosine between the class query and
each patch key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import GradientAttribution
from torch import Tensor
from tqdm.auto import tqdm

from captum_clip._hooks import HookManager
from captum_clip.attr._vit_blocks import (
    BlockTrace,
    check_targets,
    guarded_modules,
    known_outputs,
    resolve_tower,
    slice_args,
    split_batches,
    to_input_shape,
    traced_scores,
)
from captum_clip.models import check_images

__all__ = ["GradECLIP", "grad_eclip_contributions"]

SPATIAL = ("loosened", "attention", "none")


def _heads_concat(t: Tensor) -> Tensor:
    b, heads, length, hd = t.shape
    return t.transpose(1, 2).reshape(b, length, heads * hd)


def grad_eclip_contributions(
    trace: BlockTrace, grad_context: Tensor, n_prefix: int, spatial: str = "loosened"
) -> Tensor:
    """Per-token contributions ``(B, L)`` before the ReLU.

    Args:
        trace: The last block's :class:`~captum_clip.attr._vit_blocks.BlockTrace`.
        grad_context: ``ds/d context`` ``(B, L, d)``; row 0 (class token) gives ``w``.
        n_prefix: Number of prefix tokens (class token first); patches follow.
        spatial: ``"loosened"`` (``lambda_i`` = min-max normalised ``cos(q_cls, k_i)``
            over the patches, the paper's choice), ``"attention"`` (the model's own
            per-head class-token attention ``A_h[cls, i]``; the contributions then sum to
            ``w . o_cls``) or ``"none"`` (``lambda_i = 1``).
    """
    w = grad_context[:, 0]  # (B, d)
    if spatial == "attention":
        b, heads, length, hd = trace.v.shape
        per_head = (trace.v * w.reshape(b, heads, 1, hd)).sum(-1)  # (B, heads, L)
        return (per_head * trace.probs[:, :, 0, :]).sum(1)
    v = _heads_concat(trace.v)
    contrib = (v * w[:, None, :]).sum(-1)  # (B, L)
    if spatial == "none":
        return contrib
    q_cls = _heads_concat(trace.q)[:, 0]
    cos = F.cosine_similarity(q_cls[:, None, :], _heads_concat(trace.k), dim=-1)  # (B, L)
    patches = cos[:, n_prefix:]
    lo = patches.min(dim=1, keepdim=True).values
    hi = patches.max(dim=1, keepdim=True).values
    span = hi - lo
    lam = torch.where(span > 0, (cos - lo) / span.clamp_min(1e-12), torch.ones_like(cos))
    return contrib * lam


class GradECLIP(GradientAttribution):
    """Grad-ECLIP maps for class-token CLIP ViTs (open_clip or Hugging Face).

    With the last block's attention output before ``out_proj`` ``o`` (heads concatenated,
    ``(L, d)``), its value vectors ``v_i`` and queries/keys ``q, k``::

        w_c      = d s_target / d o_{cls, c}                      (one backward pass)
        lambda_i = (cos(q_cls, k_i) - min_j cos) / (max_j cos - min_j cos)   (patches j)
        map_i    = ReLU( lambda_i * sum_c w_c v_{i, c} )

    The gradient is that of the *unchanged* model (its multi-head attention and the
    forward function's own score), taken with ``torch.autograd.grad`` wrt the traced
    attention output only.

    Args:
        forward_func: A :class:`~captum_clip.models.ClipClassifier` /
            :class:`~captum_clip.models.ClipSimilarity`, or any callable
            ``(images, *args) -> (B, n_outputs)`` running ``vision_model``'s blocks.
        vision_model: The CLIP model (or open_clip ``VisionTransformer`` / tower adapter)
            when ``forward_func`` has no ``.vision``.
        spatial: ``"loosened"`` (paper), ``"attention"`` or ``"none"``; see
            :func:`grad_eclip_contributions`.
    """

    def __init__(
        self, forward_func: Callable, vision_model: Any = None, spatial: str = "loosened"
    ) -> None:
        super().__init__(forward_func)
        if spatial not in SPATIAL:
            raise ValueError(f"spatial must be one of {SPATIAL}, got {spatial!r}")
        self.tower = resolve_tower(forward_func, vision_model, need_cls=True)
        self.spatial = spatial

    def attribute(
        self,
        inputs: Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
        internal_batch_size: int | None = None,
        show_progress: bool = False,
    ) -> Tensor:
        """Grad-ECLIP maps upsampled to the inputs.

        Args:
            inputs: ``(B, 3, H, W)`` preprocessed images.
            target: Output index (int, or one per example as a list or ``(B,)`` tensor);
                may be omitted when forward_func has a single output.
            additional_forward_args: Extra arguments passed to ``forward_func`` after
                the images (tensors with B rows are split with the batch).
            internal_batch_size: Process at most this many images per forward/backward.
            show_progress: Show a tqdm bar over the internal batches.

        Returns:
            ``(B, 3, H, W)``: the non-negative ``(h, w)`` map upsampled bilinearly
            (``align_corners=False``) to ``H x W`` and repeated over the 3 channels, on the
            inputs' device and dtype.
        """
        inputs = check_images(inputs, self.tower.image_size, name="inputs")
        batch = inputs.shape[0]
        targets = check_targets(target, batch, known_outputs(self.forward_func))
        last = self.tower.n_blocks - 1
        n_prefix = self.tower.n_prefix
        h, w = self.tower.grid_size
        maps = []
        slices = split_batches(batch, internal_batch_size)
        modules = guarded_modules(self.forward_func, self.tower)
        for sl in tqdm(slices, desc="Grad-ECLIP", disable=not show_progress):
            chunk_target = target if targets is None else targets[sl]
            with HookManager(*modules) as hooks:
                scores, store = traced_scores(
                    self.forward_func,
                    self.tower,
                    inputs[sl],
                    slice_args(additional_forward_args, sl, batch),
                    chunk_target,
                    [last],
                    hooks,
                )
                trace = store[last]
                (grad,) = torch.autograd.grad(scores, trace.context, torch.ones_like(scores))
            with torch.no_grad():
                contrib = grad_eclip_contributions(trace, grad, n_prefix, self.spatial)
                maps.append(F.relu(contrib[:, n_prefix:]).reshape(-1, h, w).detach())
        return to_input_shape(torch.cat(maps), inputs)
