"""Regions named in words: embeddings against direct encode_image runs, order invariance,
vocabulary checks, other-size namers, and the named-region result."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_resnet, make_tiny_vit, tiny_tokenizer

from captum_clip import ClipClassifier, load_clip
from captum_clip.attr import CCI
from captum_clip.concepts import (
    Namer,
    general_sections,
    general_vocabulary,
    name_regions,
    read_vocabulary,
)
from captum_clip.testbed import BACKGROUND_NAMES, CLASS_NAMES, generate_scenes, shapes

VOCAB = list(CLASS_NAMES) + list(BACKGROUND_NAMES)


@pytest.fixture(scope="module")
def testbed():
    loaded = load_clip("testbed")
    clf = ClipClassifier(loaded.model, loaded.tokenizer, CLASS_NAMES, templates=["a photo of {}"])
    scenes = generate_scenes(6, seed=3)
    return loaded, clf, scenes, shapes.normalize(scenes.images)


def _labels(n: int, grid: int = 8, k: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, k, (n, grid, grid), generator=g)
    lab[:, 0, :k] = torch.arange(k)  # every region present
    return lab


def test_isolated_embedding_equals_encode_image_with_other_patches_hidden(testbed):
    loaded, clf, _, x = testbed
    namer = Namer(loaded.model, loaded.tokenizer, loaded.preprocess, embedding="isolated")
    lab = _labels(len(x))
    pix = F.interpolate(lab[:, None].float(), size=64, mode="nearest")[:, 0].long()
    emb = namer.region_embeddings(x, namer.grid_labels(pix), 3)
    vision = clf.vision
    for r in range(3):
        hidden = lab.reshape(len(x), -1) != r
        with torch.no_grad(), vision.hide_patches(hidden):
            direct = F.normalize(loaded.model.encode_image(x).float(), dim=-1)
        torch.testing.assert_close(emb[:, r], direct, atol=1e-5, rtol=1e-4)


def test_context_embedding_is_mean_of_region_and_region_with_ring(testbed):
    loaded, clf, _, x = testbed
    namer = Namer(loaded.model, loaded.tokenizer, embedding="context")
    lab = _labels(2)
    pix = F.interpolate(lab[:, None].float(), size=64, mode="nearest")[:, 0].long()
    emb = namer.region_embeddings(x[:2], namer.grid_labels(pix), 3)
    r = 1
    member = lab == r
    grown = F.max_pool2d(member[:, None].float(), 3, 1, 1)[:, 0] > 0
    outs = []
    for keep in (member, grown):
        with torch.no_grad(), clf.vision.hide_patches(~keep.reshape(2, -1)):
            outs.append(F.normalize(loaded.model.encode_image(x[:2]).float(), dim=-1))
    torch.testing.assert_close(
        emb[:, r], F.normalize(outs[0] + outs[1], dim=-1), atol=1e-5, rtol=1e-4
    )


def test_dense_embedding_is_mean_of_maskclip_patch_embeddings(testbed):
    from captum_clip.attr.maskclip import value_path_embeddings

    loaded, clf, _, x = testbed
    namer = Namer(loaded.model, loaded.tokenizer, embedding="dense")
    lab = _labels(2)
    pix = F.interpolate(lab[:, None].float(), size=64, mode="nearest")[:, 0].long()
    emb = namer.region_embeddings(x[:2], namer.grid_labels(pix), 3)
    with torch.no_grad():
        dense = F.normalize(value_path_embeddings(clf.vision, x[:2]), dim=-1)
    m = (lab.reshape(2, -1) == 2).float()
    want = F.normalize((dense * m[..., None]).sum(1), dim=-1)
    torch.testing.assert_close(emb[:, 2], want, atol=1e-5, rtol=1e-4)


def test_names_are_the_vocabulary_sorted_by_cosine_and_invariant_to_order(testbed):
    loaded, clf, _, x = testbed
    _, res = CCI(clf, n_clusters=5).attribute(x, target=0, return_clusters=True)
    a = name_regions(x, res, VOCAB, namer=loaded, top_k=len(VOCAB))
    b = name_regions(x, res, list(reversed(VOCAB)), namer=loaded, top_k=len(VOCAB))
    assert a.names == b.names
    namer = Namer(loaded.model, loaded.tokenizer)
    text = namer.text_embeddings(VOCAB)
    i, r = 2, 1
    labels = a.labels
    emb = namer.region_embeddings(x, namer.grid_labels(labels), int(labels.max()) + 1)
    cos = (emb[i, r] @ text.T).tolist()
    assert a.names[i][r] == [w for _, w in sorted(zip(cos, VOCAB), key=lambda t: (-t[0], t[1]))]
    # shares are CCI's weights, areas the pixel fractions
    torch.testing.assert_close(a.share[:, : res.weights.shape[1]], res.weights.float())
    up = F.interpolate(res.labels[:, None].float(), size=64, mode="nearest")[:, 0]
    torch.testing.assert_close(a.area[i, r], (up[i] == r).float().mean())
    table = a.table()
    assert len(table) == int(a.n_regions.sum())
    assert set(table.columns) >= {"image", "region", "name", "score", "share", "area", "names"}


def test_default_namer_is_the_explained_model(testbed):
    loaded, clf, _, x = testbed
    _, res = CCI(clf, n_clusters=4).attribute(x, target=0, return_clusters=True)
    own = name_regions(x, res, VOCAB, forward_func=clf)
    ref = name_regions(x, res, VOCAB, namer=loaded)
    torch.testing.assert_close(own.scores, ref.scores, equal_nan=True)
    with pytest.raises(ValueError, match="namer="):
        name_regions(x, res, VOCAB)


def test_unencodable_words_are_skipped_with_one_warning(testbed):
    loaded, _, _, x = testbed
    lab = _labels(len(x))
    with pytest.warns(UserWarning, match=r"cannot encode 2 vocabulary word.*'zebra'.*'tuba'"):
        named = name_regions(x, lab, VOCAB + ["zebra", "tuba"], namer=loaded)
    assert "zebra" not in named.vocabulary and named.scores.shape[-1] == len(VOCAB)
    with pytest.raises(ValueError, match="no vocabulary word"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            name_regions(x, lab, ["zebra"], namer=loaded)


@pytest.mark.parametrize(
    "vocab, err, match",
    [
        ([], ValueError, "empty"),
        (["grass", "sky", "grass"], ValueError, "twice"),
        (["grass", 3], TypeError, "strings"),
        (["grass", " "], ValueError, "empty string"),
        ("grass sky", ValueError, "not found"),
        (42, TypeError, "list of strings"),
    ],
)
def test_bad_vocabulary_is_refused(testbed, vocab, err, match):
    loaded, _, _, x = testbed
    with pytest.raises(err, match=match):
        name_regions(x, _labels(len(x)), vocab, namer=loaded)


@pytest.mark.parametrize("bad", [torch.nn.Linear(2, 2), "ViT-B-32", (1, 2)])
def test_namer_that_is_not_a_clip_is_refused(testbed, bad):
    _, _, _, x = testbed
    with pytest.raises(TypeError, match="namer must be a CLIP"):
        name_regions(x, _labels(len(x)), VOCAB, namer=bad)


def test_namer_with_another_size_gets_pixel_masks_and_its_own_preprocessing(testbed):
    """A 32-px open_clip ViT names the testbed's 64-px regions: images are un-normalised,
    resized and normalised its way; each of its patches joins the majority region."""
    _, _, _, x = testbed
    model = make_tiny_vit().eval()
    namer = Namer(model, tiny_tokenizer(), embedding="isolated")
    namer.mean, namer.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    lab = _labels(len(x), grid=8, k=3)
    pix = F.interpolate(lab[:, None].float(), size=64, mode="nearest")[:, 0].long()
    named = name_regions(x, pix, ["grass", "sky", "dots"], namer=namer)
    mean = torch.tensor(shapes.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(shapes.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    unit = F.interpolate(
        (x * std + mean).clamp(0, 1), size=32, mode="bilinear", align_corners=False
    )
    x32 = (unit - 0.5) / 0.25
    grid = F.interpolate(pix[:, None].float(), size=32, mode="nearest")[:, 0].long()
    cells = grid.reshape(len(x), 4, 8, 4, 8).permute(0, 1, 3, 2, 4).reshape(len(x), 16, 64)
    patch = F.one_hot(cells, 3).sum(2).argmax(-1)  # majority region per 8-px patch
    text = namer.text_embeddings(["grass", "sky", "dots"])
    for r in range(3):
        present = (patch == r).any(1)
        with torch.no_grad(), make_vision(model).hide_patches(patch != r):
            e = F.normalize(model.encode_image(x32).float(), dim=-1)
        want = e @ text.T
        torch.testing.assert_close(named.scores[present, r], want[present], atol=1e-4, rtol=1e-4)
        assert torch.isnan(named.scores[~present, r]).all()


def make_vision(model):
    from captum_clip.models import ClipAdapter

    return ClipAdapter(model).vision


def test_conv_namer_isolates_regions_by_pixels():
    model = make_tiny_resnet().eval()
    namer = Namer(model, tiny_tokenizer(), embedding="isolated")
    x = torch.randn(2, 3, 64, 64)
    pix = torch.zeros(2, 64, 64, dtype=torch.long)
    pix[:, :, 32:] = 1
    named = name_regions(x, pix, ["grass", "sky"], namer=namer)
    text = namer.text_embeddings(["grass", "sky"])
    with torch.no_grad():
        e = F.normalize(model.encode_image(torch.where(pix[:, None] == 1, x, 0.0)).float(), dim=-1)
    torch.testing.assert_close(named.scores[:, 1], e @ text.T, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="isolated"):
        Namer(model, tiny_tokenizer(), embedding="dense")


def test_general_vocabulary_has_sourced_sections_and_reads_back(tmp_path):
    sections = general_sections()
    assert {"colours", "textures", "materials", "stuff", "scenes", "object parts"} <= set(sections)
    assert len(sections["textures"][1]) == 47 and "DTD" in sections["textures"][0]
    for source, _ in sections.values():
        assert source
    words = general_vocabulary()
    assert len(words) == len({w.lower() for w in words}) > 200
    f = tmp_path / "v.txt"
    f.write_text("# my words\ngrass\n\nsky\n")
    assert read_vocabulary(f) == ["grass", "sky"]
    with pytest.raises(ValueError, match="unknown vocabulary section"):
        general_vocabulary(["nope"])


def test_model_left_unchanged_and_plot_has_labels(testbed):
    loaded, clf, _, x = testbed
    loaded.model.train()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    _, res = CCI(clf, n_clusters=4).attribute(x[:2], target=0, return_clusters=True)
    named = name_regions(x[:2], res, VOCAB, namer=loaded)
    assert loaded.model.training
    loaded.model.eval()
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, before[k])
    fig = named.plot(x[:2], index=[0, 1])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    for name in named.best[0]:
        if name is not None:
            assert any(name in t for t in texts)
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
