"""MaskCLIP: dense patch-text similarities from the value path of the last block.

Zhou, Loy, Dai, "Extract Free Dense Labels from CLIP" (ECCV 2022). The last attention
layer of a CLIP ViT mixes all tokens into the class token; MaskCLIP drops that mixing
(the query-key attention) and reads each patch through the value path alone, then maps
it with the model's own ``ln_post`` and projection into the joint embedding space, where
its cosine to a text embedding is a dense, gradient-free score map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_clip._hooks import HookManager
from captum_clip.attr._base import PatchMapAttribution
from captum_clip.models.base import VisionTower

__all__ = ["MaskCLIP", "value_path_embeddings"]


def value_path_embeddings(
    tower: VisionTower, images: Tensor, residual: bool = True, mlp: bool = True
) -> Tensor:
    """``(B, P, D)`` float32 embeddings of every patch through the last block's value path
    (its attention replaced by the identity) and the tower's per-token head: MaskCLIP's
    dense features (class docstring), unnormalised. ``images`` on the tower's device."""
    x = tower.hidden_state(images, tower.n_blocks - 1)[:, tower.n_prefix :]
    view = tower.block_view(-1)
    z = view.ls_1(view.out_proj(view.value(view.ln_1(x))))
    if residual:
        z = x + z
    if mlp:
        z = z + view.ls_2(view.mlp(view.ln_2(z)))
    return tower.token_head(z).float()


class MaskCLIP(PatchMapAttribution):
    """MaskCLIP patch-text cosine maps for CLIP ViTs (open_clip or Hugging Face).

    For the input ``x`` of the last block and each patch token ``i`` (class token dropped):

    ``z_i = x_i + out_proj(W_v ln_1(x_i) + b_v)`` (``residual=True``; else without ``x_i``),
    ``z_i = z_i + mlp(ln_2(z_i))`` (``mlp=True``), ``e_i = proj(ln_post(z_i))`` and the map
    is ``cos(e_i, t_target)`` on the ``(h, w)`` patch grid: the last block with its
    attention matrix replaced by the identity. The defaults follow the MaskCLIP reference
    implementation, which keeps the residual and the MLP; ``residual=False, mlp=False``
    gives the pure value-embedding variant (as in ClearCLIP). No gradients are computed.

    Towers with an attention pooler (SigLIP MAP, CoCa) map ``z_i`` with their per-token
    head, the pooler applied to ``z_i`` alone: one key gets attention weight 1, so this is
    the pooler's value path too -- the last block *and* the pooler with their attention
    replaced by the identity. Average-pooled towers use ``fc_norm`` and the head.

    Args:
        forward_func: A :class:`~captum_clip.models.ClipClassifier` or
            :class:`~captum_clip.models.ClipSimilarity` (its ``text_embeddings`` are the
            targets), or any module exposing ``text_embeddings`` ``(n, D)``.
        vision_model: See :class:`~captum_clip.attr._base.PatchMapAttribution`.
        text_embeddings: ``(n_targets, D)`` target embeddings overriding
            ``forward_func.text_embeddings`` (normalised here).
        residual: Keep the last block's residual connection (reference MaskCLIP: True).
        mlp: Keep the last block's MLP (reference MaskCLIP: True).
    """

    needs_grad = False
    calls_forward = False
    desc = "MaskCLIP"

    def __init__(
        self,
        forward_func: Callable,
        vision_model: Any = None,
        text_embeddings: Tensor | None = None,
        residual: bool = True,
        mlp: bool = True,
    ) -> None:
        super().__init__(forward_func, vision_model, need_cls=False)
        emb = text_embeddings
        if emb is None:
            emb = getattr(forward_func, "text_embeddings", None)
        if not isinstance(emb, Tensor):
            raise TypeError(
                "MaskCLIP needs target text embeddings: use a ClipClassifier/ClipSimilarity "
                f"or pass text_embeddings=, got {type(emb).__name__}"
            )
        if emb.ndim != 2 or emb.shape[0] == 0 or not emb.is_floating_point():
            raise ValueError(
                f"text_embeddings must be a non-empty floating (n, D) tensor, got "
                f"{emb.dtype} {tuple(emb.shape)}"
            )
        if not torch.isfinite(emb).all():
            raise ValueError("text_embeddings contains NaN or infinite values")
        self.text_embeddings = F.normalize(emb.detach().float(), dim=-1)
        self.residual = bool(residual)
        self.mlp = bool(mlp)

    def n_outputs(self) -> int:
        return int(self.text_embeddings.shape[0])

    def _patch_maps(
        self, images: Tensor, target: Tensor | None, args: tuple, hooks: HookManager
    ) -> Tensor:
        """Cosine maps ``(B, h, w)`` in ``[-1, 1]`` on the patch grid."""
        tower = self.tower
        images = images.to(next(tower.module.parameters()).device)
        emb = F.normalize(value_path_embeddings(tower, images, self.residual, self.mlp), dim=-1)
        if emb.shape[-1] != self.text_embeddings.shape[-1]:
            raise ValueError(
                f"text_embeddings have {self.text_embeddings.shape[-1]} dimensions but the "
                f"vision tower embeds into {emb.shape[-1]}"
            )
        text = self.text_embeddings.to(emb.device)[target.to(emb.device)]
        cos = (emb * text[:, None, :]).sum(-1)
        h, w = tower.grid_size
        return cos.reshape(images.shape[0], h, w)
