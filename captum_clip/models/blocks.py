"""The one decoder of transformer-block internals (open_clip and Hugging Face CLIP).

Every method that opens a block -- Grad-ECLIP and gradient-weighted rollout (attention
probabilities with gradients), MaskCLIP (the value path alone) and the fast route of the
integrated interactions (one row of the last block) -- reads it through :class:`BlockView`,
so the supported layouts are checked in exactly one place. Tower adapters hand out views
with ``tower.block_view(i)``.

open_clip blocks call ``nn.MultiheadAttention(..., need_weights=False)`` and Hugging Face
``CLIPEncoderLayer`` does not return its attention either, so :func:`block_forward`
recomputes the block from its own weights; it is tested equal to the block's output.
:func:`trace_blocks` swaps it in for one forward pass (always undone by the
:class:`~captum_clip._hooks.HookManager`) so a user's forward function runs unchanged and
its graph contains the traced tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip._hooks import HookManager
from captum_clip.models.row_path import RowPath

__all__ = [
    "BlockStack",
    "BlockTrace",
    "BlockView",
    "RowPath",
    "block_forward",
    "row_path",
    "trace_blocks",
]


class BlockStack:
    """A tower seen as a stack of transformer blocks (base of the tower adapters)."""

    @property
    def blocks(self) -> list[nn.Module]:
        """The blocks in forward order."""
        raise NotImplementedError

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)


@dataclass
class BlockTrace:
    """Intermediate tensors of one block forward (batch first).

    Attributes:
        q, k, v: ``(B, heads, L, head_dim)`` projections (after ``ln_1``, with biases).
        probs: ``(B, heads, L, L)`` softmax attention probabilities.
        context: ``(B, L, d)`` attention output before ``out_proj`` (heads concatenated).
        output: ``(B, L, d)`` block output.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    probs: Tensor
    context: Tensor
    output: Tensor


def _is_hf_layer(block: nn.Module) -> bool:
    sa = getattr(block, "self_attn", None)
    return (
        sa is not None
        and all(hasattr(sa, n) for n in ("q_proj", "k_proj", "v_proj", "out_proj"))
        and all(hasattr(block, n) for n in ("layer_norm1", "layer_norm2", "mlp"))
    )


def _timm_attention(block: nn.Module) -> nn.Module | None:
    """The attention of a timm ``Block`` (ViT) or ``EvaBlock`` (EVA), else None."""
    try:
        from timm.models.eva import EvaBlock
        from timm.models.vision_transformer import Block
    except ImportError:  # pragma: no cover - timm is optional
        return None
    return block.attn if isinstance(block, (Block, EvaBlock)) else None


def _gamma(g: Tensor | None) -> Callable[[Tensor], Tensor]:
    """EVA's layer scale ``gamma * t`` (identity when the block has none)."""
    return nn.Identity() if g is None else (lambda t: t * g)


