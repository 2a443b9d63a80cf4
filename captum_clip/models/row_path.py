"""The interactions' fast route through the last block: :class:`RowPath`.

Built by :meth:`captum_clip.models.blocks.BlockView.row_path` (re-exported there) and
consumed by :func:`captum_clip.attr._interaction_paths.integrate_pooled`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["RowPath"]


@dataclass
class RowPath:
    """A pre-norm transformer block and the head, seen from the pooled token.

    ``block(x) = r + ls2(mlp(ln2(r)))`` with ``r = x + ls1(attn(ln1(x)))`` and multi-head
    attention with the given projections (``y = z @ w.T + b``); ``head`` maps the block's
    pooled output row ``(d,)`` to the unnormalised embedding ``(D,)``. Consumed by
    :func:`captum_clip.attr._interaction_paths.integrate_pooled`.

    timm blocks add ``q_norm`` / ``k_norm`` (per head, on ``(..., head_dim)``),
    ``attn_norm`` (on the concatenated heads before ``wo``) and RoPE: ``rope`` is then the
    ``(T, 2 * head_dim)`` sin/cos table of every token (prefix rows ``sin = 0, cos = 1``,
    i.e. unrotated) in timm's ``apply_rot_embed_cat`` layout (``rope_half``: half layout).
    """

    ln1: Callable[[Tensor], Tensor]
    wq: Tensor
    bq: Tensor
    wk: Tensor
    bk: Tensor
    wv: Tensor
    bv: Tensor
    wo: Tensor
    bo: Tensor
    heads: int
    scale: float
    ls1: Callable[[Tensor], Tensor]
    ln2: Callable[[Tensor], Tensor]
    mlp: Callable[[Tensor], Tensor]
    ls2: Callable[[Tensor], Tensor]
    head: Callable[[Tensor], Tensor]
    q_norm: Callable[[Tensor], Tensor] = nn.Identity()
    k_norm: Callable[[Tensor], Tensor] = nn.Identity()
    attn_norm: Callable[[Tensor], Tensor] = nn.Identity()
    rope: Tensor | None = None
    rope_half: bool = False
