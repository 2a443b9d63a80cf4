"""Tests for the procedural scenes and the word-level tokenizer of the testbed."""

import pytest
import torch

from captum_clip.testbed import shapes
from captum_clip.testbed.tokenizer import TestbedTokenizer


@pytest.fixture(scope="module")
def scenes():
    return shapes.generate_scenes(64, seed=3, rho=0.0)


def test_images_and_masks_types(scenes):
    assert scenes.images.dtype == torch.float32 and scenes.masks.dtype == torch.bool
    assert scenes.images.shape == (64, 3, 64, 64) and scenes.masks.shape == (64, 64, 64)
    assert scenes.images.min() >= 0 and scenes.images.max() <= 1
    assert len(scenes.captions) == 64 and torch.equal(scenes.labels, scenes.factors["class"])


def test_mask_is_exactly_the_disc_from_the_factors(scenes):
    # independent geometry: a pixel (row i, col j) belongs to the disc iff its centre is
    # within the radius
    f = scenes.factors
    for b in range(8):
        cx, cy, r = float(f["cx"][b]), float(f["cy"][b]), float(f["radius"][b])
        expect = torch.zeros(64, 64, dtype=torch.bool)
        for i in range(64):
            for j in range(64):
                expect[i, j] = (j + 0.5 - cx) ** 2 + (i + 0.5 - cy) ** 2 <= r * r
        assert torch.equal(scenes.masks[b], expect)


def test_mask_equals_the_painted_pixels(scenes):
    """Object pixels differ from the background-only render exactly where painted."""
    f = scenes.factors
    bg_only, masks = shapes.render(f, 64, draw_object=False)
    outside = ~scenes.masks.unsqueeze(1).expand_as(scenes.images)
    # outside the mask the scene is the background, bit for bit
    assert torch.equal(scenes.images[outside], bg_only[outside])
    # inside the mask every pixel is one of the object's two colours
    c1 = shapes.COLOUR_RGB[f["colour"]].view(-1, 3, 1, 1)
    c2 = shapes.COLOUR_RGB[f["colour2"]].view(-1, 3, 1, 1)
    is_c1 = (scenes.images == c1).all(1)
    is_c2 = (scenes.images == c2).all(1)
    assert (is_c1 | is_c2)[scenes.masks].all()
    # background pixels never equal an object colour exactly -> mask = painted pixels
    assert torch.equal(is_c1 | is_c2, scenes.masks)


def test_background_swap_changes_only_pixels_outside_the_mask(scenes):
    f = scenes.factors
    other = (f["background"] + 3) % len(shapes.BACKGROUND_NAMES)
    swapped, masks = shapes.render(f, 64, background=other)
    m = masks.unsqueeze(1).expand_as(swapped)
    assert torch.equal(swapped[m], scenes.images[m])
    diff = (swapped != scenes.images).any(1)
    assert not (diff & masks).any()
    # every image's background really changed (most outside pixels differ)
    frac = (diff & ~masks).flatten(1).sum(1) / (~masks).flatten(1).sum(1).clamp_min(1)
    assert (frac > 0.9).all()


def test_patterns_follow_their_definition():
    """Stripes are constant along their direction inside the object."""
    f = shapes.sample_factors(40, seed=5)
    f["radius"] = torch.full((40,), 31.0)
    f["cx"] = torch.full((40,), 32.0)
    f["cy"] = torch.full((40,), 32.0)
    f["class"] = torch.arange(40) % 6
    images, masks = shapes.render(f)
    core = images[:, :, 24:40, 24:40]  # well inside every disc
    horiz = core[f["class"] == 1]
    vert = core[f["class"] == 2]
    solid = core[f["class"] == 0]
    assert torch.equal(horiz, horiz[..., :1].expand_as(horiz))  # rows constant
    assert torch.equal(vert, vert[..., :1, :].expand_as(vert))  # columns constant
    assert torch.equal(solid, solid[..., :1, :1].expand_as(solid))
    for k in (1, 2, 3, 4, 5):  # the patterned classes use both colours
        sel = core[f["class"] == k]
        assert (sel.flatten(1).std(1) > 0).all()


def test_same_seed_same_scenes_different_seed_differs():
    a = shapes.generate_scenes(16, seed=11, rho=0.5)
    b = shapes.generate_scenes(16, seed=11, rho=0.5)
    c = shapes.generate_scenes(16, seed=12, rho=0.5)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert a.captions == b.captions
    assert not torch.equal(a.images, c.images)