class BlockView:
    """Uniform access to the parts of one pre-norm transformer block.

    ``block(x) = r + ls_2(mlp(ln_2(r)))`` with ``r = x + ls_1(out_proj(attention))``;
    the attention reads ``q, k, v`` (``(B, heads, L, head_dim)``), normalises ``q`` and
    ``k`` per head (``q_norm`` / ``k_norm``: identity unless the block has them), rotates
    them with RoPE when the tower passes a ``rope`` table (timm EVA; the first
    ``rope_prefix`` tokens are not rotated) and :meth:`out_proj` includes the inner
    ``attn.norm`` of EVA-02 / timm ``scale_norm`` attention.

    Args:
        block: An open_clip ``ResidualAttentionBlock`` (``nn.MultiheadAttention``), a
            ``transformers`` ``CLIPEncoderLayer``, a timm ``Block`` (fused ``qkv``,
            optional ``q_norm``/``k_norm``, ``ls1``/``ls2`` LayerScale) or a timm
            ``EvaBlock`` (fused or separate q/k/v with ``q_bias``/``v_bias``, RoPE, SwiGLU,
            ``gamma_1``/``gamma_2`` layer scale, inner attention norm).
        heads: Number of attention heads (default: read from the block).

    Raises:
        ValueError: Any other block or attention layout (``bias_k``/``bias_v``,
            ``add_zero_attn``, cross-attention, gated or grouped-query timm attention).
    """

    def __init__(self, block: nn.Module, heads: int | None = None) -> None:
        self.block = block
        self.q_norm = self.k_norm = self.attn_norm = nn.Identity()
        self.rope_prefix, self.rope_half = 0, False
        if _is_hf_layer(block):
            a = block.self_attn
            self.kind = "hf"
            self.ln_1, self.ln_2, self.mlp = block.layer_norm1, block.layer_norm2, block.mlp
            self.ls_1 = self.ls_2 = nn.Identity()
            self.heads = int(a.num_heads if heads is None else heads)
            self.scale = float(a.scale)
            self._q, self._k, self._v, self._out = a.q_proj, a.k_proj, a.v_proj, a.out_proj
            return
        timm_attn = _timm_attention(block)
        if timm_attn is not None:
            self._init_timm(block, timm_attn)
            return
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention):
            raise ValueError(
                "expected an open_clip ResidualAttentionBlock with nn.MultiheadAttention, a "
                "transformers CLIPEncoderLayer or a timm Block / EvaBlock, got "
                f"{type(block).__name__} with attention {type(attn).__name__}"
            )
        if (
            not attn._qkv_same_embed_dim
            or attn.bias_k is not None
            or attn.add_zero_attn
            or hasattr(block, "ln_1_kv")
            or not all(hasattr(block, n) for n in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2"))
        ):
            raise ValueError(
                "unsupported attention layout (separate q/k/v weights, bias_k/bias_v, "
                "add_zero_attn or cross-attention); only standard CLIP self-attention is supported"
            )
        self.kind = "open_clip"
        self.ln_1, self.ln_2, self.mlp = block.ln_1, block.ln_2, block.mlp
        self.ls_1, self.ls_2 = block.ls_1, block.ls_2
        self.heads = int(attn.num_heads if heads is None else heads)
        self.scale = (attn.embed_dim // self.heads) ** -0.5
        self._attn = attn

    def _init_timm(self, block: nn.Module, a: nn.Module) -> None:
        dim = block.norm1.normalized_shape[0] if hasattr(block.norm1, "normalized_shape") else None
        ok = (
            getattr(a, "gate", None) is None
            and getattr(a, "num_kv_groups", 1) == 1
            and hasattr(a, "proj")
            and (dim is None or a.num_heads * a.head_dim == dim)
            and (getattr(a, "qkv", None) is not None or getattr(a, "q_proj", None) is not None)
        )
        if not ok:
            raise ValueError(
                f"unsupported timm attention {type(a).__name__} in {type(block).__name__}: "
                "gated, grouped-query (num_kv_heads) or head_dim * heads != width; standard "
                "timm Attention / EvaAttention / AttentionRope are supported"
            )
        self.kind = "eva" if hasattr(block, "gamma_1") else "timm"
        self.ln_1, self.ln_2, self.mlp = block.norm1, block.norm2, block.mlp
        if self.kind == "eva":
            self.ls_1, self.ls_2 = _gamma(block.gamma_1), _gamma(block.gamma_2)
        else:
            self.ls_1, self.ls_2 = block.ls1, block.ls2
        self.q_norm, self.k_norm, self.attn_norm = a.q_norm, a.k_norm, a.norm
        self.rope_prefix = int(getattr(a, "num_prefix_tokens", 0))
        self.rope_half = bool(getattr(a, "rotate_half", False))
        self.heads = int(a.num_heads)
        self.scale = float(a.scale)
        self._attn = a

    @property
    def has_qk_norm(self) -> bool:
        """The block normalises queries / keys per head (timm ``qk_norm``)."""
        return not (isinstance(self.q_norm, nn.Identity) and isinstance(self.k_norm, nn.Identity))

    def projections(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(wq, bq, wk, bk, wv, bv)`` of ``y = z @ w.T + b`` (zero biases when absent)."""
        if self.kind == "hf":
            lins = (self._q, self._k, self._v)
        elif self.kind in ("timm", "eva") and getattr(self._attn, "qkv", None) is None:
            lins = (self._attn.q_proj, self._attn.k_proj, self._attn.v_proj)
        else:
            lins = None
        if lins is not None:
            out = []
            for lin in lins:
                bias = lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
                out += [lin.weight, bias]
            return tuple(out)
        a = self._attn
        if self.kind == "open_clip":
            w, b = a.in_proj_weight, a.in_proj_bias
        elif getattr(a, "q_bias", None) is not None:  # EVA: q_bias, zero k_bias, v_bias
            w = a.qkv.weight
            b = torch.cat([a.q_bias, torch.zeros_like(a.q_bias), a.v_bias])
        else:
            w, b = a.qkv.weight, a.qkv.bias
        b = b if b is not None else w.new_zeros(w.shape[0])
        wq, wk, wv = w.chunk(3)
        bq, bk, bv = b.chunk(3)
        return wq, bq, wk, bk, wv, bv

    @property
    def out_linear(self) -> nn.Linear:
        """The attention output projection (``out_proj``; timm ``proj``)."""
        if self.kind == "hf":
            return self._out
        return self._attn.proj if self.kind in ("timm", "eva") else self._attn.out_proj

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(q, k, v)``, each ``(B, L, d)``, of the normalised hidden states ``h`` (before
        ``q_norm`` / ``k_norm`` and RoPE)."""
        if self.kind == "hf":
            return self._q(h), self._k(h), self._v(h)
        if self.kind == "open_clip":
            a = self._attn
            return F.linear(h, a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1)
        wq, bq, wk, bk, wv, bv = self.projections()
        return F.linear(h, wq, bq), F.linear(h, wk, bk), F.linear(h, wv, bv)

    def value(self, h: Tensor) -> Tensor:
        """Value projection ``W_v h + b_v`` ``(B, L, d)`` alone."""
        if self.kind == "hf":
            return self._v(h)
        if self.kind in ("timm", "eva"):
            _, _, _, _, wv, bv = self.projections()
            return F.linear(h, wv, bv)
        a = self._attn
        d = h.shape[-1]
        bias = None if a.in_proj_bias is None else a.in_proj_bias[2 * d :]
        return F.linear(h, a.in_proj_weight[2 * d :], bias)

    def rotate(self, t: Tensor, rope: Tensor | None) -> Tensor:
        """RoPE on ``(B, heads, L, head_dim)`` queries or keys (the first
        :attr:`rope_prefix` tokens unrotated), as timm's EVA attention applies it."""
        if rope is None:
            return t
        from timm.layers import apply_rot_embed_cat

        n = self.rope_prefix
        rotated = apply_rot_embed_cat(t[:, :, n:], rope, half=self.rope_half)
        return torch.cat([t[:, :, :n], rotated], dim=2).type_as(t)

    def out_proj(self, context: Tensor) -> Tensor:
        """Attention output projection of the concatenated heads (after ``attn.norm``)."""
        return self.out_linear(self.attn_norm(context))

    def additive_mask(self, mask: Tensor | None, batch: int, length: int) -> Tensor | None:
        """The block's attention mask as an additive ``(B or 1, heads or 1, L, L)`` tensor."""
        if mask is None:
            return None
        if mask.dtype == torch.bool:  # open_clip: True = hidden; timm (SDPA): True = kept
            hide = ~mask if self.kind in ("timm", "eva") else mask
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(hide, float("-inf"))
        if mask.ndim == 2:
            return mask[None, None]
        if mask.ndim == 3:  # nn.MultiheadAttention: (B*heads, L, L)
            return mask.reshape(batch, self.heads, length, length)
        return mask  # HF / timm: (B, 1 or heads, L, L)

    def row_path(self, head: Callable[[Tensor], Tensor]) -> RowPath:
        """This block plus ``head`` as the :class:`RowPath` of the interactions' fast route
        (``q_norm`` / ``k_norm`` and the inner attention norm included; no RoPE table: a
        tower with RoPE passes it, see ``TimmViT.row_path``)."""
        wq, bq, wk, bk, wv, bv = self.projections()
        out = self.out_linear
        bo = out.bias if out.bias is not None else out.weight.new_zeros(out.out_features)
        return RowPath(
            self.ln_1, wq, bq, wk, bk, wv, bv, out.weight, bo, self.heads, self.scale,
            self.ls_1, self.ln_2, self.mlp, self.ls_2, head,
            q_norm=self.q_norm, k_norm=self.k_norm, attn_norm=self.attn_norm,
        )  # fmt: skip


def row_path(block: nn.Module, head: Callable[[Tensor], Tensor]) -> RowPath | None:
    """:meth:`BlockView.row_path` of ``block``, or None for an unsupported block layout.

    None too for an ``EvaBlock`` whose attention rotates with RoPE: the table belongs to
    the tower (``TimmViT.row_path`` builds that path)."""
    try:
        view = BlockView(block)
    except ValueError:
        return None
    if view.kind == "eva":
        return None
    return view.row_path(head)


def block_forward(
    view: BlockView, x: Tensor, attn_mask: Tensor | None = None, rope: Tensor | None = None
) -> BlockTrace:
    """The block's forward on batch-first ``x`` ``(B, L, d)``, keeping every intermediate.

    Reproduces ``ResidualAttentionBlock.forward`` (open_clip), ``CLIPEncoderLayer``
    (Hugging Face) and timm ``Block`` / ``EvaBlock`` in eval mode (no dropout):
    ``x + ls_1(out_proj(softmax(q k^T * scale + mask) v))`` then ``+ ls_2(mlp(ln_2(.)))``,
    with ``q, k`` normalised per head and rotated by ``rope`` when the block does that.
    """
    b, length, d = x.shape
    hd = d // view.heads
    q, k, v = (t.reshape(b, length, view.heads, hd).transpose(1, 2) for t in view.qkv(view.ln_1(x)))
    q, k = view.q_norm(q), view.k_norm(k)
    q, k = view.rotate(q, rope), view.rotate(k, rope)
    logits = (q @ k.transpose(-1, -2)) * view.scale
    mask = view.additive_mask(attn_mask, b, length)
    if mask is not None:
        logits = logits + mask.to(logits.dtype)
    probs = logits.softmax(dim=-1)
    context = (probs @ v).transpose(1, 2).reshape(b, length, d)
    out = x + view.ls_1(view.out_proj(context))
    out = out + view.ls_2(view.mlp(view.ln_2(out)))
    return BlockTrace(q, k, v, probs, context, out)


def _replacement(view: BlockView, batch_first: bool, store: dict, index: int) -> Callable:
    def run(x: Tensor, mask: Tensor | None, rope: Tensor | None = None) -> Tensor:
        if torch.is_grad_enabled() and not x.requires_grad:
            x = x.detach().requires_grad_(True)  # keep a graph even for frozen models
        trace = block_forward(view, x, mask, rope)
        store[index] = trace
        return trace.output

    if view.kind in ("timm", "eva"):
        takes_rope = view.kind == "eva"

        def forward_timm(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            names = ("rope", "attn_mask", "is_causal") if takes_rope else ("attn_mask", "is_causal")
            kwargs.update(zip(names, args))
            if kwargs.get("is_causal"):
                raise ValueError("causal timm blocks are not supported (vision towers only)")
            return run(x, kwargs.get("attn_mask"), kwargs.get("rope"))

        return forward_timm

    if view.kind == "hf":

        def forward_hf(hidden_states: Tensor, attention_mask: Tensor | None = None, *a, **kw):
            return run(hidden_states, attention_mask)

        return forward_hf

    def forward(q_x: Tensor, k_x=None, v_x=None, attn_mask: Tensor | None = None) -> Tensor:
        if k_x is not None or v_x is not None:
            raise ValueError("cross-attention blocks are not supported")
        if batch_first:
            return run(q_x, attn_mask)
        return run(q_x.transpose(0, 1), attn_mask).transpose(0, 1)

    return forward


def trace_blocks(tower: Any, indices: list[int], hooks: HookManager) -> dict[int, BlockTrace]:
    """Run the blocks ``indices`` through :func:`block_forward` until ``hooks`` exits.

    Returns a dict that the next forward pass fills with a :class:`BlockTrace` per traced
    block. The blocks' ``forward`` is patched through ``hooks`` (restored on its exit).
    """
    store: dict[int, BlockTrace] = {}
    blocks = tower.blocks
    for i in indices:
        view = tower.block_view(i)
        hooks.patch_attr(blocks[i], "forward", _replacement(view, tower.batch_first, store, i))
    return store
