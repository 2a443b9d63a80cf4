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

from captum_clip._hooks import HookManager
from captum_clip.attr._base import PatchMapAttribution, traced_scores
from captum_clip.models.blocks import BlockTrace

__all__ = ["GradECLIP", "grad_eclip_contributions"]

SPATIAL = ("loosened", "attention", "none")


def _heads_concat(t: Tensor) -> Tensor:
    b, heads, length, hd = t.shape
    return t.transpose(1, 2).reshape(b, length, heads * hd)


def grad_eclip_contributions(
    trace: BlockTrace,
    grad_context: Tensor,
    n_prefix: int,
    spatial: str = "loosened",
    row: Tensor | None = None,
) -> Tensor:
    """Per-token contributions ``(B, L)`` before the ReLU.

    Args:
        trace: The :class:`~captum_clip.models.blocks.BlockTrace` of the attention that
            forms the embedding (the last block, or an attention pooler).
        grad_context: ``ds/d context`` ``(B, L_q, d)``; the pooled row gives ``w``.
        n_prefix: Number of keys before the patches (class / register tokens).
        spatial: ``"loosened"`` (``lambda_i`` = min-max normalised ``cos(q_pooled, k_i)``
            over the patches, the paper's choice), ``"attention"`` (the model's own
            per-head attention of the pooled query ``A_h[pooled, i]``; the contributions
            then sum to ``w . o_pooled``) or ``"none"`` (``lambda_i = 1``).
        row: ``(B, L_q)`` weights of the pooled query over the rows (default: one-hot at
            0, the class token or the pooler's first query). With a ``row``, ``q_pooled``
            and ``A[pooled]`` are the ``row``-weighted queries and attention rows and
            ``w`` is the sum of the gradients of the rows with non-zero weight (average
            pooling: the mean patch row, with the gradient of all patch rows).
    """
    if row is None:
        w = grad_context[:, 0]  # (B, d)
        a_pool = trace.probs[:, :, 0, :]
        q_pool = _heads_concat(trace.q)[:, 0]
    else:
        row = row.to(grad_context)
        w = (grad_context * (row > 0)[:, :, None]).sum(1)
        a_pool = torch.einsum("bq,bhqk->bhk", row, trace.probs)
        q_pool = torch.einsum("bq,bqc->bc", row, _heads_concat(trace.q))
    if spatial == "attention":
        b, heads, length, hd = trace.v.shape
        per_head = (trace.v * w.reshape(b, heads, 1, hd)).sum(-1)  # (B, heads, L)
        return (per_head * a_pool).sum(1)
    v = _heads_concat(trace.v)
    contrib = (v * w[:, None, :]).sum(-1)  # (B, L)
    if spatial == "none":
        return contrib
    cos = F.cosine_similarity(q_pool[:, None, :], _heads_concat(trace.k), dim=-1)  # (B, L)
    patches = cos[:, n_prefix:]
    lo = patches.min(dim=1, keepdim=True).values
    hi = patches.max(dim=1, keepdim=True).values
    span = hi - lo
    lam = torch.where(span > 0, (cos - lo) / span.clamp_min(1e-12), torch.ones_like(cos))
    return contrib * lam


class GradECLIP(PatchMapAttribution, GradientAttribution):
    """Grad-ECLIP maps for CLIP ViTs (open_clip, Hugging Face, timm ViT / EVA, CoCa).

    With the last block's attention output before ``out_proj`` ``o`` (heads concatenated,
    ``(L, d)``), its value vectors ``v_i`` and queries/keys ``q, k``::

        w_c      = d s_target / d o_{cls, c}                      (one backward pass)
        lambda_i = (cos(q_cls, k_i) - min_j cos) / (max_j cos - min_j cos)   (patches j)
        map_i    = ReLU( lambda_i * sum_c w_c v_{i, c} )

    The attention read is the one that forms the embedding: the last block's class-token
    row for class-token towers; for an attention pooler (SigLIP MAP, CoCa) the pooler
    itself (its pooled query, keys and values: the pooler is the last attention that
    mixes tokens into the embedding); for average pooling the last block's mean patch row
    (see ``row`` in :func:`grad_eclip_contributions`).

    The gradient is that of the *unchanged* model (its multi-head attention and the
    forward function's own score), taken with ``torch.autograd.grad`` wrt the traced
    attention output only.

    Args:
        forward_func, vision_model: See
            :class:`~captum_clip.attr._base.PatchMapAttribution`.
        spatial: ``"loosened"`` (paper), ``"attention"`` or ``"none"``; see
            :func:`grad_eclip_contributions`.
    """

    desc = "Grad-ECLIP"

    def __init__(
        self, forward_func: Callable, vision_model: Any = None, spatial: str = "loosened"
    ) -> None:
        if spatial not in SPATIAL:
            raise ValueError(f"spatial must be one of {SPATIAL}, got {spatial!r}")
        super().__init__(forward_func, vision_model, need_cls=False)
        self.spatial = spatial

    def _patch_maps(
        self, images: Tensor, target: Tensor | None, args: tuple, hooks: HookManager
    ) -> Tensor:
        """``ReLU(lambda_i * sum_c w_c v_ic)`` on the ``(h, w)`` grid."""
        tower = self.tower
        last = tower.n_blocks - 1
        pool = tower.trace_pool(hooks) if tower.pool_type == "attn" else None
        scores, store = traced_scores(self.forward_func, tower, images, args, target, [last], hooks)
        n_prefix, row = tower.n_prefix, None
        if pool is None:
            trace = store[last]
            if tower.pool_type == "avg":
                row = torch.zeros(trace.context.shape[:2], device=trace.context.device)
                row[:, n_prefix:] = 1.0 / tower.n_patches
        else:
            if "pool" not in pool:
                raise ValueError(
                    "forward_func did not run the vision tower's attention pooler; pass the "
                    "vision_model that forward_func actually uses"
                )
            trace = pool["pool"]
            n_prefix = trace.k.shape[2] - tower.n_patches  # keys before the patches
        (grad,) = torch.autograd.grad(scores, trace.context, torch.ones_like(scores))
        with torch.no_grad():
            contrib = grad_eclip_contributions(trace, grad, n_prefix, self.spatial, row)
        h, w = tower.grid_size
        return F.relu(contrib[:, n_prefix:]).reshape(-1, h, w)
