"""timm attention towers (SigLIP MAP, registers, avg pooling, EVA-02 RoPE) and CoCa's pooler.

Every family is checked against timm's / open_clip's own modules run in the plain way:
hiding patches by attention mask equals running on the kept tokens alone (RoPE at the
kept patches' positions, the MAP / CoCa pooler over the kept tokens); the handwritten
block and pooler forwards equal the modules' outputs; ``from_hidden`` inverts
``hidden_state``; the interactions' completeness and fast route; then every method runs.
"""

from __future__ import annotations

import pytest
import torch
from _tiny_timm import BUILDERS

from captum_clip import ClipClassifier
from captum_clip._hooks import HookManager
from captum_clip.attr import (
    CCI,
    GradECLIP,
    GradientRollout,
    IntegratedInteractions,
    MaskCLIP,
    vit_gradcam,
)
from captum_clip.attr import _interaction_paths as paths
from captum_clip.attr._regions import ESTIMATORS
from captum_clip.attr.grad_eclip import grad_eclip_contributions
from captum_clip.diagnosis import diagnose
from captum_clip.metrics import deletion_auc
from captum_clip.models.adapter import ClipAdapter
from captum_clip.models.base import DropUnavailable
from captum_clip.models.blocks import block_forward, trace_blocks
from captum_clip.models.open_clip_vit import attentional_pool_forward
from captum_clip.models.timm_vit import TimmViT, latent_pool_forward

CLASSES = ["cat", "dog", "car"]
FAMILIES = list(BUILDERS)
TIMM = [f for f in FAMILIES if f != "coca_vision"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    model, tok = BUILDERS[request.param]()
    return request.param, model, tok


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(n, 3, 32, 32)


def kept_embedding(model, tower, image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The embedding of one image computed on its prefix + kept patch tokens alone, with
    the modules' own forwards (RoPE rows of the kept patches, pooling over kept tokens)."""
    x = tower.embed(image[None])
    n = tower.n_prefix
    idx = torch.cat([torch.arange(n), n + keep.nonzero()[:, 0]])
    x = x[:, idx]
    visual = model.visual
    if isinstance(tower, TimmViT):
        trunk = visual.trunk
        for i, block in enumerate(trunk.blocks):
            rope = tower.rope(i)
            x = block(x) if rope is None else block(x, rope=rope[keep])
        return visual.head(trunk.forward_head(trunk.norm(x)))[0]
    for block in visual.transformer.resblocks:
        x = block(x)
    pooled, _ = visual._pool(x)
    return (pooled @ visual.proj)[0]


def test_hide_patches_equals_dropping_tokens(family):
    name, model, _ = family
    tower = ClipAdapter(model).vision
    x = images(3, seed=1)
    torch.manual_seed(2)
    hidden = torch.rand(3, tower.n_patches) < torch.tensor([[0.2], [0.5], [0.8]])
    hidden[0, 0] = True  # every row hides something
    with torch.no_grad():
        with tower.hide_patches(hidden):
            masked = model.encode_image(x)
        ref = torch.stack([kept_embedding(model, tower, x[i], ~hidden[i]) for i in range(3)])
        unmasked = model.encode_image(x)
    assert (masked - ref).abs().max() <= 1e-5, name
    assert (masked - unmasked).abs().max() > 1e-2 * unmasked.abs().max()  # hiding matters
    # restored on exit, also after an exception inside the context
    with pytest.raises(RuntimeError, match="boom"), tower.hide_patches(hidden):
        raise RuntimeError("boom")
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), unmasked, rtol=0, atol=0)


def test_hiding_every_patch_without_prefix_is_the_empty_pooling():
    model, _ = BUILDERS["siglip"]()
    tower = ClipAdapter(model).vision
    assert tower.n_prefix == 0 and tower.pool_type == "attn"
    hidden = torch.ones(2, tower.n_patches, dtype=torch.bool)
    hidden[1, :3] = False
    pool, trunk = model.visual.trunk.attn_pool, model.visual.trunk
    with torch.no_grad():
        with tower.hide_patches(hidden):
            out = model.encode_image(images(2))
        empty = pool.proj.bias[None]  # attention output 0 (empty sum) through proj + MLP
        empty = empty + pool.mlp(pool.norm(empty))
        empty = model.visual.head(trunk.head(trunk.fc_norm(empty)))[0]
        kept = kept_embedding(model, tower, images(2)[1], ~hidden[1])
    assert torch.isfinite(out).all()
    assert (out[0] - empty).abs().max() <= 1e-5
    assert (out[1] - kept).abs().max() <= 1e-5


