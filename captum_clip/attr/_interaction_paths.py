"""Integrated token-wise directional derivatives of one tower: the ``u`` / ``v`` factors.

For a tower map ``F: (T, d) -> (D,)`` from the hidden states at the attribution layer to
the (normalised) embedding, the straight path ``x_a = x0 + a * (x - x0)`` and a quadrature
rule ``(a_n, w_n)`` from Captum, every function here returns the ``(D, T)`` matrix

    U[k, t] = sum_n w_n * (dF_k/dx)(x_{a_n}) . (Delta x restricted to token t)

Three exact routes:

* :func:`integrate_forward` -- one Jacobian-vector product per token and step
  (``torch.func.jvp`` under ``vmap`` over the token tangents);
* :func:`integrate_reverse` -- one vector-Jacobian product per embedding dimension and step
  (``vmap`` over the ``D`` one-hot cotangents), contracted with ``Delta x`` token by token;
* :func:`integrate_pooled` -- the attribution layer is the input of the last block, so only
  the pooled token's row (CLS / EOT) of that block reaches the embedding. A tangent on
  token ``p`` changes only ``p``'s key and value (and the query when ``p`` is the pooled
  token), so keys/values are computed once per step and every tangent recomputes one row.
  Per-head ``q_norm`` / ``k_norm``, an inner attention norm and RoPE (timm ViT / EVA
  blocks) act token by token, so the same argument holds with them (see
  :class:`~captum_clip.models.blocks.RowPath`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from captum_clip.models.blocks import RowPath

with warnings.catch_warnings():
    # torch.func.jvp imports this module on first use, and importing it calls the deprecated
    # torch.jit.script: a FutureWarning on every run that users cannot act on. Import it here
    # with exactly that warning silenced (scoped; every other warning still shows).
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
    )
    import torch._decomp.decompositions_for_jvp  # noqa: F401

__all__ = [
    "RowPath",
    "auto_chunk",
    "forward_ad_mode",
    "integrate_forward",
    "integrate_pooled",
    "integrate_reverse",
    "pair_bytes",
    "quadrature",
]

Update = Callable[[int], object]


def quadrature(
    method: str, n_steps: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Captum's integration points ``alphas`` and weights (``step_sizes``) on ``[0, 1]``."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    known = (
        "gausslegendre",
        "riemann_left",
        "riemann_right",
        "riemann_middle",
        "riemann_trapezoid",
    )
    if method not in known:
        raise ValueError(f"method must be one of {known}, got {method!r}")
    if method != "gausslegendre" and n_steps < 2:
        raise ValueError(f"n_steps must be >= 2 for {method!r}, got {n_steps}")
    step_sizes, alphas = approximation_parameters(method)
    a = torch.tensor(alphas(n_steps), dtype=dtype, device=device)
    w = torch.tensor(step_sizes(n_steps), dtype=dtype, device=device)
    return a, w


@contextmanager
def forward_ad_mode() -> Iterator[None]:
    """Attention kernels that support forward-mode AD on CPU (restored on exit).

    ``nn.MultiheadAttention``'s fused fast path and the flash SDPA kernel have no forward
    derivative; the math kernel and the unfused module path do.
    """
    mha = torch.backends.mha
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        mha.set_fastpath_enabled(previous)


MIN_PAIRS, MAX_PAIRS = 16, 4096
CPU_BUDGET = 1 << 30  # bytes of activations one vectorised pass may hold on the CPU
GPU_BUDGET = 8 << 30  # ... on a GPU (at most a quarter of its free memory)


def pair_bytes(x: Tensor) -> int:
    """Estimated activation bytes of one (step, tangent) pair in a full-tower JVP pass.

    ``x`` is ``(T, d)`` (or ``(..., T, d)``): a pre-norm transformer block holds about
    ``12 T d`` values (residual, q/k/v, context, a 4x MLP) plus ``heads * T^2`` attention
    scores (``heads ~ d / 64``), twice over for the primal and the tangent, with slack for
    temporaries: ``T d (24 + T / 32)`` elements.
    """
    t, d = int(x.shape[-2]), int(x.shape[-1])
    return int(t * d * (24 + t / 32)) * x.element_size()


def auto_chunk(x: Tensor) -> int:
    """(step, tangent) pairs per vectorised pass that fit the device's memory budget.

    CPU: :data:`CPU_BUDGET`; CUDA: a quarter of the free memory, at most
    :data:`GPU_BUDGET`; clamped to ``[MIN_PAIRS, MAX_PAIRS]``.
    """
    if x.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(x.device)
        budget = min(free // 4, GPU_BUDGET)
    else:
        budget = CPU_BUDGET
    return max(MIN_PAIRS, min(MAX_PAIRS, budget // max(pair_bytes(x), 1)))


def _groups(n_steps: int, per_step: int, chunk: int | None) -> list[slice]:
    """Split the steps so that one call evaluates about ``chunk`` (step, direction) pairs."""
    size = n_steps if chunk is None else max(1, chunk // max(per_step, 1))
    return [slice(i, min(i + size, n_steps)) for i in range(0, n_steps, size)]


def integrate_forward(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    x0: Tensor,
    tokens: Tensor,
    alphas: Tensor,
    weights: Tensor,
    chunk: int | None,
    update: Update,
) -> Tensor:
    """Forward route: ``len(tokens)`` JVPs per step.

    Args:
        fn: Batched tower map ``(n, T, d) -> (n, D)``.
        x: Hidden states ``(T, d)`` of the input; ``x0`` those of the reference.
        tokens: Long tensor of the token positions to attribute (others stay 0).
        alphas: Integration points; ``weights`` their quadrature weights.
        chunk: About how many (step, tangent) pairs one vectorised call evaluates
            (``None`` = all steps and tangents at once).
        update: Progress callback, called with the number of steps done.
    """
    delta = x - x0
    n_tok = tokens.numel()
    tangents = torch.zeros(n_tok, *x.shape, dtype=x.dtype, device=x.device)
    tangents[torch.arange(n_tok, device=x.device), tokens] = delta[tokens]
    u = None
    for steps in _groups(alphas.numel(), 1, chunk):
        a, w = alphas[steps], weights[steps]
        points = x0 + a[:, None, None] * delta

        def directional(tangent: Tensor, points: Tensor = points) -> Tensor:
            return jvp(fn, (points,), (tangent.expand_as(points),))[1]  # (n, D)

        per_call = None if chunk is None else max(1, chunk // a.numel())
        out = vmap(directional, chunk_size=per_call)(tangents)  # (n_tok, n, D)
        if u is None:
            u = x.new_zeros(out.shape[-1], x.shape[0])
        u[:, tokens] += torch.einsum("knd,n->dk", out, w)
        update(a.numel())
    return u


def integrate_reverse(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    x0: Tensor,
    tokens: Tensor,
    alphas: Tensor,
    weights: Tensor,
    chunk: int | None,
    update: Update,
) -> Tensor:
    """Reverse route: ``D`` VJPs per step (arguments as :func:`integrate_forward`;
    ``chunk`` counts (step, cotangent) pairs)."""
    delta = x - x0
    u = None
    for steps in _groups(alphas.numel(), 1, chunk):
        a, w = alphas[steps], weights[steps]
        out, pull = vjp(fn, x0 + a[:, None, None] * delta)  # out (n, D)
        dim = out.shape[-1]
        eye = torch.eye(dim, dtype=out.dtype, device=out.device)
        cot = eye[:, None, :] * w[None, :, None]  # (D, n, D): weights folded in
        per_call = None if chunk is None else max(1, chunk // a.numel())
        rows = vmap(pull, chunk_size=per_call)(cot)[0].sum(1)  # (D, T, d)
        if u is None:
            u = x.new_zeros(dim, x.shape[0])
        u[:, tokens] += (rows[:, tokens] * delta[tokens]).sum(-1)
        update(a.numel())
    return u


def integrate_pooled(
    row: RowPath,
    x: Tensor,
    x0: Tensor,
    pooled: int,
    allowed: Tensor,
    tokens: Tensor,
    alphas: Tensor,
    weights: Tensor,
    normalize: bool,
    chunk: int | None,
    update: Update,
) -> Tensor:
    """Fast route at the input of the last block: one row recomputed per tangent.

    Args:
        row: The last block and head (:class:`RowPath`).
        x: Hidden states ``(T, d)`` at the input of the last block; ``x0`` the reference's.
        pooled: Position of the pooled token (CLS or EOT).
        allowed: ``(T,)`` bool, keys the pooled token may attend to (causal mask row).
        tokens: Token positions to attribute (a subset of ``allowed``).
        normalize: L2-normalise the embedding (cosine similarity).
        alphas, weights, chunk, update: As in :func:`integrate_forward`.
    """
    t_len, d = x.shape
    h = row.heads
    dh = d // h
    delta = x - x0
    n_tok = tokens.numel()
    onehot = torch.eye(t_len, dtype=torch.bool, device=x.device)[tokens]  # (K, T)
    mask = torch.zeros(t_len, dtype=x.dtype, device=x.device)
    mask = mask.masked_fill(~allowed, float("-inf"))
    t_query = delta[pooled][None] * (tokens == pooled)[:, None].to(x.dtype)  # (K, d)
    t_token = delta[tokens]  # (K, d)
    all_tokens = torch.arange(t_len, device=x.device)

    def project(z: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return (z @ w.T + b).reshape(*z.shape[:-1], h, dh)

    rope = None if row.rope is None else row.rope.to(x.device, x.dtype)

    def rotate(t: Tensor, positions: Tensor | int) -> Tensor:
        """RoPE of ``t`` ``(..., P, h, dh)`` at token ``positions`` ``(P,)`` (or one int)."""
        if rope is None:
            return t
        from timm.layers import apply_rot_embed_cat

        emb = rope[positions]
        emb = emb[None] if emb.ndim == 1 else emb
        return apply_rot_embed_cat(t, emb[:, None, :], half=row.rope_half).type_as(t)

    def keys_of(z: Tensor, positions: Tensor) -> Tensor:
        return rotate(row.k_norm(project(z, row.wk, row.bk)), positions)

    def pooled_embedding(xq: Tensor, xp: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """Embeddings ``(n, K, D)`` when token k gets input ``xp[:, k]`` and the pooled
        token ``xq[:, k]``; keys/values ``(n, h, T, dh)`` of the unchanged tokens."""
        q = rotate(row.q_norm(project(row.ln1(xq), row.wq, row.bq)), pooled)  # (n, K, h, dh)
        zp = row.ln1(xp)
        kp = keys_of(zp, tokens)
        vp = project(zp, row.wv, row.bv)
        logits = torch.einsum("nkhc,nhtc->nkht", q, keys) * row.scale + mask
        own = ((q * kp).sum(-1) * row.scale)[..., None]  # (n, K, h, 1)
        logits = torch.where(onehot[None, :, None, :], own, logits)
        attn = torch.softmax(logits, dim=-1)
        v_old = values[:, :, tokens].transpose(1, 2)  # (n, K, h, dh)
        a_p = (attn * onehot[None, :, None, :].to(attn.dtype)).sum(-1)  # (n, K, h)
        o = torch.einsum("nkht,nhtc->nkhc", attn, values) + a_p[..., None] * (vp - v_old)
        r = xq + row.ls1(row.attn_norm(o.reshape(*o.shape[:2], d)) @ row.wo.T + row.bo)
        r = r + row.ls2(row.mlp(row.ln2(r)))
        emb = row.head(r)
        return emb / emb.norm(dim=-1, keepdim=True) if normalize else emb

    u = None
    for steps in _groups(alphas.numel(), n_tok, chunk):
        a, w = alphas[steps], weights[steps]
        n = a.numel()
        xa = x0 + a[:, None, None] * delta  # (n, T, d)
        z = row.ln1(xa)
        keys = keys_of(z, all_tokens).transpose(1, 2)  # (n, h, T, dh)
        values = project(z, row.wv, row.bv).transpose(1, 2)
        xq = xa[:, pooled][:, None].expand(n, n_tok, d).contiguous()
        _, out = jvp(
            lambda q_, p_, k=keys, v=values: pooled_embedding(q_, p_, k, v),
            (xq, xa[:, tokens].contiguous()),
            (t_query.expand(n, -1, -1).contiguous(), t_token.expand(n, -1, -1).contiguous()),
        )  # (n, K, D)
        if u is None:
            u = x.new_zeros(out.shape[-1], t_len)
        u[:, tokens] += torch.einsum("nkd,n->dk", out, w)
        update(n)
    return u
