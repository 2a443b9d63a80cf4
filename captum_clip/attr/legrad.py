"""LeGrad: the score's sensitivity to every layer's attention map.

Bousselham, Boggust, Chaybouti, Strobelt, Kuehne, "LeGrad: An Explainability Method for
Vision Transformers via Feature Formation Sensitivity" (2024; reference code
``WalBouss/LeGrad``, package ``legrad_torch``). Each layer ``l`` from ``start_layer`` on
gets its own score: the layer's tokens pooled and sent through the tower's head as if the
layer were the last one, compared with the text by cosine. The map is the gradient of
that score with respect to the layer's own attention probabilities, negative parts
dropped, averaged over heads and query rows, summed over the layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import GradientAttribution
from torch import Tensor

from captum_clip._hooks import HookManager
from captum_clip.attr._base import PatchMapAttribution
from captum_clip.models.blocks import trace_blocks

__all__ = ["LeGrad", "legrad_layer_map", "text_head"]


def text_head(forward_func: Any, text_embeddings: Tensor | None = None) -> Tensor:
    """The ``(n_outputs, D)`` text embeddings a method compares image embeddings with.

    Args:
        forward_func: A :class:`~captum_clip.models.ClipClassifier` /
            :class:`~captum_clip.models.ClipSimilarity` (their ``text_embeddings``).
        text_embeddings: Given explicitly (any other ``forward_func``).

    Raises:
        ValueError: Neither is available, or the given tensor is not 2-D.
    """
    emb = text_embeddings
    if emb is None:
        emb = getattr(forward_func, "text_embeddings", None)
    if not isinstance(emb, Tensor) or emb.ndim != 2:
        got = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
        raise ValueError(
            "this method scores image embeddings against text embeddings: pass a "
            "ClipClassifier / ClipSimilarity as forward_func, or text_embeddings= as an "
            f"(n_outputs, D) tensor; got {got}"
        )
    return F.normalize(emb.detach().float(), dim=-1)


def legrad_layer_map(grad: Tensor, n_keys_before: int, pooled_query: bool) -> Tensor:
    """One layer's LeGrad row ``(B, n_keys - n_keys_before)``.

    Args:
        grad: ``d score / d probs`` ``(B, heads, n_queries, n_keys)``.
        n_keys_before: Keys before the patches (prefix tokens).
        pooled_query: Read only the first query (an attention pooler's pooled query)
            instead of the mean over every query row (a self-attention block).
    """
    g = grad.clamp(min=0).mean(dim=1)  # ReLU, mean over heads: (B, n_queries, n_keys)
    row = g[:, 0] if pooled_query else g.mean(dim=1)
    return row[:, n_keys_before:]


class LeGrad(PatchMapAttribution, GradientAttribution):
    """LeGrad maps for CLIP ViTs (open_clip, Hugging Face, timm ViT / EVA / SigLIP, CoCa).

    For every block ``l >= start_layer`` with output tokens ``z_l`` and attention
    probabilities ``A_l`` ``(heads, L, L)``, and the target's text embedding ``t``::

        s_l  = cos(head_l(z_l), t)
        map  = sum_l  mean_queries mean_heads ReLU(d s_l / d A_l)   [patch keys]

    ``head_l`` is the tower's pooling and head applied to layer ``l``: class-token towers
    use the mean of all tokens through the per-token head (the reference's CLIP recipe:
    ``ln_post(mean(z_l)) @ proj``); average-pooling towers their own head; towers with an
    attention pooler (SigLIP MAP, CoCa) run the pooler on ``z_l`` and the gradient is
    taken with respect to the *pooler's* attention of its pooled query, as in the
    reference's SigLIP and CoCa paths. The reference's SigLIP "empty prompt" correction
    (zeroing patches that also light up for ``"a photo of a"``) needs a tokenizer and is
    not applied; its final min-max scaling is left out (maps keep their units).

    One forward pass and one backward pass per layer. No parameter gradients are kept.

    Args:
        forward_func: A :class:`~captum_clip.models.ClipClassifier` /
            :class:`~captum_clip.models.ClipSimilarity`, or any callable with
            ``text_embeddings=`` given (only its vision tower and those embeddings are
            used; the target indexes the text embeddings).
        vision_model: See :class:`~captum_clip.attr._base.PatchMapAttribution`.
        start_layer: First block (negative counts from the end); the reference default is
            ``-2`` (the last two blocks).
        text_embeddings: ``(n_outputs, D)`` text embeddings (default: the forward
            function's).
    """

    desc = "LeGrad"
    calls_forward = False

    def __init__(
        self,
        forward_func: Callable,
        vision_model: Any = None,
        start_layer: int = -2,
        text_embeddings: Tensor | None = None,
    ) -> None:
        super().__init__(forward_func, vision_model, need_cls=False)
        self.start_layer = self.tower.block_index(start_layer)
        self.text = text_head(forward_func, text_embeddings)

    def n_outputs(self) -> int | None:
        return int(self.text.shape[0])

    def _layer_feature(self, z: Tensor) -> Tensor:
        tower = self.tower
        if tower.pool_type == "tok":
            return tower.token_head(z.mean(dim=1))
        return tower.head(z)

    def _patch_maps(
        self, images: Tensor, target: Tensor | None, args: tuple, hooks: HookManager
    ) -> Tensor:
        """Sum over layers of the per-layer rows, on the ``(h, w)`` grid."""
        tower = self.tower
        n_out = self.text.shape[0]
        if target is None and n_out != 1:
            raise ValueError(f"target is required: there are {n_out} text embeddings")
        t = torch.zeros(images.shape[0], dtype=torch.long) if target is None else target
        text = self.text.to(images.device)[t.to(images.device)]  # (B, D)
        indices = list(range(self.start_layer, tower.n_blocks))
        pool = tower.trace_pool(hooks) if tower.pool_type == "attn" else None
        store = trace_blocks(tower, indices, hooks)
        total = 0.0
        with torch.enable_grad():
            tower.run_blocks(tower.embed(images), 0, tower.n_blocks)
            for i in indices:
                feat = self._layer_feature(store[i].output)
                score = (F.normalize(feat.float(), dim=-1) * text).sum()
                if pool is None:
                    probs, before, pooled = store[i].probs, tower.n_prefix, False
                else:
                    probs = pool["pool"].probs
                    before, pooled = probs.shape[-1] - tower.n_patches, True
                (grad,) = torch.autograd.grad(score, probs, retain_graph=True)
                total = total + legrad_layer_map(grad.detach(), before, pooled)
        h, w = tower.grid_size
        return total.reshape(-1, h, w)
