"""The two towers as :class:`~captum_clip.attr.interactions.IntegratedInteractions` sees them.

A :class:`TokenEncoder` turns inputs into token hidden states at a layer and hidden states
back into an embedding. The CLIP text and image towers (open_clip and Hugging Face) are
wrapped here; a custom model (e.g. a toy bilinear dual encoder in a test) subclasses
:class:`TokenEncoder` and goes through exactly the same interaction code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip.attr._interaction_paths import RowPath
from captum_clip.models import check_images, token_strings, tokenize

__all__ = ["TokenEncoder", "ClipImageEncoder", "ClipTextEncoder", "layer_to_index"]

Pooled = tuple[RowPath, Tensor, Tensor]


def layer_to_index(layer: int, n_blocks: int, name: str) -> int:
    """``layer`` (``0`` = embeddings, ``i`` = input of block ``i``, ``-1`` = input of the
    last block) as a hidden-state index in ``[0, n_blocks]``."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"{name} must be an int, got {type(layer).__name__}")
    if not -n_blocks <= layer <= n_blocks:
        raise ValueError(
            f"{name} must be in [{-n_blocks}, {n_blocks}] for a tower with {n_blocks} "
            f"blocks (0 = embeddings, -1 = input of the last block), got {layer}"
        )
    return layer if layer >= 0 else n_blocks + layer


class TokenEncoder:
    """One tower of a dual encoder, split at a layer into ``inputs -> x -> embedding``.

    Subclass it to attribute a custom model with
    :meth:`IntegratedInteractions.from_encoders`; override at least :meth:`hidden` and
    :meth:`from_hidden`. ``x`` holds one row of hidden states per token: ``(B, T, d)``.
    """

    n_blocks: int = 0

    def prepare(self, inputs: Any) -> Tensor:
        """Validate / convert user inputs to a batch tensor."""
        if not isinstance(inputs, Tensor) or inputs.ndim < 2 or inputs.shape[0] == 0:
            raise TypeError(f"expected a non-empty (B, ...) tensor, got {type(inputs).__name__}")
        return inputs

    def baseline(self, inputs: Tensor, spec: Any) -> Tensor:
        """Reference inputs: ``None`` (zeros), a tensor (broadcast to the batch) or a callable."""
        if spec is None:
            return torch.zeros_like(inputs)
        return _user_baseline(inputs, spec)

    def hidden(self, inputs: Tensor, index: int) -> Tensor:
        """Hidden states ``(B, T, d)`` at hidden index ``index``."""
        raise NotImplementedError

    def from_hidden(self, x: Tensor, inputs: Tensor, index: int) -> Tensor:
        """Unnormalised embeddings ``(n, D)`` of hidden states ``x`` ``(n, T, d)``; ``inputs``
        is the one example ``(1, ...)`` they belong to."""
        raise NotImplementedError

    def active(self, inputs: Tensor, index: int) -> Tensor:
        """``(B, T)`` bool: tokens that can reach the embedding (others are exactly 0)."""
        x = self.hidden(inputs, index)
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)

    def pooled(self, inputs: Tensor, index: int) -> Pooled | None:
        """``(RowPath, pooled positions (B,), allowed keys (B, T))`` for the fast route."""
        return None

    def labels(self, inputs: Tensor) -> list[list[str]]:
        """One label per token and example."""
        t = self.hidden(inputs, 0).shape[1]
        return [[str(i) for i in range(t)] for _ in range(inputs.shape[0])]


def _user_baseline(inputs: Tensor, spec: Any) -> Tensor:
    ref = spec(inputs) if callable(spec) else spec
    if not isinstance(ref, Tensor):
        raise TypeError(
            f"a baseline must be None, a tensor or a callable, got {type(spec).__name__}"
        )
    if ref.ndim == inputs.ndim - 1:
        ref = ref[None]
    if (
        ref.ndim != inputs.ndim
        or ref.shape[1:] != inputs.shape[1:]
        or ref.shape[0]
        not in (
            1,
            inputs.shape[0],
        )
    ):
        raise ValueError(
            f"baseline must have shape {tuple(inputs.shape)} (or a batch of 1), got "
            f"{tuple(ref.shape)}"
        )
    if ref.is_floating_point() and not torch.isfinite(ref).all():
        raise ValueError("baseline contains NaN or infinite values")
    return ref.to(inputs.device, inputs.dtype).expand_as(inputs).clone()


