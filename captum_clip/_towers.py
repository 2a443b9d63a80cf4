"""Uniform access to the vision and text towers of open_clip CLIP models.

Attribution methods need more than ``encode_image``: the hidden states at a chosen block,
the map from those states to the embedding, the patch grid, and a way to hide patches
from every attention layer. The classes here give that for open_clip ViTs, open_clip
ResNets (``ModifiedResNet``) and open_clip text transformers; ``captum_clip.hf`` gives the
same interface for Hugging Face ``CLIPModel``.

Hidden-state indices: ``index=0`` is the input of the first block (the embeddings),
``index=i`` the input of block ``i`` and ``index=n_blocks`` the output of the last block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from captum_clip._blocks import BlockStack, BlockView
from captum_clip._hooks import HookManager

__all__ = ["VisionTower", "ViTTower", "OpenClipViT", "OpenClipResNet", "check_index"]


def check_index(index: int, n_blocks: int, what: str) -> int:
    if not isinstance(index, int):
        raise TypeError(f"{what} must be an int, got {type(index).__name__}")
    if not -n_blocks - 1 <= index <= n_blocks:
        raise ValueError(
            f"{what} must be in [{-n_blocks - 1}, {n_blocks}] for a tower with "
            f"{n_blocks} blocks, got {index}"
        )
    return index % (n_blocks + 1)


class VisionTower(BlockStack):
    """Common interface of vision towers (see module docstring).

    What callers may rely on is declared here; nothing outside an adapter reads a private
    attribute of it or of the wrapped module.

    Attributes:
        module: The wrapped vision module (unchanged).
        is_vit: Tokens are ``n_prefix`` prefix tokens followed by the patch grid.
        n_prefix: Number of prefix (class) tokens.
        batch_first: The blocks take ``(B, L, d)`` (else ``(L, B, d)``).
    """

    is_vit: bool = False
    n_prefix: int = 0
    batch_first: bool = True

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @property
    def pool_type(self) -> str:
        """How the embedding pools the tokens: ``"tok"`` (class token), ``"avg"`` (mean of
        the patch tokens), ``"attn"`` (an attention pooler) or ``"unknown"``."""
        return "unknown"

    @property
    def guarded(self) -> list[nn.Module]:
        """Modules whose mode and ``requires_grad`` flags an attribution must restore."""
        return [self.module]

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the tower's weights (images are cast to it, see
        :func:`captum_clip._validate.check_images`); float32 for a tower without any."""
        for p in self.module.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    @property
    def heads(self) -> int:
        raise ValueError(f"{type(self.module).__name__} is not a transformer vision tower")

    def block_view(self, index: int) -> BlockView:
        """The :class:`~captum_clip._blocks.BlockView` of block ``index`` (ViTs only)."""
        if not self.is_vit:
            raise ValueError(
                f"this method needs a ViT vision tower; {type(self.module).__name__} is not one"
            )
        return BlockView(self.blocks[self.block_index(index)], self.heads)

    def token_head(self, tokens: Tensor) -> Tensor:
        """Map last-block tokens ``(..., d)`` to the (unnormalised) embedding space, each
        token as if it were the pooled one (the vision head, shared by every caller)."""
        raise ValueError(
            f"{type(self.module).__name__} has no per-token head (a ViT tower is needed)"
        )

    @property
    def image_size(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def grid_size(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def n_patches(self) -> int:
        h, w = self.grid_size
        return h * w

    def __call__(self, images: Tensor) -> Tensor:
        return self.module(images)

    def block_index(self, layer: int) -> int:
        """Normalise a (possibly negative) block index ``layer`` to ``[0, n_blocks)``."""
        if not isinstance(layer, int):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        if not -self.n_blocks <= layer < self.n_blocks:
            raise ValueError(
                f"layer must be in [{-self.n_blocks}, {self.n_blocks - 1}] for a "
                f"vision tower with {self.n_blocks} blocks, got {layer}"
            )
        return layer % self.n_blocks

    def patch_features(self, images: Tensor, layer: int = -1) -> Tensor:
        """Patch features ``(B, h, w, d)`` at the output of block ``layer``."""
        raise NotImplementedError

    def grid_tokens(self, out: Any, batch: int) -> Tensor | None:
        """``(B, h, w, d)`` patch features from what a block (or CNN stage) returned in a
        forward hook, or None when it is not a batch of ``batch`` on this tower's grid."""
        out = out[0] if isinstance(out, (tuple, list)) and out else out
        if not isinstance(out, Tensor):
            return None
        if out.ndim == 4 and out.shape[0] == batch:  # CNN stage (B, C, h, w)
            return out.permute(0, 2, 3, 1)
        if out.ndim != 3 or not self.is_vit:
            return None
        if not self.batch_first:
            out = out.transpose(0, 1)
        h, w = self.grid_size
        if out.shape[0] != batch or out.shape[1] != self.n_prefix + h * w:
            return None
        return out[:, self.n_prefix :].reshape(batch, h, w, out.shape[-1])

    @contextmanager
    def hide_patches(self, hidden: Tensor) -> Iterator[None]:
        """Hide patches from every attention layer while the context is open.

        Args:
            hidden: ``(B, n_patches)`` bool, True where a patch must not be read by any
                token (its attention logits are set to -inf in every layer and it is
                excluded from token pooling). B must equal the batch of the next forward.
        """
        raise ValueError(
            f"attention-mode masking needs a ViT vision tower; "
            f"{type(self.module).__name__} is not one (use mask_mode='pixel')"
        )
        yield  # pragma: no cover


class ViTTower(VisionTower):
    """Shared part of the ViT adapters: ``embed`` -> ``run_blocks`` -> ``head`` (subclasses
    implement those three); class token first, then the patch grid."""

    is_vit = True
    n_prefix = 1

    def embed(self, images: Tensor) -> Tensor:
        """Hidden state 0 ``(B, L, d)``."""
        raise NotImplementedError

    def run_blocks(
        self, x: Tensor, start: int, stop: int, attn_mask: Tensor | None = None
    ) -> Tensor:
        """Run blocks ``start..stop-1`` on batch-first hidden states ``x``."""
        raise NotImplementedError

    def head(self, x: Tensor) -> Tensor:
        """Map the output of the last block ``(B, L, d)`` to the (unnormalised) embedding."""
        raise NotImplementedError

    def hidden_state(self, images: Tensor, index: int) -> Tensor:
        """Hidden states ``(B, L, d)`` at ``index`` (see module docstring)."""
        index = check_index(index, self.n_blocks, "index")
        return self.run_blocks(self.embed(images), 0, index)

    def from_hidden(self, x: Tensor, index: int) -> Tensor:
        """Embedding from the hidden states at ``index`` (inverse of :meth:`hidden_state`)."""
        index = check_index(index, self.n_blocks, "index")
        return self.head(self.run_blocks(x, index, self.n_blocks))

    def patch_features(self, images: Tensor, layer: int = -1) -> Tensor:
        x = self.hidden_state(images, self.block_index(layer) + 1)
        h, w = self.grid_size
        return x[:, self.n_prefix :].reshape(x.shape[0], h, w, x.shape[-1])

    def check_hidden(self, hidden: Tensor) -> None:
        """The ``hidden`` argument of :meth:`hide_patches`: ``(B, n_patches)`` bool."""
        if hidden.dtype != torch.bool or hidden.ndim != 2 or hidden.shape[1] != self.n_patches:
            raise ValueError(
                f"hidden must be a (B, {self.n_patches}) bool tensor, got "
                f"{tuple(hidden.shape)} {hidden.dtype}"
            )

    @staticmethod
    def check_batch(received: int, expected: int) -> None:
        """A forward under :meth:`hide_patches` must have the batch it was set up for."""
        if received != expected:
            raise ValueError(
                f"hide_patches was set up for a batch of {expected} images but the "
                f"vision tower received {received}"
            )


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


class OpenClipResNet(VisionTower):
    """open_clip ``ModifiedResNet`` (pixel-mode methods only)."""

    pool_type = "attn"  # AttentionPool2d

    @property
    def blocks(self) -> list[nn.Module]:
        m = self.module
        return [m.layer1, m.layer2, m.layer3, m.layer4]

    @property
    def image_size(self) -> tuple[int, int]:
        s = self.module.image_size
        return (s, s) if isinstance(s, int) else tuple(s)

    @property
    def grid_size(self) -> tuple[int, int]:
        h, w = self.image_size
        return (h // 32, w // 32)

    def patch_features(self, images: Tensor, layer: int = -1) -> Tensor:
        stop = self.block_index(layer) + 1
        m = self.module
        x = images.to(dtype=m.conv1.weight.dtype)
        x = m.stem(x)
        for block in self.blocks[:stop]:
            x = block(x)
        return x.permute(0, 2, 3, 1)
