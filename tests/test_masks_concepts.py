"""ConceptMasks: object masks from named regions, their use in diagnose(), and the shortcut
evidence column -- checked against hand computations on the bundled testbed models."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from captum_clip import ClipClassifier, load_clip
from captum_clip.attr import CCI, cluster_grid
from captum_clip.concepts import Namer, name_regions, shortcut_evidence
from captum_clip.diagnosis import diagnose
from captum_clip.masks import ConceptMasks, MaskProvider
from captum_clip.testbed import BACKGROUND_NAMES, CLASS_NAMES, generate_scenes, shapes

CONTEXT = list(BACKGROUND_NAMES)


@pytest.fixture(scope="module")
def models():
    out = {}
    for v in ("default", "shortcut"):
        loaded = load_clip("testbed", variant=v)
        clf = ClipClassifier(
            loaded.model, loaded.tokenizer, CLASS_NAMES, templates=["a photo of {}"]
        )
        out[v] = (loaded, clf)
    scenes = generate_scenes(10, seed=5, rho=0.5)
    return out, scenes, shapes.normalize(scenes.images)


@pytest.mark.parametrize("all_classes", [False, True])
def test_mask_is_the_union_of_regions_named_as_the_class(models, all_classes):
    out, scenes, x = models
    loaded, _ = out["default"]
    classes = list(CLASS_NAMES) if all_classes else None
    provider = ConceptMasks(loaded, CONTEXT, n_clusters=6, empty="keep", classes=classes)
    assert isinstance(provider, MaskProvider)
    names = [CLASS_NAMES[int(c)] for c in scenes.labels]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masks = provider(x, names)
    # by hand: k-means of the namer's last-block patch tokens (image by image), then each
    # image's regions named among the context and its own class (or all classes)
    vision = ClipClassifier(loaded.model, loaded.tokenizer, ["dots"]).vision
    with torch.no_grad():
        feats = vision.patch_features(x, -1)
    for i, name in enumerate(names):
        labels, _ = cluster_grid(feats[i : i + 1], 6, None, 0)
        pix = F.interpolate(labels.reshape(1, 1, 8, 8).float(), size=64, mode="nearest")[0, 0]
        words = CONTEXT + (list(CLASS_NAMES) if all_classes else [name])
        named = name_regions(x[i : i + 1], pix.long(), words, namer=loaded, top_k=1)
        want = torch.zeros(64, 64, dtype=torch.bool)
        for r, best in enumerate(named.best[0]):
            if best == name:
                want |= pix == r
        assert torch.equal(masks[i].cpu(), want), i
    assert torch.equal(provider.last_fallback, ~masks.flatten(1).any(1).cpu())


def test_masks_overlap_the_true_objects(models):
    """The reference (default) namer's masks cover the object far better than chance."""
    out, scenes, x = models
    provider = ConceptMasks(out["default"][0], CONTEXT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = provider(x, [CLASS_NAMES[int(c)] for c in scenes.labels])
    inter = (m & scenes.masks).flatten(1).sum(1).float()
    union = (m | scenes.masks).flatten(1).sum(1).float()
    assert float((inter / union).mean()) > 0.5  # measured 0.7; a random half mask gives ~0.3
    assert m.flatten(1).any(1).all()  # empty="closest": no empty mask


def test_empty_policy_closest_takes_the_region_closest_to_the_class(models):
    out, scenes, x = models
    loaded, _ = out["default"]
    keep = ConceptMasks(loaded, CONTEXT, n_clusters=4, empty="keep")
    closest = ConceptMasks(loaded, CONTEXT, n_clusters=4)
    names = ["solid"] * len(x)  # most scenes are not solid: many empty masks
    with pytest.warns(UserWarning, match="no region was named as the class"):
        m_keep = keep(x, names)
    with pytest.warns(UserWarning, match="closest region"):
        m_close = closest(x, names)
    empty = ~m_keep.flatten(1).any(1)
    assert empty.any()
    assert m_close.flatten(1).any(1).all()
    assert torch.equal(m_close[~empty], m_keep[~empty])
    named = closest.last_named
    labels = named.labels
    s = torch.nan_to_num(named.scores, nan=-torch.inf)
    j = named.vocabulary.index("solid")
    for i in empty.nonzero().flatten().tolist():
        gap = s[i, :, j] - s[i].max(-1).values
        assert torch.equal(m_close[i].cpu(), labels[i] == int(gap.argmax()))


def test_bad_arguments(models):
    out, _, x = models
    loaded, _ = out["default"]
    with pytest.raises(ValueError, match="twice"):
        ConceptMasks(loaded, ["grass", "grass"])
    with pytest.raises(TypeError, match="namer must be a CLIP"):
        ConceptMasks(torch.nn.Linear(2, 2), CONTEXT)
    with pytest.raises(ValueError, match="empty must be one of"):
        ConceptMasks(loaded, CONTEXT, empty="drop")
    with pytest.raises(ValueError, match="cannot encode the class name"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ConceptMasks(loaded, CONTEXT)(x[:2], ["zebra", "zebra"])


def test_shortcut_evidence_by_hand(models):
    out, _, x = models
    ref, _ = out["default"]
    _, clf = out["shortcut"]
    x = x[:5]
    ev = shortcut_evidence(clf, x, ref, CONTEXT, n_clusters=6)
    pred = clf(x).argmax(1)
    _, res = CCI(clf, n_clusters=6).attribute(x, target=pred, return_clusters=True)
    words = CONTEXT + list(CLASS_NAMES)
    own = name_regions(x, res, words, forward_func=clf)
    theirs = name_regions(x, res, words, namer=ref)
    for i in range(len(x)):
        w = torch.nan_to_num(res.weights[i], nan=0).clamp_min(0)
        p = own.probs[i, : len(w), words.index(CLASS_NAMES[int(pred[i])])]
        ctx = torch.tensor([b not in CLASS_NAMES for b in theirs.best[i][: len(w)]])
        hard = torch.tensor([a == CLASS_NAMES[int(pred[i])] for a in own.best[i][: len(w)]]) & ctx
        total = w.sum().clamp_min(1e-12)
        torch.testing.assert_close(ev.share[i], (w * torch.nan_to_num(p) * ctx).sum() / total)
        torch.testing.assert_close(ev.hard_share[i], (w * hard).sum() / total)
    assert ((ev.share >= 0) & (ev.share <= 1)).all()


def test_diagnose_with_concept_masks_equals_diagnose_with_its_masks(models):
    out, scenes, x = models
    ref, _ = out["default"]
    _, clf = out["shortcut"]
    provider = ConceptMasks(ref, CONTEXT, n_clusters=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = diagnose(clf, x, provider, labels=scenes.labels, internal_batch_size=8)
        masks = provider(x, [CLASS_NAMES[int(c)] for c in scenes.labels])
        plain = diagnose(clf, x, masks, labels=scenes.labels)
    cols = ["pred", "driver", "category"]
    assert d.table[cols].equals(plain.table[cols])
    for c in ("fg_effect", "bg_effect"):  # batches of 8 vs one batch: float rounding only
        torch.testing.assert_close(
            torch.tensor(d.table[c].to_numpy()), torch.tensor(plain.table[c].to_numpy())
        )
    assert {"concept_fallback", "shortcut_share"} <= set(d.table.columns)
    ev = shortcut_evidence(clf, x, provider.namer, CONTEXT, n_clusters=8)
    torch.testing.assert_close(
        torch.tensor(d.table["shortcut_share"].to_numpy()), ev.share, atol=1e-6, rtol=0
    )


def test_namer_with_other_normalisation_gets_the_images_its_way(models):
    """A namer whose preprocess normalises differently sees the same [0, 1] image."""
    out, scenes, x = models
    loaded, _ = out["default"]
    namer = Namer(loaded.model, loaded.tokenizer)
    unit = scenes.images[:2]
    y = namer.to_namer_space(unit, None, None)
    torch.testing.assert_close(y, x[:2])
    namer.mean, namer.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    torch.testing.assert_close(namer.to_namer_space(x[:2]), (unit - 0.5) / 0.5, atol=1e-5, rtol=0)


def test_masks_do_not_depend_on_the_batch_split(models):
    out, scenes, x = models
    provider = ConceptMasks(out["default"][0], CONTEXT, evidence=False)
    names = [CLASS_NAMES[int(c)] for c in scenes.labels]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = provider(x, names)
        parts = torch.cat([provider(x[i : i + 3], names[i : i + 3]) for i in range(0, len(x), 3)])
    assert torch.equal(whole, parts)


def test_unencodable_words_are_warned_about_once_per_provider(models):
    """Called once per batch (as diagnose does), the provider names the skipped words once."""
    out, scenes, x = models
    provider = ConceptMasks(out["default"][0], CONTEXT + ["zebra"], evidence=False)
    names = [CLASS_NAMES[int(c)] for c in scenes.labels]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        provider(x[:3], names[:3])
        provider(x[3:6], names[3:6])
    skipped = [w for w in caught if "cannot encode" in str(w.message)]
    assert len(skipped) == 1 and "'zebra'" in str(skipped[0].message)
