"""Tokenizers offline (issue 20, item 4): hub tokenizers fail fast with advice, a local
tokenizer folder or a callable replaces them, and ``hf:`` folders load SigLIP."""

from __future__ import annotations

import os
import time

import pytest
import torch
from _tiny_text import WordIds, make_tiny_siglip, make_word_tokenizer, save_word_tokenizer

from captum_clip.models.errors import ModelLoadError
from captum_clip.models.heads import ClipClassifier, token_strings
from captum_clip.models.hf_clip import HFTokenizer
from captum_clip.models.loaders import open_clip_tokenizer
from captum_clip.models.loading import load_clip

pytest.importorskip("transformers")

WORDS = ["<s>", "a", "photo", "of", "the", "cat", "</s>"]


@pytest.fixture(scope="module")
def tok_folder(tmp_path_factory):
    return save_word_tokenizer(str(tmp_path_factory.mktemp("tok")), context_length=16)


def test_offline_siglip_architecture_fails_fast_with_advice():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load_clip("ViT-B-16-SigLIP")
    assert time.perf_counter() - start < 5.0
    msg = str(err.value)
    assert "timm/ViT-B-16-SigLIP" in msg and "HF_HUB_OFFLINE is set" in msg
    assert "tokenizer='tok/'" in msg and "save_pretrained" in msg


def test_local_tokenizer_folder_and_callable_replace_the_hub_tokenizer(tok_folder):
    loaded = load_clip("ViT-B-16-SigLIP", tokenizer=tok_folder)
    ids = loaded.tokenizer(["A photo of the cat"])  # open_clip's canonicalize: lower case
    assert ids.shape == (1, 64)  # the architecture's context length
    assert ids[0, :7].tolist() == make_word_tokenizer()("a photo of the cat")["input_ids"]
    assert token_strings(loaded.tokenizer, ids[0, :7]) == WORDS

    def mine(texts):
        return torch.ones(len(texts), 64, dtype=torch.long)

    assert load_clip("ViT-B-16-SigLIP", tokenizer=mine).tokenizer is mine


def test_tokenizer_that_is_not_a_folder_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="callable or a folder.*not a folder"):
        open_clip_tokenizer("ViT-B-16-SigLIP", str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("name", "tokenizer", "came"),
    [("ViT-B-32", 42, "got int 42"), ("hf:some/folder", 3.5, "got float 3.5"),
     ("testbed:shortcut", [1], "got list [1]")],
)  # fmt: skip
def test_tokenizer_of_a_wrong_type_is_named(name, tokenizer, came):
    with pytest.raises(TypeError) as err:
        load_clip(name, tokenizer=tokenizer)
    msg = str(err.value)
    assert msg.startswith("tokenizer must be None (the model's own), a callable") and came in msg
    assert ("a folder (str / os.PathLike)" in msg) == (not name.startswith("testbed"))


def test_testbed_refuses_a_tokenizer_folder(tok_folder):
    with pytest.raises(TypeError, match="testbed models take no tokenizer folder.*got str"):
        load_clip("testbed", tokenizer=tok_folder)


def test_token_strings_of_the_hf_wrappers():
    hf = make_word_tokenizer()
    ids = hf("a photo of the cat")["input_ids"]
    assert token_strings(HFTokenizer(hf, 16), ids) == WORDS
    assert token_strings(WordIds(16), ids) == WORDS


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("siglip"))
    make_tiny_siglip().save_pretrained(folder)
    return folder


def test_load_hf_siglip_folder_with_its_tokenizer(siglip_folder, tmp_path):
    import shutil

    folder = str(tmp_path / "with_tok")
    shutil.copytree(siglip_folder, folder)
    save_word_tokenizer(folder)
    model, preprocess, tok = load_clip("hf:" + folder)
    assert type(model).__name__ == "SiglipModel" and not model.training
    ids = tok(["a photo of the cat", "red square"])
    assert ids.shape == (2, 16)  # padded to max_position_embeddings, as SigLIP is run
    clf = ClipClassifier(model, tok, ["cat", "dog"])
    images = torch.randn(2, 3, 32, 32)
    expected = model(input_ids=tok(["a photo of a cat.", "a photo of a dog."]), pixel_values=images)
    assert (clf(images) - expected.logits_per_image).abs().max() <= 1e-5
    from PIL import Image

    x = preprocess(Image.new("RGB", (50, 40), (255, 0, 0)))
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[0], torch.ones(32, 32)) and torch.allclose(x[1], -torch.ones(32, 32))


def test_load_hf_siglip_without_a_tokenizer_says_how_to_pass_one(siglip_folder, tok_folder):
    with pytest.raises(ModelLoadError, match="tokenizer='folder/'"):
        load_clip("hf:" + siglip_folder)
    loaded = load_clip("hf:" + siglip_folder, tokenizer=tok_folder)
    assert loaded.tokenizer(["a cat"]).shape == (1, 16)
    assert token_strings(loaded.tokenizer, loaded.tokenizer(["a cat"])[0, :4]) == [
        "<s>", "a", "cat", "</s>",
    ]  # fmt: skip


def test_load_hf_refuses_other_model_types(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
               intermediate_size=8).save_pretrained(tmp_path)  # fmt: skip
    with pytest.raises(ModelLoadError, match="'bert' model; supported: CLIPModel"):
        load_clip(f"hf:{tmp_path}")