def test_recomputed_blocks_and_poolers_equal_the_modules(family):
    name, model, _ = family
    tower = ClipAdapter(model).vision
    x = tower.embed(images(2))
    hidden = torch.zeros(2, tower.n_patches, dtype=torch.bool)
    hidden[0, 3] = hidden[1, 5:9] = True
    with torch.no_grad():
        for i in range(tower.n_blocks):
            view = tower.block_view(i)
            rope = tower.rope(i) if isinstance(tower, TimmViT) else None
            ref = tower.run_blocks(x, i, i + 1)
            trace = block_forward(view, x, rope=rope)
            assert (trace.output - ref).abs().max() <= 1e-5, (name, i)
            torch.testing.assert_close(trace.probs.sum(-1), torch.ones_like(trace.probs[..., 0]))
            x = ref
        pooled_in = x
        if tower.pool_type == "attn":
            if isinstance(tower, TimmViT):
                pool = model.visual.trunk.attn_pool
                keys = tower.trunk.norm(pooled_in)[:, tower.n_prefix - tower.pool_prefix :]
                ref, trace = pool(keys), latent_pool_forward(pool, keys)
            else:
                pool = model.visual.attn_pool
                ref, trace = pool(pooled_in), attentional_pool_forward(pool, pooled_in)
            assert (trace.output - ref).abs().max() <= 1e-5
        # traced forward (blocks + pooler swapped for the recomputation) changes nothing,
        # also under hide_patches, and is undone
        plain = model.encode_image(images(2))
        with tower.hide_patches(hidden):
            plain_hidden = model.encode_image(images(2))
        with HookManager(model) as hooks:
            store = trace_blocks(tower, list(range(tower.n_blocks)), hooks)
            pool_store = tower.trace_pool(hooks) if tower.pool_type == "attn" else {}
            traced = model.encode_image(images(2))
            with tower.hide_patches(hidden):
                traced_hidden = model.encode_image(images(2))
        assert len(store) == tower.n_blocks and (tower.pool_type != "attn" or "pool" in pool_store)
        col = store[0].probs[0, :, :, tower.n_prefix + 3]  # hidden key: read by itself only
        assert col[:, torch.arange(col.shape[1]) != tower.n_prefix + 3].max() == 0
    assert (traced - plain).abs().max() <= 1e-5
    assert (traced_hidden - plain_hidden).abs().max() <= 1e-5
    for block in tower.blocks:
        assert "forward" not in vars(block) and not block._forward_pre_hooks


def test_from_hidden_inverts_hidden_state(family):
    name, model, _ = family
    tower = ClipAdapter(model).vision
    x = images(2)
    with torch.no_grad():
        ref = model.encode_image(x)
        for i in range(tower.n_blocks + 1):
            out = tower.from_hidden(tower.hidden_state(x, i), i)
            assert (out - ref).abs().max() <= 1e-5, (name, i)


def test_token_head_is_the_pooler_on_a_single_token(family):
    name, model, _ = family
    tower = ClipAdapter(model).vision
    tokens = tower.hidden_state(images(1), tower.n_blocks)[0, :3]  # (3, d)
    with torch.no_grad():
        per_token = tower.token_head(tokens)
        for t in range(3):  # the head of a "tower" whose last state is the one token
            one = tokens[t][None, None]
            if isinstance(tower, TimmViT):
                trunk = tower.trunk
                x = trunk.norm(one)
                pooled = trunk.attn_pool(x) if tower.pool_type == "attn" else x[:, 0]
                ref = model.visual.head(trunk.head(trunk.fc_norm(pooled)))[0]
            else:
                pooled, _ = model.visual._pool(one)
                ref = (pooled @ model.visual.proj)[0]
            assert (per_token[t] - ref).abs().max() <= 1e-5, name


