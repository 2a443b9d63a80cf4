"""The model contract: classifier/similarity numerics, towers, loading and its errors."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_VIT, ToyHFTokenizer, make_tiny_hf_clip, make_tiny_resnet, make_tiny_vit
from PIL import Image
from skimage import data

from captum_clip.models import (
    CheckpointNotFoundError,
    ClipAdapter,
    ClipClassifier,
    ClipSimilarity,
    ModelLoadError,
    load_clip,
    token_strings,
)

CLASSES = ["cat", "dog", "astronaut"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def hand_logits(model, tokenizer, images):
    img = F.normalize(model.encode_image(images), dim=-1)
    rows = []
    for c in CLASSES:
        t = F.normalize(model.encode_text(tokenizer([tp.format(c) for tp in TEMPLATES])), dim=-1)
        rows.append(F.normalize(t.mean(0), dim=-1))
    return model.logit_scale.exp() * img @ torch.stack(rows).T


@pytest.mark.parametrize("make,size", [(make_tiny_vit, 32), (make_tiny_resnet, 64)])
def test_classifier_matches_hand_computation(make, size, tokenizer):
    model = make()
    clf = ClipClassifier(model, tokenizer, CLASSES, templates=TEMPLATES)
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        expected = hand_logits(model, tokenizer, x)
        got = clf(x)
    assert got.shape == (4, 3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # logits differ across classes and images (not a degenerate constant)
    assert got.std() > 0


def test_similarity_is_cosine(tiny_vit, tokenizer):
    texts = ["a red square", "a blue circle"]
    sim = ClipSimilarity(tiny_vit, tokenizer, texts)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = F.cosine_similarity(
            tiny_vit.encode_image(x)[:, None], tiny_vit.encode_text(tokenizer(texts))[None], dim=-1
        )
        got = sim(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got.abs().max() <= 1 + 1e-6


def test_real_photos_through_preprocess_and_classifier(tiny_vit, tokenizer):
    preprocess = open_clip.image_transform(32, is_train=False)
    photos = [data.astronaut(), data.chelsea(), data.coffee()]
    x = torch.stack([preprocess(Image.fromarray(p)) for p in photos])
    assert x.shape == (3, 3, 32, 32)
    # normalised with CLIP statistics: undo it and compare with a plain resize of the photo
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN)[:, None, None]
    std = torch.tensor(open_clip.OPENAI_DATASET_STD)[:, None, None]
    pixels = x * std + mean
    assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4
    ref = np.asarray(Image.fromarray(data.chelsea()).resize((32, 32), Image.BICUBIC)) / 255
    # centre crop of a non-square photo: compare mean colours, not pixels
    assert np.allclose(pixels[1].mean((1, 2)).numpy(), ref.mean((0, 1)), atol=0.08)
    clf = ClipClassifier(tiny_vit, tokenizer, CLASSES, templates=TEMPLATES)
    with torch.no_grad():
        torch.testing.assert_close(
            clf(x), hand_logits(tiny_vit, tokenizer, x), rtol=1e-5, atol=1e-5
        )


def test_vit_tower_hidden_states_roundtrip(tiny_vit):
    tower = ClipAdapter(tiny_vit).vision
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = tiny_vit.encode_image(x)
        for index in range(tower.n_blocks + 1):
            h = tower.hidden_state(x, index)
            torch.testing.assert_close(tower.from_hidden(h, index), full, rtol=1e-5, atol=1e-5)
    assert tower.grid_size == (4, 4) and tower.n_patches == 16
    assert tower.patch_features(x).shape == (2, 4, 4, 64)


def test_text_tower_roundtrip(tiny_vit, tokenizer):
    text = ClipAdapter(tiny_vit).text
    ids = tokenizer(["a red square on grass", "dog"])
    with torch.no_grad():
        full = tiny_vit.encode_text(ids)
        for index in (0, 1, 2):
            torch.testing.assert_close(
                text.from_hidden(text.hidden_state(ids, index), ids, index),
                full,
                rtol=1e-5,
                atol=1e-5,
            )
    assert text.pool_index(ids).tolist() == [6, 2]
    assert token_strings(tokenizer, ids[1, :3]) == ["<start_of_text>", "dog", "<end_of_text>"]


def test_hide_patches_really_hides(tiny_vit):
    tower = ClipAdapter(tiny_vit).vision
    x = torch.randn(2, 3, 32, 32)
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[0, :4] = True  # first patch row of image 0
    hidden[1, [5, 10]] = True
    y = x.clone()
    y[0, :, :8, :] = torch.randn(3, 8, 32) * 5  # new pixels under the hidden patches
    y[1, :, 8:16, 8:16] = 7.0
    y[1, :, 16:24, 16:24] = -3.0
    with torch.no_grad():
        with tower.hide_patches(hidden):
            a, b = tiny_vit.encode_image(x), tiny_vit.encode_image(y)
        plain = tiny_vit.encode_image(y)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (plain - b).abs().max() > 1e-3  # without the mask the pixels do matter
    assert not any(blk._forward_pre_hooks for blk in tower.blocks)
    with pytest.raises(ValueError, match="batch of 2"), torch.no_grad(), tower.hide_patches(hidden):
        tiny_vit.encode_image(x[:1])
    assert not any(blk._forward_pre_hooks for blk in tower.blocks)


def test_avg_pool_tower_excludes_hidden_tokens():
    cfg = {**TINY_VIT, "vision_cfg": {**TINY_VIT["vision_cfg"], "pool_type": "avg"}}
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**cfg).eval()
    tower = ClipAdapter(model).vision
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[..., :8, :8] = 9.0
    hidden = torch.zeros(1, 16, dtype=torch.bool)
    hidden[0, 0] = True
    with torch.no_grad(), tower.hide_patches(hidden):
        torch.testing.assert_close(model.encode_image(x), model.encode_image(y))
    assert "_global_pool" not in tower.module.__dict__


def test_resnet_has_no_attention_mode(tiny_resnet):
    tower = ClipAdapter(tiny_resnet).vision
    assert not tower.is_vit and tower.grid_size == (2, 2)
    assert tower.patch_features(torch.randn(1, 3, 64, 64)).shape[1:3] == (2, 2)
    with pytest.raises(ValueError, match="pixel"), tower.hide_patches(torch.zeros(1, 4).bool()):
        pass


def test_hf_adapter_matches_transformers():
    clip = make_tiny_hf_clip()
    tok = ToyHFTokenizer()
    x = torch.randn(2, 3, 32, 32)
    ids = tok(["a cat", "a big dog"])
    adapter = ClipAdapter(clip)
    with torch.no_grad():
        ref_img = clip.get_image_features(pixel_values=x)
        ref_txt = clip.get_text_features(input_ids=ids)
        ref_img = getattr(ref_img, "pooler_output", ref_img)
        ref_txt = getattr(ref_txt, "pooler_output", ref_txt)
        torch.testing.assert_close(adapter.encode_image(x), ref_img, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(adapter.encode_text(ids), ref_txt, rtol=1e-5, atol=1e-5)
        clf = ClipClassifier(clip, tok, ["cat", "big dog"], templates=["a {}"])
        expected = (
            clip.logit_scale.exp() * F.normalize(ref_img, dim=-1) @ F.normalize(ref_txt, dim=-1).T
        )
        torch.testing.assert_close(clf(x), expected, rtol=1e-5, atol=1e-5)
        # attention masking works through the HF layers too
        hidden = torch.zeros(2, 16, dtype=torch.bool)
        hidden[:, :4] = True
        y = x.clone()
        y[:, :, :8] = 3.0
        with adapter.vision.hide_patches(hidden):
            torch.testing.assert_close(clf(x), clf(y), rtol=1e-5, atol=1e-5)
    assert not any(layer._forward_pre_hooks for layer in adapter.vision.blocks)


def test_bad_inputs(tiny_vit, tokenizer):
    clf = ClipClassifier(tiny_vit, tokenizer, CLASSES)
    with pytest.raises(ValueError, match="32x32"):
        clf(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="NaN"):
        clf(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(TypeError, match="floating"):
        clf(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clf(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="empty"):
        ClipSimilarity(tiny_vit, tokenizer, [""])
    with pytest.raises(ValueError, match="non-empty"):
        ClipClassifier(tiny_vit, tokenizer, [])
    with pytest.raises(ValueError, match="exactly one"):
        ClipClassifier(tiny_vit, tokenizer, CLASSES, templates=["no slot"])
    with pytest.raises(TypeError, match="CLIP"):
        ClipClassifier(torch.nn.Linear(2, 2), tokenizer, CLASSES)


def test_load_clip_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="Did you mean ViT-B-32"):
        load_clip("ViT-B-31")
    with pytest.raises(CheckpointNotFoundError, match="not found"):
        load_clip("ViT-B-32", checkpoint=tmp_path / "missing.pt")
    with pytest.raises(ModelLoadError, match="known tags"):
        load_clip("ViT-B-32", pretrained="no-such-tag")


def test_load_clip_offline_download_fails_clearly(no_network):
    from conftest import no_network as guard

    guard.expected = True  # this test expects (and blocks) a download attempt
    try:
        with pytest.raises(ModelLoadError, match="internet"):
            load_clip("RN50", pretrained="openai")
    finally:
        guard.expected = False


def test_load_clip_local_checkpoint_roundtrip(tmp_path, monkeypatch):
    import json

    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "tiny-test-vit.json").write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(cfg_dir)
    reference = open_clip.create_model("tiny-test-vit", pretrained=None).eval()
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, path)
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    model, preprocess, tok = load_clip("tiny-test-vit", checkpoint=path)
    assert [str(p) for p in reads] == [str(path)]  # the file is read once
    monkeypatch.setattr(torch, "load", real_load)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), reference.encode_image(x))
    assert not model.training
    from safetensors.torch import save_file

    save_file(reference.state_dict(), str(tmp_path / "w.safetensors"))
    model2 = load_clip("tiny-test-vit", checkpoint=tmp_path / "w.safetensors").model
    with torch.no_grad():
        torch.testing.assert_close(model2.encode_image(x), reference.encode_image(x))
    bad = tmp_path / "bad.pt"
    torch.save({"visual.nope": torch.zeros(1)}, bad)
    with pytest.raises(ModelLoadError, match="does not match"):
        load_clip("tiny-test-vit", checkpoint=bad)


def test_captions_longer_than_the_context_are_refused_everywhere(tiny_vit, tokenizer):
    """One behaviour: ClipSimilarity, ClipClassifier and IntegratedInteractions refuse it.

    open_clip's tokenizer cuts silently: without the check the long caption would score
    exactly like its first 16 tokens (shown below on the raw model).
    """
    from captum_clip.attr import IntegratedInteractions

    long = "a photo of a " + "very " * 20 + "small dog"  # 30 tokens, context 16
    n = len(tokenizer.encode(long)) + 2
    with torch.no_grad():
        cut = tiny_vit.encode_text(tokenizer([long]))
        head = tiny_vit.encode_text(tokenizer(["a photo of a " + "very " * 10]))  # 16 tokens
    torch.testing.assert_close(cut, head)  # what silent truncation would have scored
    expected = (
        rf"caption 'a photo of a very .*' needs {n} tokens, more than the model's context length 16"
    )
    with pytest.raises(ValueError, match=expected):
        ClipSimilarity(tiny_vit, tokenizer, ["a dog", long])
    with pytest.raises(ValueError, match=r"caption 'a photo of a very .*dog' needs 27 tokens.* 16"):
        ClipClassifier(tiny_vit, tokenizer, ["cat", "very " * 20 + "dog"], ["a photo of a {}"])
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=expected):
        IntegratedInteractions(tiny_vit, tokenizer).attribute(x, [long])
    # exactly at the limit is fine, and scores like the full caption
    fits = "a photo of a " + "very " * 10
    assert len(tokenizer.encode(fits)) + 2 == 16
    sim = ClipSimilarity(tiny_vit, tokenizer, [fits])
    torch.testing.assert_close(sim.text_embeddings, F.normalize(head.float(), dim=-1))
