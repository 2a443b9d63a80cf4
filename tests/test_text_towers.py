"""Text towers of issue 20: CoCa's appended class token, Hugging Face text towers inside
open_clip, and ``transformers`` SigLIP / SigLIP 2 (both towers, logit bias)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _tiny_text import (
    WordIds,
    coca_tokenizer,
    make_tiny_coca,
    make_tiny_hf_text_clip,
    make_tiny_mt5_text_clip,
    make_tiny_siglip,
)

from captum_clip.attr._interaction_text import ClipTextEncoder
from captum_clip.attr.cci import CCI
from captum_clip.attr.interactions import IntegratedInteractions
from captum_clip.models.adapter import ClipAdapter
from captum_clip.models.heads import ClipClassifier

pytest.importorskip("transformers")

CAPTIONS = ["a photo of the cat", "red square on the big circle"]
CLASSES = ["cat", "dog", "red square"]


def _siglip_patches(images: torch.Tensor, p: int = 8) -> torch.Tensor:
    """Siglip2ImageProcessor's patch layout, written out independently of the adapter."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def _siglip_image_features(model, images: torch.Tensor) -> torch.Tensor:
    if model.config.model_type == "siglip2":
        b, n = images.shape[0], (images.shape[-1] // 8) ** 2
        g = int(n**0.5)
        return model.get_image_features(
            pixel_values=_siglip_patches(images),
            pixel_attention_mask=torch.ones(b, n, dtype=torch.long),
            spatial_shapes=torch.tensor([[g, g]] * b),
        ).pooler_output
    return model.get_image_features(pixel_values=images).pooler_output


def _family(name: str):
    """``(model, tokenizer, reference text encoder ids -> (N, D) unnormalised)``."""
    if name == "coca":
        m = make_tiny_coca()
        return m, coca_tokenizer(), lambda ids: m.encode_text(ids, normalize=False)
    if name.startswith("hf_"):
        m = make_tiny_hf_text_clip(name[3:])
        return m, WordIds(16), m.encode_text
    if name == "mt5":
        m = make_tiny_mt5_text_clip()
        return m, None, m.encode_text
    m = make_tiny_siglip(siglip2=name == "siglip2")
    return m, WordIds(16), lambda ids: m.get_text_features(input_ids=ids).pooler_output


FAMILIES = [
    "coca",
    "hf_mean_pooler",
    "hf_cls_pooler",
    "hf_cls_last_hidden_state_pooler",
    "siglip",
    "siglip2",
]


@pytest.mark.parametrize("name", FAMILIES + ["mt5"])
@torch.no_grad()
def test_from_hidden_of_embeddings_equals_the_models_text_encoder(name):
    model, tok, reference = _family(name)
    ids = tok(CAPTIONS) if tok is not None else torch.tensor([[5, 6, 7, 1, 0], [8, 9, 1, 0, 0]])
    text = ClipAdapter(model).text
    emb = text.from_hidden(text.embed(ids), ids, 0)
    assert (emb - reference(ids)).abs().max() <= 1e-5
    # the last layer's output maps to the same embedding
    last = text.hidden_state(ids, text.n_blocks)
    assert (text.from_hidden(last, ids, text.n_blocks) - emb).abs().max() <= 1e-5


@pytest.mark.parametrize("name", FAMILIES)
@torch.no_grad()
def test_hidden_state_round_trip_at_a_middle_layer(name):
    model, tok, reference = _family(name)
    ids = tok(CAPTIONS)
    text = ClipAdapter(model).text
    mid = text.hidden_state(ids, 1)
    assert (text.from_hidden(mid, ids, 1) - reference(ids)).abs().max() <= 1e-5
    # and the middle state is what the first block makes of the embeddings
    assert (text.run_blocks(text.embed(ids), ids, 0, 1) - mid).abs().max() == 0


@torch.no_grad()
def test_coca_appends_its_class_token_and_pools_it():
    model = make_tiny_coca()
    ids = coca_tokenizer()(CAPTIONS)
    text = ClipAdapter(model).text
    s = ids.shape[1]
    assert text.context_length == s  # 15 ids; the blocks see 16 tokens
    assert text.hidden_state(ids, 1).shape[1] == s + 1
    assert text.pool_index(ids).tolist() == [s, s]
    # the mask is open_clip's (causal + padding over the keys), one per example
    mask = text.attention_mask(ids, torch.float32)
    assert mask.shape == (2 * model.text.heads, s + 1, s + 1)
    assert torch.equal(mask, model.text._embeds(ids)[1])


@torch.no_grad()
def test_coca_classifier_logits_equal_the_model():
    model, tok = make_tiny_coca(), coca_tokenizer()
    clf = ClipClassifier(model, tok, CLASSES)
    images = torch.randn(2, 3, 32, 32)
    text = model.encode_text(tok([f"a photo of a {c}." for c in CLASSES]), normalize=True)
    expected = model.logit_scale.exp() * model.encode_image(images, normalize=True) @ text.T
    assert (clf(images) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("siglip2", [False, True])
@torch.no_grad()
def test_siglip_classifier_logits_equal_model_logits_per_image(siglip2):
    model, tok = make_tiny_siglip(siglip2=siglip2), WordIds(16)
    assert ClipAdapter(model).logit_bias.item() == -1.5
    clf = ClipClassifier(model, tok, CLASSES)
    images = torch.randn(2, 3, 32, 32)
    ids = tok([f"a photo of a {c}." for c in CLASSES])
    if siglip2:
        out = model(
            input_ids=ids,
            pixel_values=_siglip_patches(images),
            pixel_attention_mask=torch.ones(2, 16, dtype=torch.long),
            spatial_shapes=torch.tensor([[4, 4]] * 2),
        )
    else:
        out = model(input_ids=ids, pixel_values=images)
    assert (clf(images) - out.logits_per_image).abs().max() <= 1e-5


@torch.no_grad()
def test_siglip2_refuses_other_image_sizes():
    vision = ClipAdapter(make_tiny_siglip(siglip2=True)).vision
    assert vision.image_size == (32, 32) and vision.grid_size == (4, 4)
    with pytest.raises(ValueError, match="fixed .* grid.*got \\(48, 48\\)"):
        vision.embed(torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("siglip2", [False, True])
@torch.no_grad()
def test_siglip_hide_patches_equals_dropping_the_tokens(siglip2):
    model = make_tiny_siglip(siglip2=siglip2)
    vision = ClipAdapter(model).vision
    assert vision.n_prefix == 0 and vision.pool_type == "attn"
    images = torch.randn(2, 3, 32, 32)
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[0, [0, 5, 6, 15]] = True
    hidden[1, 3:11] = True
    with vision.hide_patches(hidden):
        masked = ClipAdapter(model).encode_image(images)
    x = vision.embed(images)
    for b in range(2):
        kept = x[b : b + 1, ~hidden[b]]
        for layer in vision.blocks:  # the HF layers themselves, no mask
            kept = layer(kept, None)
        pooled = model.vision_model.head(model.vision_model.post_layernorm(kept))
        assert (masked[b] - pooled[0]).abs().max() <= 1e-5
    # hooks are gone: the same call now reads every patch
    full = _siglip_image_features(model, images)
    assert (ClipAdapter(model).encode_image(images) - full).abs().max() <= 1e-5
    assert (masked - full).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["coca", "siglip", "hf_mean_pooler"])
def test_interactions_complete_on_each_text_family(name):
    model, tok, _ = _family(name)
    ii = IntegratedInteractions(model, tok)
    images = torch.randn(1, 3, 32, 32)
    n_ids = tok(CAPTIONS[:1]).shape[1]
    for text_layer in (0, -1):
        res = ii.explain(images, CAPTIONS[:1], text_layer=text_layer, n_steps=16)
        assert res.delta.abs().max() <= 1e-4
        rows = n_ids + (name == "coca")  # CoCa's appended class token is a row too
        assert res.attributions.shape[1] == rows == len(res.tokens[0])
    assert res.tokens[0][:3] == (
        ["<start_of_text>", "a", "photo"] if name == "coca" else ["<s>", "a", "photo"]
    )
    if name == "coca":
        assert res.tokens[0][-1] == "<cls>"


def test_siglip_text_fast_route_equals_forward_route():
    model, tok = make_tiny_siglip(), WordIds(16)
    ii = IntegratedInteractions(model, tok)
    ids = tok(CAPTIONS[:1])
    assert ClipTextEncoder(ClipAdapter(model).text, tok).pooled(ids, 1) is not None
    images = torch.randn(1, 3, 32, 32)
    fast = ii.explain(images, CAPTIONS[:1], n_steps=16, route="auto")
    slow = ii.explain(images, CAPTIONS[:1], n_steps=16, route="forward")
    assert (fast.attributions - slow.attributions).abs().max() <= 1e-6
    assert fast.delta.abs().max() <= 1e-4


def test_coca_fast_route_is_not_taken_and_forward_is_complete():
    model, tok = make_tiny_coca(), coca_tokenizer()
    ids = tok(CAPTIONS[:1])
    enc = ClipTextEncoder(ClipAdapter(model).text, tok)
    assert enc.pooled(ids, 1) is None  # per-example (padding) mask: forward route
    assert enc.active(ids, 1).shape == (1, ids.shape[1] + 1)
    base = enc.baseline(ids, None)
    end = int(ids.argmax())  # open_clip's EOT has the largest id
    assert base[0, 0] == ids[0, 0] and base[0, end] == ids[0, end]
    assert (base[0, 1:end] == 0).all()


def test_hf_text_tower_whole_encoder_refuses_middle_layers():
    text = ClipAdapter(make_tiny_mt5_text_clip()).text
    ids = torch.tensor([[5, 6, 7, 1, 0]])
    with pytest.raises(ValueError, match="run as a whole.*use text_layer=0"):
        text.hidden_state(ids, 1)


def test_open_clip_max_pooler_is_refused_with_a_reason():
    model = make_tiny_hf_text_clip("max_pooler")
    with pytest.raises(ValueError, match="max_pooler.*supported: mean_pooler"):
        ClipAdapter(model)


def test_cci_runs_on_hf_siglip():
    model, tok = make_tiny_siglip(), WordIds(16)
    clf = ClipClassifier(model, tok, CLASSES)
    images = torch.randn(2, 3, 32, 32)
    attr = CCI(clf).attribute(images, target=0)
    assert attr.shape == images.shape and torch.isfinite(attr).all()
    assert attr.flatten(1).std(1).min() > 0  # regions differ


@torch.no_grad()
def test_siglip_token_head_is_the_pooler_reading_one_token():
    model = make_tiny_siglip()
    vision = ClipAdapter(model).vision
    tokens = torch.randn(3, 32)
    head = model.vision_model.head
    z = model.vision_model.post_layernorm(tokens)
    a = head.attention
    d = z.shape[-1]
    value = F.linear(z, a.in_proj_weight[2 * d :], a.in_proj_bias[2 * d :])
    h = a.out_proj(value)  # one key: the probe's attention is 1 on it
    expected = h + head.mlp(head.layernorm(h))
    assert (vision.token_head(tokens) - expected).abs().max() <= 1e-5


@torch.no_grad()
def test_siglip_trace_pool_reproduces_the_head_and_respects_hidden_patches():
    from captum_clip._hooks import HookManager

    model = make_tiny_siglip()
    vision = ClipAdapter(model).vision
    images = torch.randn(2, 3, 32, 32)
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[:, :5] = True
    plain = vision(images)
    with vision.hide_patches(hidden):
        masked = vision(images)
    with HookManager() as hooks:
        store = vision.trace_pool(hooks)
        traced = vision(images)
        assert (traced - plain).abs().max() <= 1e-5
        assert store["pool"].probs.shape == (2, 2, 1, 16)
        with vision.hide_patches(hidden):
            traced_masked = vision(images)
        assert (traced_masked - masked).abs().max() <= 1e-5
        assert store["pool"].probs[..., :5].abs().max() == 0
    assert (vision(images) - plain).abs().max() == 0  # the head is restored


def test_hf_siglip_hiding_every_patch_is_the_empty_pooling():
    """No key left for the head: its attention is the empty sum (only out_proj's bias), as
    the timm adapter defines it; not NaN. The traced pooler agrees."""
    from captum_clip._hooks import HookManager

    model = make_tiny_siglip()
    vision = ClipAdapter(model).vision
    x = torch.randn(2, 3, *vision.image_size)
    hidden = torch.zeros(2, vision.n_patches, dtype=torch.bool)
    hidden[0] = True
    with torch.no_grad(), vision.hide_patches(hidden):
        out = vision(x)
    head = model.vision_model.head
    empty = head.attention.out_proj.bias[None, None]
    expected = (empty + head.mlp(head.layernorm(empty)))[0, 0]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), HookManager() as hooks, vision.hide_patches(hidden):
        store = vision.trace_pool(hooks)
        traced = vision(x)
    torch.testing.assert_close(traced, out, atol=1e-5, rtol=1e-5)
    assert store["pool"].probs[0].abs().sum() == 0