@pytest.mark.parametrize("name", ["timm_token_reg", "eva02", "eva01", "siglip", "coca_vision"])
def test_interactions_completeness(name):
    model, tok = BUILDERS[name]()
    ii = IntegratedInteractions(model, tok)
    img = images(1, seed=3)
    routes = ("fast", "forward") if name == "timm_token_reg" else ("forward",)
    out = {
        r: ii.attribute(img, ["a red circle"], n_steps=24, route=r, return_convergence_delta=True)
        for r in routes
    }
    attr, delta = out["forward"]
    assert torch.isfinite(attr).all() and delta.abs().max() <= 1e-4, name
    if "fast" in out:  # timm Block without q/k norm: the fast route applies and agrees
        assert (out["fast"][0] - attr).abs().max() <= 1e-5 * attr.abs().max()
        assert out["fast"][1].abs().max() <= 1e-4
    attr0, delta0 = ii.attribute(
        img, ["a red circle"], n_steps=32, image_layer=0, text_layer=-1,
        return_convergence_delta=True,
    )  # fmt: skip
    assert torch.isfinite(attr0).all() and delta0.abs().max() <= 1e-4, name


@pytest.mark.parametrize("name", ["eva02", "eva02_fused", "timm_avg_reg"])
def test_fast_route_maths_with_rope_and_qk_norm(name):
    """integrate_pooled on RowPath with RoPE / inner norms / q-k norms equals the forward
    route through the real blocks (the pooled row is token 0 in both)."""
    model, _ = BUILDERS[name]()
    tower = ClipAdapter(model).vision
    last = tower.n_blocks - 1
    x = tower.hidden_state(images(1, seed=4), last)[0].detach()
    x0 = tower.hidden_state(torch.zeros(1, 3, 32, 32), last)[0].detach()
    row = tower.row_path(head=tower.token_head)
    assert (row.rope is not None) == name.startswith("eva")
    a, w = paths.quadrature("gausslegendre", 6, x.dtype, x.device)
    tokens = torch.arange(x.shape[0])
    allowed = torch.ones(x.shape[0], dtype=torch.bool)

    def fn(h):  # the embedding read from token 0 (the class token / first register)
        emb = tower.token_head(tower.run_blocks(h, last, last + 1)[:, 0])
        return emb / emb.norm(dim=-1, keepdim=True)

    with paths.forward_ad_mode():
        fast = paths.integrate_pooled(row, x, x0, 0, allowed, tokens, a, w, True, None, id)
        ref = paths.integrate_forward(fn, x, x0, tokens, a, w, None, id)
    assert (fast - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_grad_eclip_on_the_map_pooler_decomposes_its_output():
    """Grad-ECLIP reads the pooler on a MAP tower; with spatial='attention' the per-key
    contributions sum to w . o_pooled (the pooler's own attention output)."""
    model, _ = BUILDERS["siglip"]()
    tower = ClipAdapter(model).vision
    keys = tower.trunk.norm(tower.hidden_state(images(2), tower.n_blocks)).detach()
    trace = latent_pool_forward(tower.trunk.attn_pool, keys)
    score = tower.module.head(trace.output).sum()
    (grad,) = torch.autograd.grad(score, trace.context)
    contrib = grad_eclip_contributions(trace, grad, 0, "attention")
    total = (grad[:, 0] * trace.context[:, 0]).sum(-1)
    torch.testing.assert_close(contrib.sum(-1), total, atol=1e-5, rtol=1e-5)


def test_every_method_runs(family):
    name, model, tok = family
    clf = ClipClassifier(model, tok, CLASSES)
    x = images(2, seed=5)
    maps = {
        "cci": CCI(clf, n_clusters=3).attribute(x, target=0),
        "gradcam": vit_gradcam(clf, x, target=1),
        "gradeclip": GradECLIP(clf).attribute(x, target=1),
        "rollout": GradientRollout(clf).attribute(x, target=1),
        "maskclip": MaskCLIP(clf).attribute(x, target=1),
    }
    for method, m in maps.items():
        assert m.shape == x.shape and torch.isfinite(m).all(), (name, method)
        assert m.abs().sum() > 0, (name, method)
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    d = diagnose(clf, x, masks, torch.tensor([0, 1]), method="region_ablation")
    assert torch.isfinite(torch.tensor(d.table[["fg_effect", "bg_effect"]].values)).all()
    auc = deletion_auc(clf, x, maps["cci"], target=torch.tensor([0, 0]), patch_size=8)
    assert auc.shape == (2,) and torch.isfinite(auc).all()


@pytest.mark.parametrize("name", ["siglip", "eva02", "coca_vision"])
def test_model_restored_after_exception(name):
    model, tok = BUILDERS[name]()
    clf = ClipClassifier(model, tok, CLASSES)
    tower = clf.vision
    x = images(2)
    before = clf(x).detach()

    def failing(images):
        clf(images)
        raise RuntimeError("boom")

    for method in (GradECLIP, GradientRollout):
        with pytest.raises(RuntimeError, match="boom"):
            method(failing, vision_model=model).attribute(x, target=0)
    for module in model.modules():
        assert "forward" not in vars(module) and not module._forward_pre_hooks
        assert not module._forward_hooks and "_captum_key_hidden" not in vars(module)
    assert torch.equal(clf(x).detach(), before) and tower.n_blocks == 2


def _no_dropping(monkeypatch, tower) -> list:
    """Make dropping patches fail at the first block call, as a tower whose blocks are
    called in a way dropping cannot follow (found only when the forward runs); the
    returned list grows at every refusal."""
    refused = []

    def refuse(hooks, keep):
        def hook(module, args, kwargs):
            refused.append(keep.shape)
            raise DropUnavailable("dropping hidden patches is not available here")

        hooks.forward_pre(tower.blocks[0], hook, with_kwargs=True)

    monkeypatch.setattr(tower, "_keep_extra", refuse)
    return refused


def test_eva01_cci_values_equal_a_hand_run_on_the_kept_tokens(monkeypatch):
    """EVA-01 (no RoPE): the default CCI (sufficiency: v({k}) - v(nothing)) runs, dropping
    the hidden patches; where dropping is unavailable it masks them; both equal the
    logits of the trunk run by hand on the class token and the kept patch tokens."""
    model, tok = BUILDERS["eva01"]()
    clf = ClipClassifier(model, tok, CLASSES)
    tower = clf.vision
    assert tower.trunk.rope is None and tower.can_drop
    x, target = images(2, seed=6), torch.tensor([1, 2])
    cci = CCI(clf, n_clusters=3)
    assert cci.estimator == "sufficiency"
    _, res = cci.attribute(x, target=target, return_clusters=True)

    def logit(i, keep):
        with torch.no_grad():
            emb = kept_embedding(model, tower, x[i], keep)
        cos = torch.nn.functional.normalize(emb.float(), dim=-1) @ clf.text_embeddings.T
        return float(clf.scale * cos[target[i]])

    for i in range(2):
        labels = res.labels[i].flatten()
        empty = logit(i, torch.zeros_like(labels, dtype=torch.bool))
        for k in range(int(labels.max()) + 1):
            hand = logit(i, labels == k) - empty
            assert abs(float(res.values[i, k]) - hand) <= 1e-5, (i, k)
    assert res.values.nan_to_num().abs().max() > 1e-2  # the regions matter
    refused = _no_dropping(monkeypatch, tower)
    _, masked = cci.attribute(x, target=target, return_clusters=True)
    assert len(refused) == 1  # one refusal, then every row masked
    torch.testing.assert_close(masked.values, res.values, rtol=0, atol=1e-4)
    assert torch.equal(masked.labels, res.labels)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_masks_where_dropping_is_unavailable(estimator, monkeypatch):
    model, tok = BUILDERS["eva02"]()
    clf = ClipClassifier(model, tok, CLASSES)
    x = images(2, seed=7)
    cci = CCI(clf, n_clusters=3, estimator=estimator, random_state=0)
    dropped = cci.attribute(x, target=0, return_clusters=True)[1].values
    refused = _no_dropping(monkeypatch, clf.vision)
    masked = cci.attribute(x, target=0, return_clusters=True)[1].values
    assert len(refused) == (0 if estimator == "occlusion" else 1)  # occlusion always masks
    torch.testing.assert_close(masked, dropped, rtol=0, atol=1e-4, equal_nan=True)
    for module in model.modules():  # the failed drop left no hook behind
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_dropping_asked_for_explicitly_says_why_it_is_unavailable(monkeypatch):
    from captum_clip.attr._region_scores import variant_scores

    model, _ = BUILDERS["eva02"]()
    tower = ClipAdapter(model).vision
    _no_dropping(monkeypatch, tower)
    hidden = torch.zeros(1, 1, tower.n_patches, dtype=torch.bool)
    hidden[..., 0] = True
    with pytest.raises(DropUnavailable, match="not available"), torch.no_grad():
        variant_scores(lambda im, src: model.encode_image(im).sum(-1), images(1), hidden,
                       vision=tower, drop=True)  # fmt: skip
