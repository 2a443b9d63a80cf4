"""Uniform access to the vision and text towers of open_clip CLIP models.

Attribution methods need more than ``encode_image``: the hidden states at a chosen block,
the map from those states to the embedding, the patch grid, and a way to hide patches
from every attention layer. The classes here give that for open_clip ViTs, open_clip
ResNets (``ModifiedResNet``) and open_clip text transformers; ``captum_clip.models.hf_clip`` gives the
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

from captum_clip._hooks import HookManager
from captum_clip.models.blocks import BlockStack, BlockTrace, BlockView, RowPath, row_path

__all__ = ["DropUnavailable", "TextTower", "VisionTower", "ViTTower", "check_index"]


class DropUnavailable(ValueError):
    """Running a forward on the kept patches alone is not available on this tower (found
    when the tower's blocks are called); masking the hidden patches gives the same values,
    and the region estimators fall back to it."""


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
        """The :class:`~captum_clip.models.blocks.BlockView` of block ``index`` (ViTs only)."""
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

    @property
    def pool_prefix(self) -> int:
        """How many prefix tokens an attention pooler reads before the patches."""
        return self.n_prefix

    def row_path(self, head: Any = None) -> RowPath | None:
        """The last block and ``head`` (default :meth:`token_head`) as the interactions'
        fast-route :class:`~captum_clip.models.blocks.RowPath`; None where its maths does
        not apply (the forward route is used then). Towers with RoPE override it."""
        return row_path(self.blocks[-1], self.token_head if head is None else head)

    def trace_pool(self, hooks: Any) -> dict[str, BlockTrace]:
        """Recompute the attention pooler keeping its probabilities until ``hooks`` exits:
        the returned dict gets a :class:`~captum_clip.models.blocks.BlockTrace` under
        ``"pool"`` at the next forward (towers with ``pool_type == "attn"``)."""
        raise ValueError(
            f"{type(self).__name__} pools with {self.pool_type!r}; only towers with an "
            "attention pooler (pool_type 'attn') have a pooler to trace"
        )

    def check_hidden(self, hidden: Tensor) -> None:
        """The ``hidden`` argument of :meth:`hide_patches`: ``(B, n_patches)`` bool."""
        if hidden.dtype != torch.bool or hidden.ndim != 2 or hidden.shape[1] != self.n_patches:
            raise ValueError(
                f"hidden must be a (B, {self.n_patches}) bool tensor, got "
                f"{tuple(hidden.shape)} {hidden.dtype}"
            )

    #: :meth:`keep_patches` gives exactly the output of :meth:`hide_patches` on this tower
    #: (proven per adapter in ``tests/test_region_drop.py``); False: callers mask instead.
    can_drop: bool = False

    def check_keep(self, keep: Tensor) -> None:
        """The ``keep`` argument of :meth:`keep_patches`: ``(B, n_keep)`` long, ``n_keep >= 1``
        distinct patch indices per row."""
        if keep.dtype != torch.long or keep.ndim != 2 or not 1 <= keep.shape[1] <= self.n_patches:
            raise ValueError(
                f"keep must be a (B, n_keep) long tensor of patch indices with 1 <= n_keep <= "
                f"{self.n_patches}, got {tuple(keep.shape)} {keep.dtype}"
            )
        if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= self.n_patches):
            raise ValueError(f"patch indices in keep must be in [0, {self.n_patches})")

    def _gather_tokens(self, x: Tensor, keep: Tensor, batch_dim: int = 0) -> Tensor:
        """The prefix tokens and the kept patch tokens of hidden states ``x``."""
        if batch_dim == 1:
            return self._gather_tokens(x.transpose(0, 1), keep).transpose(0, 1)
        self.check_batch(x.shape[0], keep.shape[0])
        if x.shape[1] != self.n_prefix + self.n_patches:
            raise DropUnavailable(
                f"dropping hidden patches expected {self.n_prefix + self.n_patches} tokens "
                f"at the first block, got {x.shape[1]}"
            )
        idx = keep.to(x.device) + self.n_prefix
        prefix = torch.arange(self.n_prefix, device=x.device).expand(keep.shape[0], -1)
        idx = torch.cat([prefix, idx], 1)
        return x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[-1]))

    @contextmanager
    def keep_patches(self, keep: Tensor) -> Iterator[None]:
        """Run the tower on the prefix tokens and the patches ``keep`` only (the others are
        dropped after the embedding, positions included) while the context is open.

        For the attention towers whose ``can_drop`` is True this gives the same output as
        :meth:`hide_patches` with every other patch hidden: a hidden patch is never read by
        a kept token or by the pooling, so dropping it changes nothing kept, and a row
        showing half the image costs about half a forward.

        Args:
            keep: ``(B, n_keep)`` long patch indices (row-major grid), the same number for
                every example of the next forward, whose batch must be B.

        Raises:
            DropUnavailable: The tower cannot (``can_drop`` False), or its blocks are
                called in a way that dropping does not handle (found at the forward).
        """
        self.check_keep(keep)
        if not self.can_drop:
            raise DropUnavailable(
                f"{type(self.module).__name__} cannot run on the kept patches alone (not "
                "proven equal to masking them); mask the hidden patches instead"
            )
        batch_dim = 0 if self.batch_first else 1

        def gather(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
            masks = [a for a in args[1:] if isinstance(a, Tensor)]
            masks += [v for k, v in kwargs.items() if "mask" in k and isinstance(v, Tensor)]
            if masks:
                raise DropUnavailable(
                    "dropping hidden patches needs the blocks called without an attention "
                    "mask; masking gives the same values"
                )
            if args:
                return (self._gather_tokens(args[0], keep, batch_dim), *args[1:]), kwargs
            name = next((k for k in ("x", "q_x", "hidden_states") if k in kwargs), None)
            if name is None:
                raise DropUnavailable(
                    "dropping hidden patches found no token input (x, q_x or hidden_states) "
                    f"in the first block's call, got keywords {sorted(kwargs)}"
                )
            kwargs[name] = self._gather_tokens(kwargs[name], keep, batch_dim)
            return args, kwargs

        with HookManager() as hooks:
            hooks.forward_pre(self.blocks[0], gather, with_kwargs=True)
            self._keep_extra(hooks, keep)
            yield

    def _keep_extra(self, hooks: Any, keep: Tensor) -> None:
        """Adapter hook for :meth:`keep_patches` beyond dropping tokens (RoPE tables)."""

    @staticmethod
    def check_batch(received: int, expected: int) -> None:
        """A forward under :meth:`hide_patches` must have the batch it was set up for."""
        if received != expected:
            raise ValueError(
                f"the hidden patches were set for a batch of {expected} images but the "
                f"vision tower received {received} (forward_func must pass the batch "
                "of images through unchanged)"
            )


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
        """The :class:`~captum_clip.models.blocks.BlockView` of block ``index``."""
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