def _block_parts(block: nn.Module, head: Callable[[Tensor], Tensor]) -> RowPath | None:
    """A :class:`RowPath` for an open_clip ``ResidualAttentionBlock`` or an HF CLIP layer."""
    attn = getattr(block, "attn", None)
    if isinstance(attn, nn.MultiheadAttention):
        if (
            not attn._qkv_same_embed_dim
            or attn.bias_k is not None
            or attn.add_zero_attn
            or hasattr(block, "ln_1_kv")
            or not all(hasattr(block, n) for n in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2"))
        ):
            return None
        d = attn.embed_dim
        w = attn.in_proj_weight
        b = attn.in_proj_bias if attn.in_proj_bias is not None else w.new_zeros(3 * d)
        wq, wk, wv = w.chunk(3)
        bq, bk, bv = b.chunk(3)
        out = attn.out_proj
        bo = out.bias if out.bias is not None else w.new_zeros(d)
        return RowPath(
            block.ln_1, wq, bq, wk, bk, wv, bv, out.weight, bo, attn.num_heads,
            (d // attn.num_heads) ** -0.5, block.ls_1, block.ln_2, block.mlp, block.ls_2, head,
        )  # fmt: skip
    sa = getattr(block, "self_attn", None)
    if sa is not None and all(hasattr(sa, n) for n in ("q_proj", "k_proj", "v_proj", "out_proj")):
        ident = nn.Identity()
        return RowPath(
            block.layer_norm1, sa.q_proj.weight, sa.q_proj.bias, sa.k_proj.weight,
            sa.k_proj.bias, sa.v_proj.weight, sa.v_proj.bias, sa.out_proj.weight,
            sa.out_proj.bias, sa.num_heads, float(sa.scale), ident, block.layer_norm2,
            block.mlp, ident, head,
        )  # fmt: skip
    return None


class ClipImageEncoder(TokenEncoder):
    """The image tower of a CLIP ViT (open_clip or HF): tokens are ``[CLS, patches]``."""

    def __init__(self, tower: Any) -> None:
        if not getattr(tower, "is_vit", False):
            raise TypeError(
                f"integrated interactions need a ViT image tower (tokens = patches), got "
                f"{type(tower.module).__name__}"
            )
        self.tower = tower
        self.n_blocks = tower.n_blocks

    def prepare(self, inputs: Any) -> Tensor:
        return check_images(inputs, self.tower.image_size)

    def baseline(self, inputs: Tensor, spec: Any) -> Tensor:
        if isinstance(spec, str):
            if spec != "blur":
                raise ValueError(
                    f"image_baseline must be None, 'blur', a tensor or a callable, got {spec!r}"
                )
            from torchvision.transforms.functional import gaussian_blur

            sigma = max(inputs.shape[-2:]) / 16.0
            k = 2 * int(3 * sigma) + 1
            return gaussian_blur(inputs, [k, k], [sigma, sigma])
        return super().baseline(inputs, spec)

    def hidden(self, inputs: Tensor, index: int) -> Tensor:
        return self.tower.hidden_state(inputs, index)

    def from_hidden(self, x: Tensor, inputs: Tensor, index: int) -> Tensor:
        return self.tower.from_hidden(x, index)

    def active(self, inputs: Tensor, index: int) -> Tensor:
        n = self.tower.n_prefix + self.tower.n_patches
        return torch.ones(inputs.shape[0], n, dtype=torch.bool, device=inputs.device)

    def pooled(self, inputs: Tensor, index: int) -> Pooled | None:
        if index != self.n_blocks - 1:
            return None
        tower, m = self.tower, self.tower.module
        if hasattr(tower, "clip"):  # Hugging Face

            def head(r: Tensor) -> Tensor:
                return tower.clip.visual_projection(m.post_layernorm(r))

        else:
            if getattr(m, "attn_pool", None) is not None or getattr(m, "pool_type", "tok") != "tok":
                return None

            def head(r: Tensor) -> Tensor:
                r = m.ln_post(r)
                return r if m.proj is None else r @ m.proj

        row = _block_parts(tower.blocks[-1], head)
        if row is None:
            return None
        b = inputs.shape[0]
        allowed = self.active(inputs, index)
        return row, torch.zeros(b, dtype=torch.long, device=inputs.device), allowed

    def labels(self, inputs: Tensor) -> list[list[str]]:
        names = ["CLS"] + [f"patch {i}" for i in range(self.tower.n_patches)]
        return [list(names) for _ in range(inputs.shape[0])]


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
            return ids.long().to(device)
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
        return ids

    def _check_length(self, texts: Any) -> None:
        """open_clip's tokenizers truncate silently; refuse captions that do not fit."""
        tok = self.tokenizer
        if not (hasattr(tok, "encode") and hasattr(tok, "sot_token_id")):
            return
        for t in texts:
            if isinstance(t, str):
                n = len(tok.encode(t)) + 2
                if n > self.context_length:
                    raise ValueError(
                        f"caption {t[:40]!r}... needs {n} tokens, more than the model's "
                        f"context length {self.context_length}"
                    )

    def pad_id(self) -> int:
        tok = self.tokenizer
        for holder in (tok, getattr(tok, "tokenizer", None)):
            for name in ("pad_id", "pad_token_id"):
                value = getattr(holder, name, None)
                if isinstance(value, int):
                    return value
        return 0

    def baseline(self, inputs: Tensor, spec: Any) -> Tensor:
        if spec is not None:
            ref = _user_baseline(inputs, spec)
            if ref.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"text_baseline must hold integer token ids, got {ref.dtype}")
            return ref.long()
        ref = inputs.clone()
        pool = self.tower.pool_index(inputs)
        for b, c in enumerate(pool.tolist()):
            if c >= 2:
                ref[b, 1:c] = self.pad_id()
        return ref

    def hidden(self, inputs: Tensor, index: int) -> Tensor:
        return self.tower.hidden_state(inputs, index)

    def from_hidden(self, x: Tensor, inputs: Tensor, index: int) -> Tensor:
        return self.tower.from_hidden(x, inputs.expand(x.shape[0], -1), index)

    def _allowed(self, inputs: Tensor) -> Tensor | None:
        """Keys the pooled token reads (causal row), or None for a padding-masked tower."""
        b, s = inputs.shape
        pool = self.tower.pool_index(inputs)
        mask = None
        if hasattr(self.tower, "_mask"):
            mask = self.tower.attention_mask(inputs, torch.float32)
            if mask is not None and mask.ndim != 2:
                return None
        else:  # Hugging Face: always causal
            mask = torch.full((s, s), float("-inf"), device=inputs.device).triu(1)
        if mask is None:
            return torch.ones(b, s, dtype=torch.bool, device=inputs.device)
        return torch.isfinite(mask[pool])

    def active(self, inputs: Tensor, index: int) -> Tensor:
        allowed = self._allowed(inputs)
        if allowed is None:
            return torch.ones(inputs.shape, dtype=torch.bool, device=inputs.device)
        return allowed

    def pooled(self, inputs: Tensor, index: int) -> Pooled | None:
        if index != self.n_blocks - 1:
            return None
        allowed = self._allowed(inputs)
        if allowed is None:
            return None
        tower = self.tower
        if hasattr(tower, "t") and hasattr(tower.t, "final_layer_norm"):  # Hugging Face

            def head(r: Tensor) -> Tensor:
                return tower.model.text_projection(tower.t.final_layer_norm(r))

        else:
            t = tower.t

            def head(r: Tensor) -> Tensor:
                r = t.ln_final(r)
                proj = t.text_projection
                if proj is None:
                    return r
                return proj(r) if isinstance(proj, nn.Module) else r @ proj

        row = _block_parts(tower.blocks[-1], head)
        return None if row is None else (row, tower.pool_index(inputs), allowed)

    def labels(self, inputs: Tensor) -> list[list[str]]:
        out = []
        pool = self.tower.pool_index(inputs)
        for row, c in zip(inputs.tolist(), pool.tolist()):
            s = len(row)
            names = None
            if self.tokenizer is not None:
                try:
                    names = token_strings(self.tokenizer, row[: c + 1])
                except (ValueError, KeyError, TypeError):
                    names = None
            if names is None or len(names) != c + 1:
                names = [str(i) for i in row[: c + 1]]
            out.append(list(names) + [""] * (s - c - 1))
        return out


def normalise(emb: Tensor, similarity: str) -> Tensor:
    """The embedding the score is a dot product of (L2-normalised for ``"cosine"``)."""
    return F.normalize(emb, dim=-1) if similarity == "cosine" else emb