def test_render_is_batch_split_invariant():
    f = shapes.sample_factors(20, seed=2)
    full, _ = shapes.render(f)
    parts = [shapes.render(shapes.select(f, slice(s, s + 7)))[0] for s in range(0, 20, 7)]
    assert torch.equal(full, torch.cat(parts))


def test_rho_controls_background_assignment():
    n = 6000
    own = len(shapes.BACKGROUND_NAMES)
    f1 = shapes.sample_factors(n, seed=0, rho=1.0)
    assert torch.equal(f1["background"], f1["class"] % own)
    f0 = shapes.sample_factors(n, seed=0, rho=0.0)
    aligned0 = (f0["background"] == f0["class"] % own).float().mean().item()
    assert abs(aligned0 - 1 / own) < 0.02  # uniform backgrounds
    counts = torch.bincount(f0["background"], minlength=own).float() / n
    assert (counts - 1 / own).abs().max() < 0.025
    f9 = shapes.sample_factors(n, seed=0, rho=0.9)
    aligned9 = (f9["background"] == f9["class"] % own).float().mean().item()
    assert abs(aligned9 - (0.9 + 0.1 / own)) < 0.02


def test_any_image_size_scales_geometry():
    s = shapes.generate_scenes(4, seed=1, size=96)
    assert s.images.shape == (4, 3, 96, 96)
    share = s.masks.float().flatten(1).mean(1)
    r = s.factors["radius"] / 96
    assert (r >= 20 / 64 - 1e-6).all() and (r <= 30 / 64 + 1e-6).all()
    assert (share > 0.15).all()


def test_captions_and_prompts_are_tokenizable():
    tok = TestbedTokenizer()
    s = shapes.generate_scenes(200, seed=0, caption_probs=(1, 1, 1, 1))
    ids = tok(s.captions)
    assert ids.shape == (200, tok.context_length)
    assert len(set(s.captions)) > 50
    for c, row in zip(s.captions[:20], ids[:20]):
        assert tok.decode(row) == c
    assert tok(shapes.class_prompts()).shape[0] == len(shapes.CLASS_NAMES)


def test_normalize_zero_is_dataset_mean():
    mean = torch.tensor(shapes.OPENAI_DATASET_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert torch.allclose(shapes.normalize(mean), torch.zeros(2, 3, 4, 4), atol=1e-6)
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(shapes.denormalize(shapes.normalize(x)), x, atol=1e-6)


def test_shapes_bad_input():
    with pytest.raises(ValueError, match="rho"):
        shapes.generate_scenes(4, rho=1.5)
    with pytest.raises(ValueError, match="n must"):
        shapes.generate_scenes(0)
    with pytest.raises(ValueError, match="size"):
        shapes.generate_scenes(2, size=4)
    with pytest.raises(ValueError, match="missing keys"):
        shapes.render({"class": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(ValueError, match="background indices"):
        shapes.render(shapes.sample_factors(2), background=99)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        shapes.normalize(torch.rand(3, 8, 8))


# ---------------------------------------------------------------- tokenizer
def test_tokenizer_ids_and_round_trip():
    tok = TestbedTokenizer(context_length=10)
    ids = tok(["a red dots on grass", "checks"])
    assert ids.shape == (2, 10) and ids.dtype == torch.long
    assert tok.pad_id == 0 and tok.eot_id == tok.vocab_size - 1 and tok.sot_id == tok.eot_id - 1
    assert tok.eot_id == max(tok.eot_id, *range(len(tok.vocab) + 2))
    # argmax over ids lands on <eot> (open_clip's text pooling)
    assert ids.argmax(-1).tolist() == [6, 2]
    assert tok.decode_ids(ids[0]) == ["<sot>", "a", "red", "dots", "on", "grass", "<eot>"]
    assert tok.decode(ids[1]) == "checks"
    # ids of words are 1 + their position in vocab
    assert ids[0, 2].item() == tok.vocab.index("red") + 1
    # punctuation and case are normalised; single string gives one row
    assert torch.equal(tok("A red, dots on grass."), ids[:1])


def test_tokenizer_errors():
    tok = TestbedTokenizer(context_length=6)
    with pytest.raises(ValueError, match="unknown word 'zebra'"):
        tok("a zebra")
    with pytest.raises(ValueError, match="empty text"):
        tok("  ")
    with pytest.raises(ValueError, match="context_length is 6"):
        tok("a red and blue horizontal stripes")
    with pytest.raises(ValueError, match="non-empty list"):
        tok([])
    with pytest.raises(TypeError):
        tok([3])
    with pytest.raises(ValueError, match="outside"):
        tok.decode_ids([99])
    with pytest.raises(ValueError, match="distinct"):
        TestbedTokenizer(vocab=["a", "a"])
