"""Hugging Face text towers inside open_clip (``hf_model_name`` configs, ``HFTextEncoder``).

What the family is: a ``transformers`` encoder (RoBERTa, XLM-RoBERTa, BERT, mT5,
M2M-100/NLLB) run with a padding mask (``ids != pad_token_id``), one of open_clip's
poolers, then ``proj``. Hidden-state index 0 is the *token embeddings* (the encoder's
``get_input_embeddings()`` output, before positions); every other index is the output of
an encoder layer.

* ``mean_pooler``: mean of the last layer's non-padding tokens; ``cls_pooler``: the first
  token (through the encoder's own pooler when it has one, BERT's ``dense + tanh``);
  ``cls_last_hidden_state_pooler``: the first token of the last layer.
  open_clip's ``max_pooler`` cannot run (``masked_fill`` with an integer mask) and is
  refused.
* BERT-like encoders (``embeddings`` + ``encoder.layer``: BERT, RoBERTa, XLM-RoBERTa) are
  run layer by layer, so every hidden-state index works. Other encoders (mT5, M2M-100)
  run as a whole: indices ``0`` and ``n_blocks`` only, other indices are refused.
* The layers are post-norm Hugging Face layers that
  :class:`~captum_clip.models.blocks.BlockView` does not open, so the interactions use
  their forward route (no fast route) on this tower.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captum_clip.models.base import TextTower, check_index

__all__ = ["OpenClipHFText", "is_open_clip_hf_text"]

_POOLERS = ("mean_pooler", "cls_pooler", "cls_last_hidden_state_pooler")


def is_open_clip_hf_text(text: object) -> bool:
    """True for open_clip's ``HFTextEncoder`` (checked by its parts, no import needed)."""
    return all(hasattr(text, a) for a in ("transformer", "pooler", "proj", "config"))


def _pooler_name(pooler: nn.Module) -> str:
    import re

    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(pooler).__name__).lower()


class OpenClipHFText(TextTower):
    """Text tower of an open_clip ``CustomTextCLIP`` whose ``text`` is an ``HFTextEncoder``.

    Raises:
        ValueError: A pooler other than mean / cls / cls-last-hidden-state.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.t = model.text
        self.hf = self.t.transformer
        self.pool = _pooler_name(self.t.pooler)
        if self.pool not in _POOLERS:
            raise ValueError(
                f"open_clip HF text pooler {self.pool!r} is not supported (open_clip's "
                "max_pooler fails in encode_text itself); supported: "
                f"{', '.join(_POOLERS)}"
            )
        encoder = getattr(self.hf, "encoder", None)
        self.layered = hasattr(self.hf, "embeddings") and hasattr(encoder, "layer")

    @property
    def blocks(self) -> list[nn.Module]:
        if self.layered:
            return list(self.hf.encoder.layer)
        for name in ("layers", "block", "layer"):  # M2M-100 encoder, T5 stack
            found = getattr(self.hf, name, None)
            if isinstance(found, nn.ModuleList):
                return list(found)
        raise ValueError(f"cannot find the layers of {type(self.hf).__name__}")

    @property
    def pad_id(self) -> int:
        return int(self.t.config.pad_token_id)

    @property
    def context_length(self) -> int:
        """The encoder's ``max_position_embeddings``; mT5 (relative positions, reported as
        0 by open_clip) has no limit: ``2**31 - 1``."""
        return int(self.t.context_length) or 2**31 - 1

    @property
    def vocab_size(self) -> int:
        return int(self.hf.get_input_embeddings().num_embeddings)

    def embed(self, ids: Tensor) -> Tensor:
        """Hidden state 0: the token embeddings ``(B, S, d)`` (before positions)."""
        return self.hf.get_input_embeddings()(ids)

    def attention_mask(self, ids: Tensor, dtype: torch.dtype) -> Tensor:
        """The per-example padding mask ``(B, 1, 1, S)`` (additive; every layer uses it)."""
        keep = ids != self.pad_id
        mask = torch.zeros(keep.shape, dtype=dtype, device=ids.device)
        return mask.masked_fill(~keep, float("-inf"))[:, None, None, :]

    def _layer_mask(self, ids: Tensor, x: Tensor) -> Tensor | None:
        """The mask in the form the encoder's own forward hands its layers."""
        keep = (ids != self.pad_id).long()
        try:
            from transformers.masking_utils import create_bidirectional_mask
        except ImportError:  # transformers < 4.56
            return self.hf.get_extended_attention_mask(keep, ids.shape)
        return create_bidirectional_mask(
            config=self.hf.config, inputs_embeds=x, attention_mask=keep
        )

    def _positions(self, ids: Tensor) -> Tensor | None:
        make = getattr(self.hf.embeddings, "create_position_ids_from_input_ids", None)
        if make is None:  # BERT: 0..S-1, the embeddings' default
            return None
        return make(ids, self.hf.embeddings.padding_idx)  # RoBERTa: padding-aware

    def run_blocks(self, x: Tensor, ids: Tensor, start: int, stop: int) -> Tensor:
        """Run layers ``start..stop-1`` on ``x``; from index 0 the embeddings' positions
        (and LayerNorm) are added first.

        Raises:
            ValueError: A middle index on an encoder that only runs as a whole.
        """
        n = self.n_blocks
        if start >= stop:
            return x
        if not self.layered:
            if (start, stop) != (0, n):
                raise ValueError(
                    f"{type(self.hf).__name__} text towers run as a whole: hidden-state "
                    f"indices 0 (token embeddings) and {n} (last layer) are supported, got "
                    f"{start or stop}; use text_layer=0"
                )
            keep = (ids != self.pad_id).long()
            return self.hf(inputs_embeds=x, attention_mask=keep).last_hidden_state
        if start == 0:
            x = self.hf.embeddings(inputs_embeds=x, position_ids=self._positions(ids))
        mask = self._layer_mask(ids, x)
        for layer in self.blocks[start:stop]:
            out = layer(x, attention_mask=mask)
            x = out[0] if isinstance(out, tuple) else out
        return x

    def hidden_state(self, ids: Tensor, index: int) -> Tensor:
        index = check_index(index, self.n_blocks, "index")
        return self.run_blocks(self.embed(ids), ids, 0, index)

    def pool_index(self, ids: Tensor) -> Tensor:
        """The end-of-text position (the last non-padding token) ``(B,)``; the embedding
        itself pools with the HF pooler (:meth:`head`)."""
        keep = (ids != self.pad_id).long()
        pos = torch.arange(ids.shape[1], device=ids.device)
        return (keep * pos).argmax(dim=-1)

    def token_head(self, rows: Tensor) -> Tensor:
        """Each row ``(..., d)`` as the pooled one: the encoder's pooler (``cls_pooler``
        with one) and ``proj``."""
        if self.pool == "cls_pooler" and getattr(self.hf, "pooler", None) is not None:
            lead, d = rows.shape[:-1], rows.shape[-1]
            rows = self.hf.pooler(rows.reshape(-1, 1, d)).reshape(*lead, -1)
        return self.t.proj(rows)

    def head(self, x: Tensor, ids: Tensor) -> Tensor:
        """Embeddings ``(B, D)`` from the last layer's output: open_clip's pooler, ``proj``."""
        if self.pool == "mean_pooler":
            keep = (ids != self.pad_id).to(x.dtype)[..., None]
            return self.t.proj((x * keep).sum(1) / keep.sum(1))
        return self.token_head(x[:, 0])
