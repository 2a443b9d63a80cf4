"""timm attention towers inside open_clip ``TimmModel``: ``VisionTransformer`` and ``Eva``.

What the family is, and how the adapter reads it:

* **Tokens**: ``num_prefix_tokens`` prefix tokens (class token and/or register tokens, or
  none: SigLIP) followed by the row-major patch grid; hidden state 0 is the output of
  ``patch_embed -> _pos_embed -> norm_pre`` (timm's own code).
* **Positions**: absolute (added in ``_pos_embed``) and, for ``Eva`` (EVA-02), RoPE applied
  to q/k inside every block from a table the trunk builds (``trunk.rope``); the prefix
  tokens are not rotated.
* **Pooling** (``pool_type``): ``"tok"`` (class token), ``"avg"`` (mean of the patch
  tokens, then ``fc_norm``) or ``"attn"`` (MAP: timm ``AttentionPoolLatent``, a learned
  latent query attending over the tokens, then ``proj`` and a residual MLP). The head is
  ``trunk.norm -> trunk.forward_head -> TimmModel.head``.
* **Per-token head** (:meth:`TimmViT.token_head`): each token as if it were the pooled
  one. For MAP pooling that is the pooler applied to the single token: with one key the
  attention weight is 1 whatever the latent query, so a token goes through the pooler's
  value path (``kv`` value half -> ``proj`` -> ``+ mlp(norm(.))``). MaskCLIP's dense maps
  on a MAP tower are therefore "the last block and the pooler with their attention
  replaced by the identity".
* **Hiding patches** (:meth:`TimmViT.hide_patches`): an additive ``attn_mask`` through
  timm's own ``attn_mask`` argument of every block and of the MAP pooler (a masked mean
  for average pooling). A hidden patch still reads the kept tokens and itself (its own
  row never reaches a kept token, so this changes nothing kept, and no row is empty).
  When every patch of an example is hidden and the tower has no prefix token, the pooler
  has no key: its attention output is taken as the empty sum 0 (as the masked mean of no
  token is 0), so the embedding is the image-independent "no tokens" embedding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from captum_clip._hooks import HookManager
from captum_clip.models.base import DropUnavailable, ViTTower
from captum_clip.models.blocks import BlockTrace, BlockView, RowPath

__all__ = ["TimmViT", "is_timm_attention", "latent_pool_forward"]


def is_timm_attention(trunk: nn.Module) -> bool:
    """The trunk is a timm ``VisionTransformer`` or ``Eva`` (an attention tower)."""
    try:
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is optional
        return False
    return isinstance(trunk, (VisionTransformer, Eva))


def latent_pool_forward(pool: nn.Module, x: Tensor, attn_mask: Tensor | None = None) -> BlockTrace:
    """timm ``AttentionPoolLatent.forward`` recomputed, keeping q/k/v and the probabilities.

    Args:
        pool: The pooler (no ``pos_embed``).
        x: ``(B, N, d)`` tokens it pools.
        attn_mask: Additive mask broadcastable to ``(B, heads, latent_len, N)``.

    Returns:
        A :class:`~captum_clip.models.blocks.BlockTrace`: ``q`` ``(B, heads, latent_len,
        hd)``, ``k``/``v`` ``(B, heads, N, hd)``, ``probs``, ``context`` (attention output
        before ``proj``, ``(B, latent_len, d)``) and ``output`` (what the pooler returns).
    """
    if pool.pos_embed is not None:
        raise ValueError(
            "AttentionPoolLatent with pos_embed='abs' is not supported (its positions are "
            "tied to the full token grid); pooler without pos_embed expected"
        )
    b, n, d = x.shape
    h, hd = pool.num_heads, pool.head_dim
    q = pool.q(pool.latent.expand(b, -1, -1)).reshape(b, pool.latent_len, h, hd).transpose(1, 2)
    k, v = pool.kv(x).reshape(b, n, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = pool.q_norm(q), pool.k_norm(k)
    logits = (q * pool.scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        logits = logits + attn_mask.to(logits.dtype)
    probs = logits.softmax(dim=-1)
    context = (probs @ v).transpose(1, 2).reshape(b, pool.latent_len, h * hd)
    return BlockTrace(q, k, v, probs, context, _latent_tail(pool, context))


def _latent_tail(pool: nn.Module, context: Tensor) -> Tensor:
    """What ``AttentionPoolLatent`` does after the attention (``proj``, MLP, pooling)."""
    out = pool.proj_drop(pool.proj(context))
    if pool.mlp is not None:
        out = out + pool.mlp(pool.norm(out))
    if pool.pool == "token":
        return out[:, 0]
    return out.mean(1) if pool.pool == "avg" else out


class TimmViT(ViTTower):
    """open_clip ``TimmModel`` over a timm ``VisionTransformer`` or ``Eva`` (see module
    docstring for tokens, positions, pooling, the per-token head and hiding patches)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.trunk = module.trunk
        if getattr(self.trunk, "dynamic_img_size", False):
            raise ValueError(
                "timm towers with dynamic_img_size=True are not supported (the patch grid "
                "must be fixed); build the trunk with dynamic_img_size=False"
            )

    @property
    def n_prefix(self) -> int:  # type: ignore[override]
        return int(self.trunk.num_prefix_tokens)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.trunk.blocks)

    @property
    def heads(self) -> int:
        return int(self.blocks[0].attn.num_heads)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.module.image_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.trunk.patch_embed.grid_size)

    @property
    def is_eva(self) -> bool:
        return hasattr(self.trunk, "rope")

    @property
    def pool_type(self) -> str:
        pool = getattr(self.trunk, "attn_pool", None)
        if pool is not None:
            return "attn" if type(pool).__name__ == "AttentionPoolLatent" else "unknown"
        return {"token": "tok", "avg": "avg"}.get(self.trunk.global_pool, "unknown")

    @property
    def pool_prefix(self) -> int:
        """How many prefix tokens the MAP pooler reads before the patches (ViT: none
        unless ``pool_include_prefix``; Eva: all)."""
        if self.is_eva or getattr(self.trunk, "pool_include_prefix", False):
            return self.n_prefix
        return 0

    # -- forward pieces ---------------------------------------------------------------

    def embed(self, images: Tensor) -> Tensor:
        """Hidden state 0: ``patch_embed -> _pos_embed -> norm_pre`` (timm's code)."""
        t = self.trunk
        x = t._pos_embed(t.patch_embed(images))
        if self.is_eva:
            x = x[0]  # (tokens, rope table)
        elif t.patch_drop is not None:
            x = t.patch_drop(x)
        return t.norm_pre(x)

    def rope(self, index: int) -> Tensor | None:
        """The RoPE table block ``index`` receives (None without RoPE), as ``Eva`` builds it."""
        rope = getattr(self.trunk, "rope", None)
        if rope is None:
            return None
        if hasattr(rope, "feat_shape"):
            table = rope.get_embed()
        else:
            table = rope.get_embed(shape=self.trunk.patch_embed.grid_size)
        return table[index] if getattr(self.trunk, "rope_mixed", False) else table

    def run_blocks(
        self, x: Tensor, start: int, stop: int, attn_mask: Tensor | None = None
    ) -> Tensor:
        """Run blocks ``start..stop-1`` (with their RoPE table) on ``x`` ``(B, L, d)``."""
        for i in range(start, stop):
            block = self.trunk.blocks[i]
            if self.is_eva:
                x = block(x, rope=self.rope(i), attn_mask=attn_mask)
            else:
                x = block(x, attn_mask=attn_mask)
        return x

    def head(self, x: Tensor) -> Tensor:
        """``trunk.norm -> trunk.forward_head -> TimmModel.head``."""
        return self.module.head(self.trunk.forward_head(self.trunk.norm(x)))

    def token_head(self, tokens: Tensor) -> Tensor:
        """Each token ``(..., d)`` as if it were the pooled one; for MAP pooling the pooler
        applied to that token alone (its value path, see module docstring)."""
        kind = self.pool_type
        if kind == "unknown":
            raise ValueError(
                f"timm pooling {self.trunk.global_pool!r} has no per-token head; token, avg "
                "and map pooling are supported"
            )
        t = self.trunk
        lead, d = tokens.shape[:-1], tokens.shape[-1]
        x = t.norm(tokens.reshape(-1, 1, d))
        pooled = latent_pool_forward(t.attn_pool, x).output if kind == "attn" else x[:, 0]
        out = self.module.head(t.head(t.head_drop(t.fc_norm(pooled))))
        return out.reshape(*lead, out.shape[-1])

    def block_view(self, index: int) -> BlockView:
        return BlockView(self.blocks[self.block_index(index)])

    def row_path(self, head=None) -> RowPath | None:
        """The last block and ``head`` (default :meth:`token_head`) as the interactions'
        fast-route :class:`~captum_clip.models.blocks.RowPath`, RoPE table included;
        None where the maths does not apply (mixed RoPE)."""
        if getattr(self.trunk, "rope_mixed", False):
            return None
        view = self.block_view(-1)
        row = view.row_path(self.token_head if head is None else head)
        table = self.rope(self.n_blocks - 1)
        if table is not None:
            pad = torch.cat([table.new_zeros(self.n_prefix, table.shape[-1] // 2)] * 2, -1)
            pad[:, table.shape[-1] // 2 :] = 1.0  # sin 0, cos 1: the prefix is not rotated
            row.rope, row.rope_half = torch.cat([pad, table]), view.rope_half
        return row

    @property
    def can_drop(self) -> bool:  # type: ignore[override]
        """Dropping = masking for token / avg / MAP pooling (RoPE: per-block tables not
        mixed; the kept patches keep their rotations)."""
        return self.pool_type != "unknown" and not getattr(self.trunk, "rope_mixed", False)

    def _keep_extra(self, hooks: HookManager, keep: Tensor) -> None:
        """With RoPE every block gets the kept patches' rows of its table, per example
        (an ``Eva`` without RoPE, EVA-01, has only absolute positions, added before)."""
        if getattr(self.trunk, "rope", None) is None:
            return

        def rope(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
            table = kwargs.get("rope")
            if table is None or len(args) > 1:
                raise DropUnavailable(
                    "dropping hidden patches needs the Eva blocks' RoPE table passed by "
                    f"keyword; got {len(args)} positional arguments and keywords "
                    f"{sorted(kwargs)}"
                )
            if table.ndim != 2 or table.shape[0] != self.n_patches:
                raise DropUnavailable(
                    f"dropping hidden patches expected a ({self.n_patches}, dim) RoPE table, "
                    f"got {tuple(table.shape)}"
                )
            kwargs["rope"] = table[keep.to(table.device)][:, None]  # (B, 1, n_keep, dim)
            return args, kwargs

        for block in self.blocks:
            hooks.forward_pre(block, rope, with_kwargs=True)

    # -- tracing and hiding ---------------------------------------------------------------

    def trace_pool(self, hooks: HookManager) -> dict[str, BlockTrace]:
        """Run the MAP pooler through :func:`latent_pool_forward` until ``hooks`` exits;
        the returned dict gets the pooler's trace under ``"pool"`` at the next forward."""
        if self.pool_type != "attn":
            raise ValueError(f"this tower pools with {self.pool_type!r}, not an attention pooler")
        store: dict[str, BlockTrace] = {}
        pool = self.trunk.attn_pool

        def forward(x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
            store["pool"] = trace = latent_pool_forward(pool, x, attn_mask)
            return trace.output

        hooks.patch_attr(pool, "forward", forward)
        return store

    @contextmanager
    def hide_patches(self, hidden: Tensor) -> Iterator[None]:
        self.check_hidden(hidden)
        kind = self.pool_type
        if kind == "unknown":
            raise ValueError(
                f"attention-mode masking supports token, avg and map pooling; this timm tower "
                f"pools with {self.trunk.global_pool!r} (use mask_mode='pixel')"
            )
        b, n = hidden.shape[0], self.n_prefix
        keys = torch.cat([hidden.new_zeros(b, n), hidden], 1)  # (B, L) True = hidden
        length = keys.shape[1]
        off_diag = ~torch.eye(length, dtype=torch.bool, device=hidden.device)
        block_mask = torch.zeros(b, 1, length, length, device=hidden.device)
        block_mask.masked_fill_(keys[:, None, None, :] & off_diag, float("-inf"))

        def inject(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
            x = args[0] if args else kwargs["x"]
            if len(args) > 1:
                raise ValueError(
                    "masking patches needs the timm blocks' attention mask passed by keyword "
                    f"(as timm's own forward does); got {len(args)} positional arguments"
                )
            self.check_batch(x.shape[0], b)
            kwargs["attn_mask"] = _combine(block_mask, kwargs.get("attn_mask"), x)
            return args, kwargs

        with HookManager() as hooks:
            for block in self.blocks:
                hooks.forward_pre(block, inject, with_kwargs=True)
            if kind == "attn":
                self._hide_in_pooler(hooks, keys)
            elif kind == "avg":
                self._hide_in_mean(hooks, keys)
            yield

    def _hide_in_pooler(self, hooks: HookManager, keys: Tensor) -> None:
        pool = self.trunk.attn_pool
        keys = keys[:, self.n_prefix - self.pool_prefix :]
        empty = keys.all(1)  # no key left: attention output = empty sum 0
        mask = torch.zeros(keys.shape[0], 1, 1, keys.shape[1], device=keys.device)
        mask.masked_fill_(keys[:, None, None, :] & ~empty[:, None, None, None], float("-inf"))

        def inject(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
            x = args[0] if args else kwargs["x"]
            if x.shape[1] != keys.shape[1]:
                raise ValueError(
                    f"the hidden patches were set for a pooler over {keys.shape[1]} tokens, "
                    f"got {x.shape[1]}"
                )
            self.check_batch(x.shape[0], keys.shape[0])
            kwargs["attn_mask"] = _combine(mask, kwargs.get("attn_mask"), x)
            return args, kwargs

        def fix_empty(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
            if not empty.any():
                return out
            ctx = out.new_zeros(int(empty.sum()), pool.latent_len, pool.num_heads * pool.head_dim)
            out = out.clone()
            out[empty.to(out.device)] = _latent_tail(pool, ctx)
            return out

        hooks.forward_pre(pool, inject, with_kwargs=True)
        hooks.forward(pool, fix_empty)

    def _hide_in_mean(self, hooks: HookManager, keys: Tensor) -> None:
        include = getattr(self.trunk, "pool_include_prefix", False)
        start = 0 if include else self.n_prefix

        def masked_pool(x: Tensor, pool_type: str | None = None) -> Tensor:
            w = (~keys[:, start:]).to(x.device, x.dtype)[:, :, None]
            return (x[:, start:] * w).sum(1) / w.sum(1).clamp_min(1.0)

        hooks.patch_attr(self.trunk, "pool", masked_pool)


def _combine(mask: Tensor, current: Tensor | None, x: Tensor) -> Tensor:
    """``mask`` (additive) plus a mask the caller already passed (timm: bool True = keep)."""
    m = mask.to(dtype=x.dtype, device=x.device)
    if current is None:
        return m
    if current.dtype == torch.bool:
        current = torch.zeros(current.shape, dtype=x.dtype, device=x.device).masked_fill(
            ~current, float("-inf")
        )
    return m + current
