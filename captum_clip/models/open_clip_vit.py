"""open_clip's ``VisionTransformer`` (OpenAI-style ViTs: class token, ``ln_post``, ``proj``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from captum_clip._hooks import HookManager
from captum_clip.models.base import ViTTower

__all__ = ["OpenClipViT"]


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

    def token_head(self, tokens: Tensor) -> Tensor:
        if self.pool_type == "attn":
            raise ValueError("vision towers with an attention pooler (CoCa) are not supported")
        x = self.module.ln_post(tokens)
        return x if self.module.proj is None else x @ self.module.proj

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
            raise ValueError(
                "attention-mode masking does not support open_clip towers with an "
                "attention pooler yet; use mask_mode='pixel'"
            )
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
            yield
