"""Text-tower adapters: the :class:`TextTower` contract and open_clip's text transformer.

Hidden-state indices as in :mod:`captum_clip._towers`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captum_clip._blocks import BlockStack, BlockView
from captum_clip._towers import check_index

__all__ = ["TextTower", "OpenClipText"]


class TextTower(BlockStack):
    """open_clip / HF text tower interface: embed, run blocks, pool to the embedding.

    Declared contract (callers use nothing else): :meth:`attention_mask` (the additive mask
    the blocks use), :meth:`pool_index`, :meth:`token_head` (the pooled head), :meth:`head`,
    :meth:`block_view`, ``blocks``, ``context_length`` and ``vocab_size``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def vocab_size(self) -> int:
        """Number of token ids the embedding knows (valid ids are ``0 .. vocab_size - 1``)."""
        raise NotImplementedError

    @property
    def context_length(self) -> int:
        raise NotImplementedError

    def block_view(self, index: int) -> BlockView:
        """The :class:`~captum_clip._blocks.BlockView` of block ``index``."""
        return BlockView(self.blocks[check_index(index, self.n_blocks - 1, "index")])

    def hidden_state(self, ids: Tensor, index: int) -> Tensor:
        index = check_index(index, self.n_blocks, "index")
        return self.run_blocks(self.embed(ids), ids, 0, index)

    def from_hidden(self, x: Tensor, ids: Tensor, index: int) -> Tensor:
        index = check_index(index, self.n_blocks, "index")
        return self.head(self.run_blocks(x, ids, index, self.n_blocks), ids)

    def embed(self, ids: Tensor) -> Tensor:
        raise NotImplementedError

    def attention_mask(self, ids: Tensor, dtype: torch.dtype) -> Tensor | None:
        """The additive mask the blocks use for ``ids``: ``(S, S)`` (causal), ``None`` (no
        mask: every token reads every token) or a per-example mask of higher rank."""
        raise NotImplementedError

    def run_blocks(self, x: Tensor, ids: Tensor, start: int, stop: int) -> Tensor:
        raise NotImplementedError

    def pool_index(self, ids: Tensor) -> Tensor:
        """Position ``(B,)`` of the pooled (end-of-text) token."""
        raise NotImplementedError

    def token_head(self, rows: Tensor) -> Tensor:
        """Final norm and projection of output rows ``(..., d)`` -> embeddings ``(..., D)``."""
        raise NotImplementedError

    def head(self, x: Tensor, ids: Tensor) -> Tensor:
        """Embeddings ``(B, D)`` from the last block's output ``(B, S, d)``."""
        return self.token_head(x[torch.arange(x.shape[0], device=x.device), self.pool_index(ids)])


class OpenClipText(TextTower):
    """Text tower of open_clip ``CLIP`` (attributes on the model) or ``CustomTextCLIP``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.t = model.text if hasattr(model, "text") else model
        if getattr(self.t, "cls_emb", None) is not None:
            raise ValueError("text towers with an appended class token (CoCa) are not supported")

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.t.transformer.resblocks)

    @property
    def context_length(self) -> int:
        return int(self.t.positional_embedding.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.t.token_embedding.num_embeddings)

    @property
    def _pool_type(self) -> str:
        return getattr(self.model, "text_pool_type", getattr(self.t, "pool_type", "argmax"))

    def embed(self, ids: Tensor) -> Tensor:
        cast = self.t.transformer.get_cast_dtype()
        x = self.t.token_embedding(ids).to(cast)
        return x + self.t.positional_embedding[: ids.shape[1]].to(cast)

    def attention_mask(self, ids: Tensor, dtype: torch.dtype) -> Tensor | None:
        """The additive mask the text blocks use for ``ids`` (causal, plus padding if any)."""
        if hasattr(self.t, "_build_additive_mask") and getattr(self.t, "use_pad_mask", False):
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
