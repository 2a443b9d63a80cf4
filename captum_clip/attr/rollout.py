"""Gradient-weighted attention rollout for CLIP ViTs.

Chefer, Gur, Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
Encoder-Decoder Transformers" (ICCV 2021). Every block's attention probabilities are
weighted by the gradient of the target score, negative contributions are dropped, heads
are averaged, and the per-block maps are accumulated through the residual stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import GradientAttribution
from torch import Tensor

from captum_clip._hooks import HookManager
from captum_clip.attr._base import PatchMapAttribution, traced_scores

__all__ = ["GradientRollout", "rollout_relevance"]


def rollout_relevance(probs: list[Tensor], grads: list[Tensor]) -> Tensor:
    """Relevance matrix ``R`` ``(B, L, L)`` of Chefer et al. (2021), eq. (5)-(6).

    Args:
        probs: Per block (in forward order) the attention probabilities ``(B, heads, L, L)``.
        grads: The gradients of the target score wrt each of ``probs``.
    """
    b, _, length, _ = probs[0].shape
    r = torch.eye(length, dtype=probs[0].dtype, device=probs[0].device).expand(b, -1, -1)
    for a, g in zip(probs, grads, strict=True):
        a_bar = (g * a).clamp(min=0).mean(dim=1)  # E_h[(grad A ⊙ A)^+]
        r = r + a_bar @ r
    return r


class GradientRollout(PatchMapAttribution, GradientAttribution):
    """Gradient-weighted attention rollout (Chefer et al., 2021) for class-token CLIP ViTs.

    For the blocks ``b = start_layer .. n_blocks-1``, with ``A_b`` the softmax attention
    probabilities ``(heads, L, L)`` and ``dA_b`` the gradient of the target score wrt them::

        A_bar_b = mean_heads( ReLU(dA_b * A_b) )
        R       = I;  R <- R + A_bar_b @ R   (in forward order)
        map     = R[cls, patches] on the (h, w) grid

    The attention probabilities are recomputed from each block's own weights by a
    handwritten block forward that is swapped in for one forward pass (tested equal to
    the block's output, always restored); gradients are taken with
    ``torch.autograd.grad`` wrt those probabilities only.

    Args:
        forward_func, vision_model: See
            :class:`~captum_clip.attr._base.PatchMapAttribution`.
        start_layer: First block to accumulate (negative counts from the end). ``0`` (all
            blocks) is the paper's method; ``-1`` (last block only) is the default of the
            authors' CLIP notebook.
    """

    desc = "rollout"

    def __init__(self, forward_func: Callable, vision_model: Any = None, start_layer: int = 0):
        super().__init__(forward_func, vision_model)
        self.start_layer = self.tower.block_index(start_layer)

    def _patch_maps(
        self, images: Tensor, target: Tensor | None, args: tuple, hooks: HookManager
    ) -> Tensor:
        """``R[cls, patches]`` on the ``(h, w)`` grid (non-negative)."""
        indices = list(range(self.start_layer, self.tower.n_blocks))
        scores, store = traced_scores(
            self.forward_func, self.tower, images, args, target, indices, hooks
        )
        probs = [store[i].probs for i in indices]
        grads = torch.autograd.grad(scores, probs, torch.ones_like(scores), allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(probs, grads)]
        with torch.no_grad():
            r = rollout_relevance([p.detach() for p in probs], grads)
        h, w = self.tower.grid_size
        return r[:, 0, self.tower.n_prefix :].reshape(-1, h, w)
