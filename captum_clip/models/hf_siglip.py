"""Hugging Face ``SiglipModel`` and ``Siglip2Model`` (``pip install captum-clip[hf]``).

What the family is:

* **Vision**: no class token (``n_prefix = 0``): the tokens are the patch grid alone; the
  embedding is ``post_layernorm`` then the multi-head attention pooling head
  (``SiglipMultiheadAttentionPoolingHead``: a learned probe reads every token through an
  ``nn.MultiheadAttention``, then a residual MLP), so ``pool_type == "attn"``.
  :meth:`HFSiglipVision.hide_patches` hides patches from every encoder layer (an additive
  mask) *and* from the pooling head (``key_padding_mask``); it is tested equal to running
  the tower on the kept tokens alone. The per-token head is the pooling head applied to
  one token alone (the probe then reads only that token: its value path).
* **SigLIP 2** (NaFlex): the model takes patchified pixels plus a per-image grid
  (``spatial_shapes``) and resizes its position table to that grid. The fixed-grid
  contract here uses the square grid the position table was trained on
  (``sqrt(num_patches)`` per side, image side ``grid * patch_size``) and patchifies images
  exactly as ``Siglip2ImageProcessor`` does; other resolutions or aspect ratios are
  refused (:meth:`HFSiglipVision.embed`).
* **Text**: bidirectional attention (no causal mask, no padding mask: SigLIP is run on
  ``max_length``-padded ids without an attention mask), ``final_layer_norm`` on every
  token, the *last* position pooled (it may be padding) and the linear ``head``.
* **Logits**: ``logit_scale.exp() * cos + logit_bias`` (``model.logit_bias``, read by
  :class:`~captum_clip.models.adapter.ClipAdapter`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip._hooks import HookManager
from captum_clip.models.blocks import BlockTrace
from captum_clip.models.hf_clip import HFText, HFVision

__all__ = ["HFSiglipText", "HFSiglipVision", "is_hf_siglip"]

_TYPES = ("siglip", "siglip2")


def is_hf_siglip(model: object) -> bool:
    """True for a ``transformers`` ``SiglipModel`` / ``Siglip2Model`` (no import needed)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return (
        model_type in _TYPES
        and hasattr(model, "vision_model")
        and hasattr(model, "text_model")
        and hasattr(model, "logit_bias")
    )


