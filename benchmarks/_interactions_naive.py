"""The reference the speed benchmark compares against (``interactions_speed.py``).

:func:`naive` is the algorithm of the second-order paper's code: per tower and per
embedding dimension one backward pass over the interpolation points to build the
integrated Jacobians, then the dense product one text token block at a time.
:func:`layer0_sample` estimates the time of ``IntegratedInteractions`` at the embeddings
from a sample of its tangents.
"""

from __future__ import annotations

import time

import torch

__all__ = ["layer0_sample", "naive"]


def naive(
    model, tok, img, caption: str, n_steps: int, dims: int | None = None
) -> tuple[torch.Tensor, float]:
    """One backward pass per embedding dimension per tower, then the dense product.

    With ``dims`` only the first ``dims`` embedding dimensions get their backward pass (the
    Jacobians keep their full size); returns ``A`` and the estimated full time: the measured
    time with the per-dimension loops scaled by ``D / dims`` (every pass costs the same).
    """
    import torch.nn.functional as F

    from captum_clip.attr._interaction_paths import quadrature
    from captum_clip.attr._interaction_sides import ClipImageEncoder
    from captum_clip.attr._interaction_text import ClipTextEncoder
    from captum_clip.models import ClipAdapter

    ad = ClipAdapter(model)
    te, ie = ClipTextEncoder(ad.text, tok), ClipImageEncoder(ad.vision)
    ids = te.prepare([caption])
    ids0 = te.baseline(ids, None)
    img0 = torch.zeros_like(img)
    ti, vi = te.n_blocks - 1, ie.n_blocks - 1
    alphas, weights = quadrature("gausslegendre", n_steps, torch.float32, img.device)

    loop_seconds = [0.0]

    def integrated_jacobian(fn, x, x0):
        points = (x0 + alphas[:, None, None] * (x - x0)).requires_grad_(True)
        out = fn(points)  # (n, D)
        jac = torch.zeros(out.shape[1], *x.shape)
        t0 = time.perf_counter()
        for k in range(out.shape[1] if dims is None else min(dims, out.shape[1])):
            (g,) = torch.autograd.grad(out[:, k].sum(), points, retain_graph=True)
            jac[k] = torch.einsum("ntd,n->td", g, weights)
        loop_seconds[0] += time.perf_counter() - t0
        return jac  # (D, T, d)

    start = time.perf_counter()
    with torch.no_grad():
        x, x0 = te.hidden(ids, ti)[0], te.hidden(ids0, ti)[0]
        y, y0 = ie.hidden(img, vi)[0], ie.hidden(img0, vi)[0]
    with torch.enable_grad():
        jf = integrated_jacobian(lambda z: F.normalize(te.from_hidden(z, ids, ti), dim=-1), x, x0)
        jg = integrated_jacobian(lambda z: F.normalize(ie.from_hidden(z, img, vi), dim=-1), y, y0)
    with torch.no_grad():
        n_text = int(ad.text.pool_index(ids)[0]) + 1
        dx, dy = x - x0, (y - y0).reshape(-1)
        jg_flat = jg.reshape(jg.shape[0], -1)  # (D, L d_v)
        a = torch.zeros(x.shape[0], y.shape[0])
        for s in range(n_text):  # dense (d_t x L d_v) block of token s
            dense = jf[:, s, :].T @ jg_flat
            a[s] = ((dx[s] @ dense) * dy).reshape(y.shape).sum(-1)
    total = time.perf_counter() - start
    d = jf.shape[0]
    scale = 1.0 if dims is None or dims >= d else d / dims
    return a[None], total + loop_seconds[0] * (scale - 1.0)


def layer0_sample(model, tok, img, caption: str, n_steps: int, sample: int) -> float:
    """Estimated time of ``ours_layer0``: ``sample`` tangents of one step per tower, timed
    with the forward route ``attribute`` picks at layer 0, scaled to all active tokens and
    ``n_steps`` steps (every tangent pass costs the same)."""
    import torch.nn.functional as F

    from captum_clip.attr._interaction_paths import forward_ad_mode, integrate_forward, quadrature
    from captum_clip.attr._interaction_sides import ClipImageEncoder
    from captum_clip.attr._interaction_text import ClipTextEncoder
    from captum_clip.models import ClipAdapter

    ad = ClipAdapter(model)
    te, ie = ClipTextEncoder(ad.text, tok), ClipImageEncoder(ad.vision)
    ids = te.prepare([caption])
    a, w = quadrature("gausslegendre", 1, torch.float32, img.device)
    total = 0.0
    with torch.no_grad(), forward_ad_mode():
        t0 = time.perf_counter()
        x, x0 = te.hidden(ids, 0)[0], te.hidden(te.baseline(ids, None), 0)[0]
        y, y0 = ie.hidden(img, 0)[0], ie.hidden(torch.zeros_like(img), 0)[0]
        total += time.perf_counter() - t0
        sides = [
            (lambda z: F.normalize(te.from_hidden(z, ids, 0), dim=-1), x, x0, te.active(ids, 0)[0]),
            (lambda z: F.normalize(ie.from_hidden(z, img, 0), dim=-1), y, y0, ie.active(img, 0)[0]),
        ]
        for fn, h, h0, active in sides:
            tokens = active.nonzero()[:, 0]
            t0 = time.perf_counter()
            integrate_forward(fn, h, h0, tokens[:sample], a, w, 16, lambda n: None)
            per_tangent_step = (time.perf_counter() - t0) / min(sample, tokens.numel())
            total += per_tangent_step * tokens.numel() * n_steps
    return total
