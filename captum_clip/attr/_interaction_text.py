"""The text side of :class:`~captum_clip.attr.interactions.IntegratedInteractions`:
:class:`ClipTextEncoder`, a CLIP text tower (open_clip or Hugging Face) whose tokens are
the caption's token ids (the :class:`~captum_clip.attr._interaction_sides.TokenEncoder`
contract; the image sides are in :mod:`captum_clip.attr._interaction_sides`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from captum_clip.attr._interaction_sides import Pooled, TokenEncoder, user_baseline
from captum_clip.models.blocks import row_path
from captum_clip.models.heads import check_context_length, token_strings, tokenize

__all__ = ["ClipTextEncoder"]


class ClipTextEncoder(TokenEncoder):
    """The text tower of a CLIP (open_clip or HF): tokens are the caption's token ids."""

    def __init__(self, tower: Any, tokenizer: Callable | None) -> None:
        self.tower = tower
        self.tokenizer = tokenizer
        self.n_blocks = tower.n_blocks

    @property
    def context_length(self) -> int:
        return int(self.tower.context_length)

    def prepare(self, inputs: Any) -> Tensor:
        device = next(self.tower.model.parameters()).device
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, Tensor):
            ids = inputs
            if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32) or ids.shape[0] == 0:
                raise TypeError(
                    f"texts must be a list of strings or a (B, S) integer id tensor, got "
                    f"{ids.dtype} {tuple(ids.shape)}"
                )
            if ids.shape[1] > self.context_length:
                raise ValueError(
                    f"token ids have length {ids.shape[1]}, more than the model's context "
                    f"length {self.context_length}"
                )
            return self._check_vocab(ids, "token ids").long().to(device)
        if self.tokenizer is None:
            raise ValueError("texts are strings but no tokenizer was given; pass tokenizer=")
        if not isinstance(inputs, (list, tuple)):
            raise TypeError(
                f"texts must be a list of strings or an id tensor, got {type(inputs).__name__}"
            )
        self._check_length(inputs)
        ids = tokenize(self.tokenizer, inputs, device)
        if ids.shape[1] > self.context_length:
            raise ValueError(
                f"the tokenizer made {ids.shape[1]} tokens, more than the model's context "
                f"length {self.context_length}"
            )
        return self._check_vocab(ids, "the tokenizer's ids (is it the model's tokenizer?)")

    def _check_length(self, texts: Any) -> None:
        """open_clip's tokenizers truncate silently; refuse captions that do not fit."""
        check_context_length(self.tokenizer, texts, self.context_length)

    def pad_id(self) -> int:
        tok = self.tokenizer
        for holder in (tok, getattr(tok, "tokenizer", None)):
            for name in ("pad_id", "pad_token_id"):
                value = getattr(holder, name, None)
                if isinstance(value, int):
                    return value
        return 0

    def _check_vocab(self, ids: Tensor, name: str) -> Tensor:
        n = self.tower.vocab_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            bad = ids[(ids < 0) | (ids >= n)].unique().tolist()[:5]
            raise ValueError(
                f"{name} must be in [0, {n - 1}] (the model's vocabulary of {n} tokens), got {bad}"
            )
        return ids

    def baseline(self, inputs: Tensor, spec: Any) -> Tensor:
        if spec is not None:
            raw = spec(inputs) if callable(spec) else spec
            # checked before any cast: a float tensor is not silently truncated to ids
            if isinstance(raw, Tensor) and raw.dtype not in (torch.int64, torch.int32):
                raise TypeError(
                    f"text_baseline must hold integer token ids (int64 or int32), got {raw.dtype}"
                )
            return self._check_vocab(user_baseline(inputs, raw), "text_baseline").long()
        ref = inputs.clone()
        for b, c in enumerate(self._text_end(inputs).tolist()):
            if c >= 2:
                ref[b, 1:c] = self.pad_id()
        return ref

    def hidden(self, inputs: Tensor, index: int) -> Tensor:
        return self.tower.hidden_state(inputs, index)

    def from_hidden(self, x: Tensor, inputs: Tensor, index: int) -> Tensor:
        return self.tower.from_hidden(x, inputs.expand(x.shape[0], -1), index)

    def _text_end(self, inputs: Tensor) -> Tensor:
        """End-of-text position ``(B,)``: the pooled position, or, where the pooled token is
        appended after the ids (CoCa's class token), the last non-padding id."""
        pool = self.tower.pool_index(inputs)
        s = inputs.shape[1]
        if bool((pool < s).all()):
            return pool
        pos = torch.arange(s, device=inputs.device)
        last = ((inputs != self.pad_id()).long() * pos).argmax(dim=-1)
        return torch.where(pool < s, pool, last)

    def _allowed(self, inputs: Tensor) -> Tensor | None:
        """Keys the pooled token reads (causal row), or None for a padding-masked tower."""
        mask = self.tower.attention_mask(inputs, torch.float32)
        if mask is None:  # no mask: every token reads every token
            return torch.ones(inputs.shape, dtype=torch.bool, device=inputs.device)
        if mask.ndim != 2:  # a per-example (padding) mask
            return None
        return torch.isfinite(mask[self.tower.pool_index(inputs)])

    def active(self, inputs: Tensor, index: int) -> Tensor:
        allowed = self._allowed(inputs)
        if allowed is None:  # per-example mask: every token it covers (CoCa: S + 1)
            n = self.tower.attention_mask(inputs, torch.float32).shape[-1]
            return torch.ones(inputs.shape[0], n, dtype=torch.bool, device=inputs.device)
        return allowed

    def pooled(self, inputs: Tensor, index: int) -> Pooled | None:
        if index != self.n_blocks - 1:
            return None
        allowed = self._allowed(inputs)
        if allowed is None:
            return None
        tower = self.tower
        row = row_path(tower.blocks[-1], tower.token_head)
        return None if row is None else (row, tower.pool_index(inputs), allowed)

    def labels(self, inputs: Tensor) -> list[list[str]]:
        out = []
        end = self._text_end(inputs)
        # tokens the tower appends after the ids (CoCa's class token) are labelled "<cls>"
        appended = max(int(self.tower.pool_index(inputs).max()) + 1 - inputs.shape[1], 0)
        for row, c in zip(inputs.tolist(), end.tolist()):
            s = len(row)
            names = None
            if self.tokenizer is not None:
                try:
                    names = token_strings(self.tokenizer, row[: c + 1])
                except (ValueError, KeyError, TypeError):
                    names = None
            if names is None or len(names) != c + 1:
                names = [str(i) for i in row[: c + 1]]
            out.append(list(names) + [""] * (s - c - 1) + ["<cls>"] * appended)
        return out