class HFSiglipVision(HFVision):
    """Vision tower of a Hugging Face ``SiglipModel`` / ``Siglip2Model`` (see module doc).

    Raises:
        ValueError: A vision model without its pooling head (``vision_use_head=False``), or
            a SigLIP 2 position table that is not a square grid.
    """

    n_prefix = 0

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.naflex = model.config.model_type == "siglip2"
        if not getattr(self.module, "use_head", False):
            raise ValueError(
                f"{type(model).__name__} has no vision pooling head (vision_use_head=False), "
                "so it has no image embedding; build it with vision_use_head=True"
            )
        if self.naflex:
            n = int(self.config.num_patches)
            g = math.isqrt(n)
            if g * g != n:
                raise ValueError(
                    f"SigLIP 2 with num_patches={n} (not a square grid) cannot be run on a "
                    "fixed image grid; only square position tables are supported"
                )
            self._grid = (g, g)
        else:
            g = int(self.config.image_size) // int(self.config.patch_size)
            self._grid = (g, g)
        self._pool_hidden: Tensor | None = None  # set by hide_patches, read by trace_pool

    @property
    def grid_size(self) -> tuple[int, int]:
        return self._grid

    @property
    def image_size(self) -> tuple[int, int]:
        p = int(self.config.patch_size)
        return (self._grid[0] * p, self._grid[1] * p)

    @property
    def pool_type(self) -> str:
        return "attn"

    @property
    def can_drop(self) -> bool:  # type: ignore[override]
        """Dropping = masking (the MAP head reads the kept tokens only); not for SigLIP 2,
        whose layers and head take a pixel attention mask of the full grid."""
        return not self.naflex

    def embed(self, images: Tensor) -> Tensor:
        """Hidden state 0 ``(B, h*w, d)``: patch embeddings plus positions.

        Raises:
            ValueError: (SigLIP 2) images that are not ``image_size``: the fixed-grid contract
                only runs the square grid of the position table.
        """
        emb = self.module.embeddings
        if not self.naflex:
            return emb(images.to(emb.patch_embedding.weight.dtype))
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"SigLIP 2 (NaFlex) runs here on the fixed {self.grid_size} grid of its "
                f"position table, i.e. {self.image_size} images; got {tuple(images.shape[-2:])}. "
                "Resize the images (variable resolutions / aspect ratios are not supported)"
            )
        b, c = images.shape[:2]
        (h, w), p = self.grid_size, int(self.config.patch_size)
        # Siglip2ImageProcessor.convert_image_to_patches: (h, w) patches of (p, p, C) pixels
        patches = images.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, -1)
        shapes = torch.tensor([[h, w]], device=images.device).expand(b, 2)
        return emb(patches.to(emb.patch_embedding.weight.dtype), shapes)

    def head(self, x: Tensor) -> Tensor:
        """``post_layernorm`` then the attention pooling head: ``(B, L, d) -> (B, D)``."""
        return self.module.head(self.module.post_layernorm(x))

    def token_head(self, tokens: Tensor) -> Tensor:
        """Each token ``(..., d)`` as if it were the only one the pooling probe reads (its
        value path through the head's attention, then the head's residual MLP)."""
        lead, d = tokens.shape[:-1], tokens.shape[-1]
        out = self.head(tokens.reshape(-1, 1, d))
        return out.reshape(*lead, out.shape[-1])

    def trace_pool(self, hooks: HookManager) -> dict[str, BlockTrace]:
        """Recompute the pooling head keeping its attention until ``hooks`` exits; the
        returned dict gets a :class:`~captum_clip.models.blocks.BlockTrace` under ``"pool"``
        at the next forward (``q`` ``(B, heads, 1, hd)``, ``k``/``v`` ``(B, heads, N, hd)``,
        ``context`` ``(B, 1, d)`` before ``out_proj``, ``output`` the pooled embedding)."""
        store: dict[str, BlockTrace] = {}
        head = self.module.head

        def forward(x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
            a = head.attention
            b, n, d = x.shape
            h = a.num_heads
            hd = d // h
            wq, wk, wv = a.in_proj_weight.chunk(3)
            bq, bk, bv = a.in_proj_bias.chunk(3)
            q = F.linear(head.probe.expand(b, -1, -1), wq, bq).reshape(b, 1, h, hd).transpose(1, 2)
            k, v = (
                F.linear(x, w, c).reshape(b, n, h, hd).transpose(1, 2)
                for w, c in ((wk, bk), (wv, bv))
            )
            logits = (q @ k.transpose(-1, -2)) * hd**-0.5
            drop = None if attention_mask is None else ~attention_mask.bool()
            if self._pool_hidden is not None:
                hide = self._pool_hidden.to(x.device)
                drop = hide if drop is None else drop | hide
            probs = logits.softmax(dim=-1)
            if drop is not None:  # no key left: the empty sum (probabilities 0), not NaN
                logits = logits.masked_fill(drop[:, None, None, :], float("-inf"))
                none = drop.all(-1)[:, None, None, None]
                probs = logits.masked_fill(none, 0.0).softmax(dim=-1).masked_fill(none, 0.0)
            context = (probs @ v).transpose(1, 2).reshape(b, 1, d)
            out = a.out_proj(context)
            out = (out + head.mlp(head.layernorm(out)))[:, 0]
            store["pool"] = BlockTrace(q, k, v, probs, context, out)
            return out

        hooks.patch_attr(head, "forward", forward)
        return store

    @contextmanager
    def hide_patches(self, hidden: Tensor) -> Iterator[None]:
        """Hide patches from every encoder layer (additive mask) and from the pooling head's
        attention (``key_padding_mask``) while the context is open."""
        self.check_hidden(hidden)
        b = hidden.shape[0]
        empty = hidden.all(1)  # every patch hidden: the head reads no key

        def inject_pool(module, args, kwargs):
            keys = args[1] if len(args) > 1 else kwargs["key"]
            self.check_batch(keys.shape[0], b)
            current = kwargs.get("key_padding_mask")
            hide = hidden.to(keys.device) & ~empty.to(keys.device)[:, None]  # no NaN rows
            kwargs["key_padding_mask"] = hide if current is None else current.bool() | hide
            return args, kwargs

        def empty_pool(module, args, out):
            # the attention over no key is the empty sum: 0, so only out_proj's bias remains
            # (the same convention as the timm adapter's MAP pooler)
            if not empty.any():
                return out
            att = out[0] if isinstance(out, tuple) else out
            bias = module.out_proj.bias
            fill = att.new_zeros(att.shape[-1]) if bias is None else bias.to(att.dtype)
            att = torch.where(empty.to(att.device)[:, None, None], fill, att)
            return (att, *out[1:]) if isinstance(out, tuple) else att

        with HookManager() as hooks:
            self.mask_layers(hooks, hidden)
            hooks.forward_pre(self.module.head.attention, inject_pool, with_kwargs=True)
            hooks.forward(self.module.head.attention, empty_pool)
            self._pool_hidden = hidden
            try:
                yield
            finally:
                self._pool_hidden = None


class HFSiglipText(HFText):
    """Text tower of a Hugging Face ``SiglipModel`` / ``Siglip2Model`` (bidirectional
    attention, last-position pooling, linear ``head``)."""

    def attention_mask(self, ids: Tensor, dtype: torch.dtype) -> Tensor | None:
        """None: every token reads every token (SigLIP's text tower has no causal mask and
        is run without a padding mask)."""
        return None

    def run_blocks(self, x: Tensor, ids: Tensor, start: int, stop: int) -> Tensor:
        for layer in self.blocks[start:stop]:
            x = layer(x, None)
        return x

    def pool_index(self, ids: Tensor) -> Tensor:
        """The last position (SigLIP pools it, padding or not)."""
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)

    def token_head(self, rows: Tensor) -> Tensor:
        return self.t.head(self.t.final_layer_norm(rows))
