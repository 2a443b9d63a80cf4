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

__all__ = ["GradientRollout", "pooled_row", "rollout_relevance"]


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


def pooled_row(tower: Any, batch: int, pool_probs: Tensor | None = None,
               pool_grad: Tensor | None = None) -> Tensor:  # fmt: skip
    """The row ``(B, L)`` of the rollout matrix read for the embedding.

    ``"tok"``: the class token (one-hot at 0). ``"avg"``: the mean row (``1 / n_patches``
    on every patch). ``"attn"`` (SigLIP MAP, CoCa): the attention pooler is one more
    attention layer whose query is the pooled one, so its row is weighted like a block's,
    ``mean_heads(ReLU(dA * A))`` of the pooled query (query 0) over the pooler's keys
    (``pool_probs`` ``(B, heads, n_queries, N)`` and their gradient ``pool_grad``).
    """
    length = tower.n_prefix + tower.n_patches
    row = torch.zeros(batch, length)
    if tower.pool_type == "tok":
        row[:, 0] = 1.0
    elif tower.pool_type == "avg":
        row[:, tower.n_prefix :] = 1.0 / tower.n_patches
    else:
        keys = (pool_grad * pool_probs).clamp(min=0).mean(dim=1)[:, 0]  # (B, N)
        row = row.to(keys)
        row[:, length - keys.shape[1] :] = keys
    return row.to(pool_probs.device if pool_probs is not None else row.device)


class GradientRollout(PatchMapAttribution, GradientAttribution):
    """Gradient-weighted attention rollout (Chefer et al., 2021) for CLIP ViTs.

    For the blocks ``b = start_layer .. n_blocks-1``, with ``A_b`` the softmax attention
    probabilities ``(heads, L, L)`` and ``dA_b`` the gradient of the target score wrt them::

        A_bar_b = mean_heads( ReLU(dA_b * A_b) )
        R       = I;  R <- R + A_bar_b @ R   (in forward order)
        map     = (row @ R)[patches] on the (h, w) grid

    ``row`` is the class token's one-hot row for class-token towers; towers without one use
    their pooled row (:func:`pooled_row`): the mean row for average pooling, and for an
    attention pooler (SigLIP MAP, CoCa) the pooler's gradient-weighted attention of the
    pooled query, ``mean_heads(ReLU(dA_pool * A_pool))``.

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
        super().__init__(forward_func, vision_model, need_cls=False)
        self.start_layer = self.tower.block_index(start_layer)

    def _patch_maps(
        self, images: Tensor, target: Tensor | None, args: tuple, hooks: HookManager
    ) -> Tensor:
        """``(row @ R)[patches]`` on the ``(h, w)`` grid (non-negative)."""
        tower = self.tower
        indices = list(range(self.start_layer, tower.n_blocks))
        pool = tower.trace_pool(hooks) if tower.pool_type == "attn" else None
        scores, store = traced_scores(
            self.forward_func, tower, images, args, target, indices, hooks
        )
        probs = [store[i].probs for i in indices]
        extra = [] if pool is None else [_pool_trace(pool).probs]
        grads = torch.autograd.grad(
            scores, probs + extra, torch.ones_like(scores), allow_unused=True
        )
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(probs + extra, grads)]
        with torch.no_grad():
            r = rollout_relevance([p.detach() for p in probs], grads[: len(probs)])
            pp, pg = (extra[0].detach(), grads[-1]) if extra else (None, None)
            row = pooled_row(tower, images.shape[0], pp, pg).to(r)
            out = (row[:, None, :] @ r)[:, 0]
        h, w = tower.grid_size
        return out[:, tower.n_prefix :].reshape(-1, h, w)


def _pool_trace(store: dict) -> Any:
    if "pool" not in store:
        raise ValueError(
            "forward_func did not run the vision tower's attention pooler; pass the "
            "vision_model that forward_func actually uses"
        )
    return store["pool"]
