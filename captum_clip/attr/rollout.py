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
from tqdm.auto import tqdm

from captum_clip._hooks import HookManager
from captum_clip.attr._vit_blocks import (
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


class GradientRollout(GradientAttribution):
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
        forward_func: A :class:`~captum_clip.models.ClipClassifier` /
            :class:`~captum_clip.models.ClipSimilarity`, or any callable
            ``(images, *args) -> (B, n_outputs)`` running ``vision_model``'s blocks.
        vision_model: The CLIP model (or open_clip ``VisionTransformer`` / tower adapter)
            when ``forward_func`` has no ``.vision``.
        start_layer: First block to accumulate (negative counts from the end). ``0`` (all
            blocks) is the paper's method; ``-1`` (last block only) is the default of the
            authors' CLIP notebook.
    """

    def __init__(self, forward_func: Callable, vision_model: Any = None, start_layer: int = 0):
        super().__init__(forward_func)
        self.tower = resolve_tower(forward_func, vision_model, need_cls=True)
        self.start_layer = self.tower.block_index(start_layer)

    def attribute(
        self,
        inputs: Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
        internal_batch_size: int | None = None,
        show_progress: bool = False,
    ) -> Tensor:
        """Rollout maps upsampled to the inputs.

        Args:
            inputs: ``(B, 3, H, W)`` preprocessed images.
            target: Output index (int, or one per example as a list or ``(B,)`` tensor);
                may be omitted when forward_func has a single output.
            additional_forward_args: Extra arguments passed to ``forward_func`` after
                the images (tensors with B rows are split with the batch).
            internal_batch_size: Process at most this many images per forward/backward.
            show_progress: Show a tqdm bar over the internal batches.

        Returns:
            ``(B, 3, H, W)``: the non-negative ``(h, w)`` map ``R[cls, patches]`` upsampled
            bilinearly (``align_corners=False``) to ``H x W`` and repeated over the 3
            channels, on the inputs' device and dtype.
        """
        inputs = check_images(inputs, self.tower.image_size, name="inputs")
        batch = inputs.shape[0]
        targets = check_targets(target, batch, known_outputs(self.forward_func))
        indices = list(range(self.start_layer, self.tower.n_blocks))
        n_prefix = self.tower.n_prefix
        h, w = self.tower.grid_size
        maps = []
        modules = guarded_modules(self.forward_func, self.tower)
        for sl in tqdm(split_batches(batch, internal_batch_size), disable=not show_progress):
            chunk_target = target if targets is None else targets[sl]
            with HookManager(*modules) as hooks:
                scores, store = traced_scores(
                    self.forward_func,
                    self.tower,
                    inputs[sl],
                    slice_args(additional_forward_args, sl, batch),
                    chunk_target,
                    indices,
                    hooks,
                )
                probs = [store[i].probs for i in indices]
                grads = torch.autograd.grad(
                    scores, probs, torch.ones_like(scores), allow_unused=True
                )
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(probs, grads)]
            with torch.no_grad():
                r = rollout_relevance([p.detach() for p in probs], grads)
                maps.append(r[:, 0, n_prefix:].reshape(-1, h, w))
        return to_input_shape(torch.cat(maps), inputs)
