"""open_clip's ``VisionTransformer`` (OpenAI-style ViTs: class token, ``ln_post``, ``proj``).

CoCa's towers pool with an ``AttentionalPooler`` (learned queries cross-attending over all
tokens, class token included; the first query's output after ``ln_post`` is the pooled
one, ``pool_type="attn"``). Its per-token head is the pooler applied to the single token:
with one key the attention weight is 1, so the token goes through the pooler's value path
(``ln_k -> W_v -> out_proj``) and then ``ln_post`` and ``proj``. Hidden patches are also
hidden from the pooler (a ``key_padding_mask`` through its own ``nn.MultiheadAttention``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip._hooks import HookManager
from captum_clip.models.base import ViTTower
from captum_clip.models.blocks import BlockTrace

__all__ = ["OpenClipViT", "attentional_pool_forward"]


def attentional_pool_forward(
    pooler: nn.Module, x: Tensor, key_hidden: Tensor | None = None
) -> BlockTrace:
    """open_clip ``AttentionalPooler.forward`` recomputed, keeping q/k/v and probabilities.

    Args:
        pooler: CoCa's pooler (``query``, ``ln_q``, ``ln_k``, ``attn``).
        x: ``(B, N, d)`` tokens (batch first).
        key_hidden: ``(B, N)`` bool, True for keys no query may read.

    Returns:
        A :class:`~captum_clip.models.blocks.BlockTrace` (``q`` ``(B, heads, n_queries,
        hd)``, ``context`` before ``out_proj``, ``output`` = what the pooler returns).
    """
    a = pooler.attn
    if a.bias_k is not None or a.add_zero_attn:
        raise ValueError("AttentionalPooler with bias_k/bias_v or add_zero_attn is not supported")
    if a._qkv_same_embed_dim:
        wq, wk, wv = a.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = a.q_proj_weight, a.k_proj_weight, a.v_proj_weight
    e, h = a.embed_dim, a.num_heads
    b = a.in_proj_bias if a.in_proj_bias is not None else wq.new_zeros(3 * e)
    bq, bk, bv = b.chunk(3)
    batch, n, _ = x.shape
    xk = pooler.ln_k(x)
    q = F.linear(pooler.ln_q(pooler.query), wq, bq).expand(batch, -1, -1)

    def heads(t: Tensor) -> Tensor:
        return t.reshape(batch, t.shape[1], h, e // h).transpose(1, 2)

    q, k, v = heads(q), heads(F.linear(xk, wk, bk)), heads(F.linear(xk, wv, bv))
    logits = (q @ k.transpose(-1, -2)) * (e // h) ** -0.5
    if key_hidden is not None:
        logits = logits.masked_fill(key_hidden[:, None, None, :].to(logits.device), float("-inf"))
    probs = logits.softmax(-1)
    context = (probs @ v).transpose(1, 2).reshape(batch, q.shape[2], e)
    return BlockTrace(q, k, v, probs, context, a.out_proj(context))


class OpenClipViT(ViTTower):
    """open_clip ``VisionTransformer``."""

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.module.transformer.resblocks)

    @property
    def heads(self) -> int:
        attn = self.blocks[0].attn
        return attn.num_heads

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.module.image_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.module.grid_size)

    @property
    def batch_first(self) -> bool:  # type: ignore[override]
        return getattr(self.module.transformer, "batch_first", True)

    @property
    def pool_type(self) -> str:
        if getattr(self.module, "attn_pool", None) is not None:
            return "attn"
        return getattr(self.module, "pool_type", "tok")

    pool_prefix = 1  # the attention pooler reads the class token too
    #: Dropping = masking: class-token, mean (of the kept patches) and CoCa pooling read
    #: no hidden patch (``tests/test_region_drop.py``).
    can_drop = True

    def _check_pooler(self) -> None:
        m = self.module
        if getattr(m, "attn_pool_contrastive", None) is not None or m.pool_type != "tok":
            raise ValueError(
                "only the original open_clip CoCa pooling (attn_pool, then ln_post and the "
                f"first query) is supported; got attn_pool_type={m.attn_pool_type!r}, "
                f"pool_type={m.pool_type!r}"
            )

    def token_head(self, tokens: Tensor) -> Tensor:
        """``ln_post`` and ``proj`` of each token ``(..., d)``; with CoCa's attention pooler,
        the pooler applied to the token alone first (its value path, see module docstring)."""
        if self.pool_type == "attn":
            self._check_pooler()
            lead = tokens.shape[:-1]
            single = tokens.reshape(-1, 1, tokens.shape[-1])
            tokens = attentional_pool_forward(self.module.attn_pool, single).output[:, 0]
            tokens = tokens.reshape(*lead, tokens.shape[-1])
        x = self.module.ln_post(tokens)
        return x if self.module.proj is None else x @ self.module.proj

    def trace_pool(self, hooks: HookManager) -> dict[str, BlockTrace]:
        """Run CoCa's pooler through :func:`attentional_pool_forward` until ``hooks``
        exits; the dict gets its trace under ``"pool"`` at the next forward."""
        if self.pool_type != "attn":
            raise ValueError(f"this tower pools with {self.pool_type!r}, not an attention pooler")
        self._check_pooler()
        store: dict[str, BlockTrace] = {}
        pooler = self.module.attn_pool

        def forward(x: Tensor) -> Tensor:
            mask = getattr(pooler, "_captum_key_hidden", None)  # set by hide_patches
            store["pool"] = trace = attentional_pool_forward(pooler, x, mask)
            return trace.output

        hooks.patch_attr(pooler, "forward", forward)
        return store

    def embed(self, images: Tensor) -> Tensor:
        """Hidden state 0: patch + class embeddings, positions, ``ln_pre``; ``(B, L, d)``."""
        return self.module._embeds(images)

    def run_blocks(
        self, x: Tensor, start: int, stop: int, attn_mask: Tensor | None = None
    ) -> Tensor:
        """Run blocks ``start..stop-1`` on batch-first hidden states ``x``."""
        if not self.batch_first:
            x = x.transpose(0, 1)
        for block in self.blocks[start:stop]:
            x = block(x, attn_mask=attn_mask)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return x

    def head(self, x: Tensor) -> Tensor:
        """Map the output of the last block ``(B, L, d)`` to the (unnormalised) embedding."""
        pooled, _ = self.module._pool(x)
        if self.module.proj is not None:
            pooled = pooled @ self.module.proj
        return pooled

    def key_mask(self, hidden: Tensor) -> Tensor:
        """Additive attention mask ``(B*heads, L, L)`` hiding the patches in ``hidden``."""
        b, p = hidden.shape
        n_tokens = self.n_prefix + p
        keys = torch.zeros(b, n_tokens, dtype=torch.bool, device=hidden.device)
        keys[:, self.n_prefix :] = hidden
        mask = torch.zeros(b, n_tokens, n_tokens, device=hidden.device)
        mask.masked_fill_(keys[:, None, :], float("-inf"))
        return mask.repeat_interleave(self.heads, dim=0)

    @contextmanager
    def hide_patches(self, hidden: Tensor) -> Iterator[None]:
        self.check_hidden(hidden)
        if self.pool_type == "attn":
            self._check_pooler()
        mask = self.key_mask(hidden)
        batch = hidden.shape[0]
        batch_dim = 0 if self.batch_first else 1

        def inject(module, args, kwargs):
            x = args[0] if args else kwargs["q_x"]
            self.check_batch(x.shape[batch_dim], batch)
            current = kwargs.get("attn_mask")
            m = mask.to(dtype=x.dtype, device=x.device)
            kwargs["attn_mask"] = m if current is None else current + m
            return args, kwargs

        with HookManager() as hooks:
            for block in self.blocks:
                hooks.forward_pre(block, inject, with_kwargs=True)
            if self.pool_type == "avg":
                keep = (~hidden).to(mask.dtype)

                def masked_avg_pool(x: Tensor) -> tuple[Tensor, Tensor]:
                    w = keep.to(x.device, x.dtype)[:, :, None]
                    tokens = x[:, self.n_prefix :]
                    return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0), tokens

                hooks.patch_attr(self.module, "_global_pool", masked_avg_pool)
            if self.pool_type == "attn":
                self._hide_in_pooler(hooks, hidden)
            yield

    def _hide_in_pooler(self, hooks: HookManager, hidden: Tensor) -> None:
        """CoCa's pooler reads no hidden patch: its own ``nn.MultiheadAttention`` gets a
        ``key_padding_mask`` (a traced pooler, :meth:`trace_pool`, reads the same mask)."""
        pooler = self.module.attn_pool
        keys = torch.cat([hidden.new_zeros(hidden.shape[0], self.n_prefix), hidden], 1)

        def forward(x: Tensor) -> Tensor:
            self.check_batch(x.shape[0], keys.shape[0])
            xk = pooler.ln_k(x)
            q = pooler.ln_q(pooler.query).unsqueeze(0).expand(x.shape[0], -1, -1)
            pad = keys.to(x.device)
            return pooler.attn(q, xk, xk, need_weights=False, key_padding_mask=pad)[0]

        hooks.patch_attr(pooler, "_captum_key_hidden", keys)
        if "forward" not in vars(pooler):  # a traced pooler applies the mask itself
            hooks.patch_attr(pooler, "forward", forward)
