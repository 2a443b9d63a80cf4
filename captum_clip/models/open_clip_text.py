"""open_clip's text transformer (``CLIP``, ``CustomTextCLIP`` and ``CoCa`` text towers).

What the family is: token embeddings plus positions, pre-norm ``ResidualAttentionBlock``s
with a causal mask (or none: ``no_causal_mask``, then optionally a padding mask), one
token pooled (``argmax`` / ``eos`` / ``last`` / ``first``), ``ln_final`` and the projection.

CoCa (``embed_cls``): a learned class token is *appended* after the ids, so the blocks
see ``S + 1`` tokens; the mask is causal plus a per-example padding mask over the keys
(open_clip's legacy CoCa mask shifts the padding mask by one position unless
``correct_cls_mask``; it is reproduced exactly, through open_clip's own ``_embeds``), the
appended token (position ``S``) is pooled, then ``ln_final`` and the projection.

:func:`text_tower` picks this adapter or :class:`~captum_clip.models.open_clip_hf_text.OpenClipHFText`
(Hugging Face text towers inside open_clip).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captum_clip.models.base import TextTower
from captum_clip.models.open_clip_hf_text import OpenClipHFText, is_open_clip_hf_text

__all__ = ["OpenClipText", "text_tower"]


class OpenClipText(TextTower):
    """Text tower of open_clip ``CLIP`` (attributes on the model), ``CustomTextCLIP`` or
    ``CoCa`` (appended class token, see module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.t = model.text if hasattr(model, "text") else model
        self.appended = getattr(self.t, "cls_emb", None) is not None
        """CoCa: a class token is appended after the ids (the blocks see ``S + 1`` tokens)."""

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.t.transformer.resblocks)

    @property
    def context_length(self) -> int:
        return int(self.t.positional_embedding.shape[0]) - int(self.appended)

    @property
    def vocab_size(self) -> int:
        return int(self.t.token_embedding.num_embeddings)

    @property
    def _pool_type(self) -> str:
        return getattr(self.model, "text_pool_type", getattr(self.t, "pool_type", "argmax"))

    def embed(self, ids: Tensor) -> Tensor:
        """Hidden state 0 ``(B, S, d)`` (``(B, S + 1, d)`` with CoCa's class token)."""
        if self.appended:
            return self.t._embeds(ids)[0]
        cast = self.t.transformer.get_cast_dtype()
        x = self.t.token_embedding(ids).to(cast)
        return x + self.t.positional_embedding[: ids.shape[1]].to(cast)

    def attention_mask(self, ids: Tensor, dtype: torch.dtype) -> Tensor | None:
        """The additive mask the text blocks use for ``ids``: causal ``(S, S)``, or
        ``(B * heads, L, L)`` with a padding mask (and always with CoCa's class token)."""
        if self.appended or getattr(self.t, "use_pad_mask", False):
            return self.t._embeds(ids)[1]
        mask = self.t.attn_mask
        if mask is None:
            return None
        return mask[: ids.shape[1], : ids.shape[1]].to(dtype)

    def run_blocks(self, x: Tensor, ids: Tensor, start: int, stop: int) -> Tensor:
        mask = self.attention_mask(ids, x.dtype)
        batch_first = getattr(self.t.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in self.blocks[start:stop]:
            x = block(x, attn_mask=mask)
        return x if batch_first else x.transpose(0, 1)

    def pool_index(self, ids: Tensor) -> Tensor:
        """Position ``(B,)`` of the pooled token (CoCa: ``S``, the appended class token)."""
        if self.appended:
            return torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)
        pool = self._pool_type
        if pool == "argmax":
            return ids.argmax(dim=-1)
        if pool == "eos":
            eos = getattr(self.model, "text_eos_id", getattr(self.t, "eos_id", None))
            return (ids == eos).int().argmax(dim=-1)
        if pool == "last":
            return torch.full((ids.shape[0],), ids.shape[1] - 1, device=ids.device)
        if pool == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        raise ValueError(f"unsupported text pool type {pool!r}")

    def token_head(self, rows: Tensor) -> Tensor:
        x = self.t.ln_final(rows)
        proj = self.t.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Module) else x @ proj


def text_tower(model: nn.Module) -> TextTower:
    """The text-tower adapter of an open_clip model: :class:`OpenClipHFText` for a Hugging
    Face text tower (``hf_model_name`` configs), else :class:`OpenClipText`."""
    text = getattr(model, "text", None)
    if text is not None and is_open_clip_hf_text(text):
        return OpenClipHFText(model)
    return OpenClipText(model)
