"""IntegratedInteractions: closed forms, a naive dense reference, identities, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients
from captum.attr._utils.approximation_methods import approximation_parameters
from conftest import (
    ToyHFTokenizer,
    make_tiny_hf_clip,
    make_tiny_resnet,
    make_tiny_vit,
    tiny_tokenizer,
)

from captum_clip.attr import IntegratedInteractions, InteractionResult
from captum_clip.attr.interactions import TokenEncoder
from captum_clip.models import ClipAdapter

CAPTIONS = ["a red circle", "two dogs on the grass"]


@pytest.fixture(autouse=True)
def one_thread():
    """Small vectorised passes run faster single-threaded on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- toy bilinear model
class Linear(TokenEncoder):
    """f(x) = W vec(x): inputs are the hidden states themselves (layer 0)."""

    def __init__(self, w: torch.Tensor) -> None:
        self.w = w  # (D, T, d)

    def hidden(self, inputs, index):
        return inputs

    def from_hidden(self, x, inputs, index):
        return torch.einsum("ktd,ntd->nk", self.w, x)


@pytest.mark.parametrize(
    "method, n_steps",
    [("gausslegendre", 1), ("gausslegendre", 5), ("riemann_left", 2), ("riemann_middle", 7)],
)
def test_bilinear_toy_closed_form(method, n_steps):
    g = torch.Generator().manual_seed(0)
    w, v = torch.randn(6, 4, 3, generator=g), torch.randn(6, 5, 2, generator=g)
    a, b = torch.randn(2, 4, 3, generator=g), torch.randn(2, 5, 2, generator=g)
    a0, b0 = torch.randn(1, 4, 3, generator=g), torch.randn(5, 2, generator=g)
    ii = IntegratedInteractions.from_encoders(Linear(w), Linear(v))
    for route in ("forward", "reverse"):
        res = ii.explain(
            b, a, n_steps=n_steps, method=method, text_layer=0, image_layer=0,
            text_baseline=a0, image_baseline=b0, similarity="dot", route=route,
        )  # fmt: skip
        u = torch.einsum("kti,bti->bkt", w, a - a0)
        vv = torch.einsum("kpj,bpj->bkp", v, b - b0)
        expected = torch.einsum("bks,bkp->bsp", u, vv)
        torch.testing.assert_close(res.attributions, expected, rtol=1e-5, atol=1e-5)
        assert res.delta.abs().max() < 1e-4
        assert res.patch_grid == (1, 5) and res.image_map(None, pair=1).shape == (1, 5)
        # score = f(a).g(b) and the four-term difference is (f(a)-f(a0)).(g(b)-g(b0))
        fa = torch.einsum("kti,bti->bk", w, a)
        gb = torch.einsum("kpj,bpj->bk", v, b)
        torch.testing.assert_close(res.score, (fa * gb).sum(-1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            res.score_difference, (u.sum(-1) * vv.sum(-1)).sum(-1), rtol=1e-5, atol=1e-5
        )


def test_bilinear_toy_trapezoid_uses_captums_weights():
    """Captum's trapezoid weights sum to (n-1)/n, so A is scaled by ((n-1)/n)^2 exactly."""
    g = torch.Generator().manual_seed(1)
    w, v = torch.randn(3, 2, 2, generator=g), torch.randn(3, 3, 2, generator=g)
    a, b = torch.randn(1, 2, 2, generator=g), torch.randn(1, 3, 2, generator=g)
    ii = IntegratedInteractions.from_encoders(Linear(w), Linear(v))
    kw = dict(text_layer=0, image_layer=0, similarity="dot")
    exact = ii.attribute(b, a, n_steps=4, **kw)
    trap = ii.attribute(b, a, n_steps=4, method="riemann_trapezoid", **kw)
    torch.testing.assert_close(trap, exact * (3 / 4) ** 2, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- naive dense reference
def naive_dense(model, ids, ids0, img, img0, ti, vi, n_steps, method="gausslegendre"):
    """Integrated Jacobians by one backward pass per embedding dimension, dense product."""
    ad = ClipAdapter(model)
    steps, alphas = approximation_parameters(method)
    alphas, weights = alphas(n_steps), steps(n_steps)

    def integrated_jacobian(fn, x, x0):
        jac = torch.zeros(fn(x).shape[-1], *x.shape[1:], dtype=x.dtype)
        for a, w in zip(alphas, weights):
            point = (x0 + a * (x - x0)).detach().requires_grad_(True)
            out = fn(point)[0]
            for k in range(out.shape[0]):
                (grad,) = torch.autograd.grad(out[k], point, retain_graph=True)
                jac[k] += w * grad[0]
        return jac  # (D, T, d)

    with torch.no_grad():
        x, x0 = ad.text.hidden_state(ids, ti), ad.text.hidden_state(ids0, ti)
        y, y0 = ad.vision.hidden_state(img, vi), ad.vision.hidden_state(img0, vi)
    jf = integrated_jacobian(lambda z: F.normalize(ad.text.from_hidden(z, ids, ti), dim=-1), x, x0)
    jg = integrated_jacobian(lambda z: F.normalize(ad.vision.from_hidden(z, vi), dim=-1), y, y0)
    dense = torch.einsum("ksi,kpj->sipj", jf, jg)  # (S, d_t, 1+P, d_v)
    return torch.einsum("si,sipj,pj->sp", (x - x0)[0], dense, (y - y0)[0])


def caption_baseline(ids):
    ref = ids.clone()
    eot = int(ids.argmax())
    ref[0, 1:eot] = 0
    return ref


@pytest.fixture(scope="module")
def tiny64():
    return make_tiny_vit().double()


@pytest.mark.parametrize("layers", [(-1, -1), (0, 1)])
def test_equals_naive_dense_formula(tiny64, layers):
    tok = tiny_tokenizer()
    torch.manual_seed(1)
    img = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    ids = tok(["a red circle"])
    ti, vi = layers
    t_index = 2 + ti if ti < 0 else ti
    v_index = 2 + vi if vi < 0 else vi
    ref = naive_dense(
        tiny64, ids, caption_baseline(ids), img, torch.zeros_like(img), t_index, v_index, 4
    )
    ii = IntegratedInteractions(tiny64, tok)
    routes = ["forward", "reverse"] + (["fast", "auto"] if layers == (-1, -1) else [])
    scale = ref.abs().max()
    for route in routes:
        a = ii.attribute(
            img, ["a red circle"], n_steps=4, text_layer=ti, image_layer=vi, route=route
        )
        assert a.shape == (1, 16, 17)
        assert ((a[0] - ref).abs().max() / scale) < 1e-5, route
    # tokens after the end-of-text token: exactly zero in the dense reference and in ours
    eot = int(ids.argmax())
    assert torch.count_nonzero(ref[eot + 1 :]) == 0
    assert torch.count_nonzero(a[0, eot + 1 :]) == 0
    assert torch.count_nonzero(ref[: eot + 1]) > 0


def test_convergence_delta_shrinks():
    model = make_tiny_vit()
    tok = tiny_tokenizer()
    torch.manual_seed(2)
    img = torch.randn(1, 3, 32, 32)
    ii = IntegratedInteractions(model, tok)
    deltas = [
        ii.attribute(
            img, ["a red circle"], n_steps=n, method="riemann_right", return_convergence_delta=True
        )[1]
        .abs()
        .item()
        for n in (2, 8, 32)
    ]
    assert deltas[0] > deltas[1] > deltas[2]
    res = ii.explain(img, ["a red circle"], n_steps=50)
    assert res.delta.abs().item() < 1e-3 * res.score.abs().item()
    # the delta is the four-term difference computed independently from the encoders
    ad = ClipAdapter(model)
    ids = tok(["a red circle"])
    with torch.no_grad():
        f = F.normalize(ad.encode_text(torch.cat([ids, caption_baseline(ids)])), dim=-1)
        g = F.normalize(ad.encode_image(torch.cat([img, torch.zeros_like(img)])), dim=-1)
    s = f @ g.T
    four = s[0, 0] - s[1, 0] - s[0, 1] + s[1, 1]
    torch.testing.assert_close(res.score[0], s[0, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.attributions.sum() - res.delta[0], four, rtol=1e-5, atol=1e-6)


def test_marginals_are_integrated_gradients(tiny64):
    """Row sums = IG of x -> f(x).(g(b) - g(b0)); column sums = IG of y -> (f(a)-f(a0)).g(y)."""
    tok = tiny_tokenizer()
    torch.manual_seed(3)
    img = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    ids = tok(["two dogs on the grass"])
    ii = IntegratedInteractions(tiny64, tok)
    res = ii.explain(img, ["two dogs on the grass"], n_steps=20)
    ad = ClipAdapter(tiny64)
    with torch.no_grad():
        x, x0 = ad.text.hidden_state(ids, 1), ad.text.hidden_state(caption_baseline(ids), 1)
        y, y0 = ad.vision.hidden_state(img, 1), ad.vision.hidden_state(torch.zeros_like(img), 1)
        f, f0 = (F.normalize(ad.text.from_hidden(z, ids, 1), dim=-1) for z in (x, x0))
        g, g0 = (F.normalize(ad.vision.from_hidden(z, 1), dim=-1) for z in (y, y0))
    ig_text = IntegratedGradients(
        lambda z: (F.normalize(ad.text.from_hidden(z, ids, 1), dim=-1) * (g - g0)).sum(-1)
    )
    ig_image = IntegratedGradients(
        lambda z: (F.normalize(ad.vision.from_hidden(z, 1), dim=-1) * (f - f0)).sum(-1)
    )
    rows = ig_text.attribute(x, x0, n_steps=20).sum(-1)
    cols = ig_image.attribute(y, y0, n_steps=20).sum(-1)
    torch.testing.assert_close(res.text_attr, rows, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(res.image_attr, cols, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(
        res.attributions.sum(), res.score_difference[0], rtol=1e-6, atol=1e-8
    )


def test_batch_split_dot_similarity_and_blur():
    model = make_tiny_vit()
    tok = tiny_tokenizer()
    torch.manual_seed(4)
    img = torch.randn(2, 3, 32, 32)
    ii = IntegratedInteractions(model, tok)
    kw = dict(n_steps=8, similarity="dot", image_baseline="blur")
    both = ii.explain(img, CAPTIONS, **kw)
    for i in range(2):
        one = ii.explain(img[i : i + 1], CAPTIONS[i : i + 1], show_progress=True, **kw)
        torch.testing.assert_close(one.attributions[0], both.attributions[i], rtol=1e-5, atol=1e-7)
    from torchvision.transforms.functional import gaussian_blur

    blurred = gaussian_blur(img, [13, 13], [2.0, 2.0])  # sigma = 32 / 16, kernel 2*int(3 sigma)+1
    ad = ClipAdapter(model)
    ids = tok(CAPTIONS)
    ids0 = torch.cat([caption_baseline(ids[i : i + 1]) for i in range(2)])
    with torch.no_grad():
        f, f0 = ad.encode_text(ids), ad.encode_text(ids0)
        g, g0 = ad.encode_image(img), ad.encode_image(blurred)
    four = ((f - f0) * (g - g0)).sum(-1)
    torch.testing.assert_close(both.score_difference, four, rtol=1e-4, atol=1e-5)
    assert both.delta.abs().max() < 1e-3 * four.abs().max()
    delta = ii.compute_convergence_delta(both.attributions, img, CAPTIONS, **kw)
    torch.testing.assert_close(delta, both.delta, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="shape"):
        ii.compute_convergence_delta(both.attributions[:1], img, CAPTIONS, **kw)


def test_hf_tiny_model_fast_equals_general():
    model = make_tiny_hf_clip()
    tok = ToyHFTokenizer()
    torch.manual_seed(5)
    img = torch.randn(2, 3, 32, 32)
    ii = IntegratedInteractions(model, tok)
    out = {
        r: ii.attribute(img, CAPTIONS, n_steps=10, route=r, return_convergence_delta=True)
        for r in ("fast", "forward", "reverse")
    }
    scale = out["forward"][0].abs().max()
    for r in ("fast", "reverse"):
        assert (out[r][0] - out["forward"][0]).abs().max() < 1e-5 * scale
    assert out["fast"][1].abs().max() < 1e-4
    eot = tok(CAPTIONS).argmax(-1)
    for i in range(2):
        assert torch.count_nonzero(out["fast"][0][i, eot[i] + 1 :]) == 0
    a0 = ii.attribute(img, CAPTIONS, n_steps=10, text_layer=0, image_layer=0, route="reverse")
    a1 = ii.attribute(img, CAPTIONS, n_steps=10, text_layer=0, image_layer=0, route="forward")
    assert (a0 - a1).abs().max() < 1e-5 * a1.abs().max()


def test_result_views():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(1, 4, 1 + 6, generator=g)
    res = InteractionResult(
        a, [["<sot>", "red", "circle", "<eot>"]], (2, 3), torch.ones(1), torch.zeros(1),
        torch.zeros(1, 3), image_size=(4, 6),
    )  # fmt: skip
    torch.testing.assert_close(res.image_map("red"), a[0, 1, 1:].reshape(2, 3))
    torch.testing.assert_close(res.image_map([1, 2]), a[0, 1:3, 1:].sum(0).reshape(2, 3))
    assert res.image_map("circle", size=True).shape == (4, 6)
    region = torch.tensor([[True, False, False], [True, True, False]])
    torch.testing.assert_close(res.token_scores(region), a[0][:, 1:][:, region.reshape(-1)].sum(1))
    pixels = region.repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(res.token_scores(pixels), res.token_scores(region))
    torch.testing.assert_close(res.text_attr, a.sum(-1))
    with pytest.raises(ValueError, match="no token"):
        res.image_map("dog")
    with pytest.raises(ValueError, match="patches"):
        res.token_scores(torch.ones(5, 5))
    padded = InteractionResult(
        torch.cat([a, torch.zeros(1, 3, 7)], 1), [res.tokens[0] + ["", "", ""]], (2, 3),
        torch.ones(1), torch.zeros(1), torch.zeros(1, 3),
    )  # fmt: skip
    assert padded.token_scores().shape == (4,)  # up to end-of-text, no zero padding
    torch.testing.assert_close(padded.token_scores(region), res.token_scores(region))
    torch.testing.assert_close(
        padded.token_scores(include_cls=True), a[0].sum(-1)
    )  # CLS column + every patch = the row sums


# ---------------------------------------------------------------- bad input and cleanup
@pytest.fixture(scope="module")
def tiny_ii():
    return IntegratedInteractions(make_tiny_vit(), tiny_tokenizer())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(texts=["word " * 20]), ValueError, "context length"),
        (dict(texts=[""]), ValueError, "empty"),
        (dict(texts=CAPTIONS), ValueError, "same batch size"),
        (dict(text_layer=3), ValueError, "text_layer"),
        (dict(image_layer=-3), ValueError, "image_layer"),
        (dict(text_layer=1.0), TypeError, "text_layer"),
        (dict(similarity="l2"), ValueError, "similarity"),
        (dict(route="fast", text_layer=0), ValueError, "route='fast'"),
        (dict(route="sideways"), ValueError, "route"),
        (dict(n_steps=0), ValueError, "n_steps"),
        (dict(n_steps=1, method="riemann_left"), ValueError, "n_steps"),
        (dict(method="simpson"), ValueError, "method"),
        (dict(images=torch.full((1, 3, 32, 32), float("nan"))), ValueError, "NaN"),
        (dict(images=torch.zeros(1, 3, 64, 64)), ValueError, "32x32"),
        (dict(texts=torch.zeros(1, 20, dtype=torch.long)), ValueError, "context length"),
        (dict(text_baseline=torch.zeros(1, 5, dtype=torch.long)), ValueError, "baseline"),
        (dict(image_baseline="noise"), ValueError, "blur"),
        (dict(internal_batch_size=0), ValueError, "internal_batch_size"),
    ],
)
def test_bad_input(tiny_ii, kwargs, error, match):
    args = dict(images=torch.zeros(1, 3, 32, 32), texts=["a red circle"], n_steps=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        tiny_ii.attribute(**args)


def test_resnet_reads_pixel_patches_on_its_grid():
    ii = IntegratedInteractions(make_tiny_resnet(), tiny_tokenizer())  # 64 px, stride 32
    assert ii.patch_grid == (2, 2)


def test_model_restored_after_exception():
    model = make_tiny_vit().train()
    model.visual.conv1.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    ii = IntegratedInteractions(model, tiny_tokenizer())

    def boom(images):
        assert not model.training  # evaluated in eval mode
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ii.attribute(torch.zeros(1, 3, 32, 32), ["a red circle"], image_baseline=boom)
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.backends.mha.get_fastpath_enabled()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    a = ii.attribute(torch.zeros(1, 3, 32, 32), ["a red circle"], n_steps=2)
    assert torch.isfinite(a).all() and all(m.training for m in model.modules())
    assert ii.has_convergence_delta()


def test_non_causal_open_clip_text_tower_fast_equals_forward():
    """A non-causal open_clip text tower: the pooled token reads every key, and the fast
    route (one row recomputed per tangent) must agree with the general forward route."""
    import open_clip
    from conftest import TINY_VIT

    cfg = dict(TINY_VIT, text_cfg=dict(TINY_VIT["text_cfg"], no_causal_mask=True))
    torch.manual_seed(3)
    model = open_clip.model.CLIP(**cfg).eval()
    assert model.attn_mask is None  # the tower really is non-causal
    img = torch.randn(2, 3, 32, 32)
    ii = IntegratedInteractions(model, tiny_tokenizer())
    fast = ii.attribute(img, CAPTIONS, n_steps=6, route="fast")
    forward = ii.attribute(img, CAPTIONS, n_steps=6, route="forward")
    assert (fast - forward).abs().max() < 1e-6
    # with no causal mask, tokens after <eot> reach the embedding too
    eot = tiny_tokenizer()(CAPTIONS).argmax(-1)
    assert forward[0, eot[0] + 1 :].abs().max() > 0


# ---------------------------------------------------------------- batching below the last block
@pytest.mark.parametrize("route", ["forward", "reverse"])
def test_internal_batch_size_invariance_at_embeddings(tiny64, route):
    """Tangents and quadrature points batched any way give the same A and delta."""
    torch.manual_seed(4)
    img = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    ii = IntegratedInteractions(tiny64, tiny_tokenizer())
    kw = dict(n_steps=3, text_layer=0, image_layer=0, route=route)
    ref = ii.explain(img, CAPTIONS[1:], **kw)  # default: memory-budget sized passes
    for size in (1, 5, 10_000):
        res = ii.explain(img, CAPTIONS[1:], internal_batch_size=size, **kw)
        torch.testing.assert_close(res.attributions, ref.attributions, rtol=1e-9, atol=1e-13)
        torch.testing.assert_close(res.delta, ref.delta, rtol=0, atol=1e-12)


def test_completeness_at_embeddings(tiny64):
    torch.manual_seed(4)
    img = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    ii = IntegratedInteractions(tiny64, tiny_tokenizer())
    res = ii.explain(img, CAPTIONS[1:], n_steps=20, text_layer=0, image_layer=0)
    assert res.delta.abs().max() < 1e-6
    assert res.score_difference.abs().max() > 1e-3  # not trivially zero


def test_auto_chunk_from_memory_budget():
    from captum_clip.attr import _interaction_paths as paths

    x = torch.zeros(197, 768)  # ViT-B-16 image tokens, float32
    assert paths.pair_bytes(x) == int(197 * 768 * (24 + 197 / 32)) * 4
    assert paths.auto_chunk(x) == paths.CPU_BUDGET // paths.pair_bytes(x)
    assert paths.auto_chunk(torch.zeros(4, 8)) == paths.MAX_PAIRS
    assert paths.auto_chunk(torch.zeros(4096, 4096)) == paths.MIN_PAIRS
