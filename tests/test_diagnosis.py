"""Foreground/background diagnosis: hand-built cases with known answers, and the testbed.

Attribution mode (``attributions=``, an attribution method, ``method="cci"``) here; the
default, region ablation, in ``test_diagnosis_ablation.py``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from captum_clip.diagnosis import causal_agreement, close_pairs, diagnose
from captum_clip.masks import GroundTruthMasks

NAMES = ["cat", "tiger", "car", "truck"]
# cat~tiger cosine 0.9, car~truck cosine ~0.995, animals vs vehicles ~0
EMB = torch.tensor([[1.0, 0.0], [0.9, math.sqrt(1 - 0.81)], [0.0, 1.0], [0.1, math.sqrt(0.99)]])
LABELS = torch.tensor([0, 0, 0, 2, 3, 3])
PREDS = torch.tensor([0, 2, 1, 0, 2, 2])
SHARES = [0.9, 0.2, 0.7, 0.6, 0.3, 0.5]


class Toy(torch.nn.Module):
    """Logits are written into the first row of channel 0 of each image."""

    class_names = NAMES

    def __init__(self, emb=EMB):
        super().__init__()
        self.register_buffer("text_embeddings", emb)

    def forward(self, x):
        return x[:, 0, 0, :4]


def toy_images(preds=PREDS):
    x = torch.zeros(len(preds), 3, 8, 8)
    x[torch.arange(len(preds)), 0, 0, preds] = 5.0
    return x


def toy_masks(n=6):
    m = torch.zeros(n, 8, 8, dtype=torch.bool)
    m[:, :, :4] = True  # left half
    return m


def toy_attr(shares=SHARES):
    """Left half carries mass ``s``, right half ``1 - s`` (plus negatives that must not count)."""
    a = torch.zeros(len(shares), 1, 8, 8)
    for i, s in enumerate(shares):
        a[i, 0, :, :4] = s / 32
        a[i, 0, :, 4:] = (1 - s) / 32
        a[i, 0, 0, 0] = -3.0  # negative evidence, ignored by mask_share
    return a


def run(**kw):
    args = dict(attributions=toy_attr())
    args.update(kw)
    return diagnose(Toy(), toy_images(), toy_masks(), LABELS, **args)


def test_hand_built_categories_with_embedding_closeness():
    d = run()
    t = d.table
    assert t["pred"].tolist() == PREDS.tolist()
    assert t["pred_name"].tolist() == [NAMES[i] for i in PREDS]
    assert t["correct"].tolist() == [True, False, False, False, False, False]
    # one pixel of the left half was set to -3: its positive mass s/32 is lost
    want = [(s - s / 32) / (s - s / 32 + (1 - s)) for s in SHARES]
    np.testing.assert_allclose(t["fg_share"].to_numpy(), want, rtol=1e-6)
    assert t["driver"].tolist() == [
        "foreground",
        "background",
        "foreground",
        "foreground",
        "background",
        "background",
    ]
    assert t["category"].tolist() == ["correct", "BG-Er", "Fine-Er", "FG-Er", "BG-Er", "BG-Er"]
    np.testing.assert_allclose(t["similarity"][2], 0.9, atol=1e-6)
    s = d.summary()
    assert (s["n"], s["n_correct"], s["n_errors"]) == (6, 1, 5)
    assert (s["bg_er"], s["fine_er"], s["fg_er"]) == (3, 1, 1)
    assert s["bg_er_rate"] == pytest.approx(3 / 5)
    assert s["bg_er_rate"] + s["fine_er_rate"] + s["fg_er_rate"] == pytest.approx(1.0)
    assert s["accuracy"] == pytest.approx(1 / 6)
    assert (s["foreground"], s["background"], s["unknown"]) == (3, 3, 0)


def exact_attr():
    a = torch.zeros(6, 1, 8, 8)
    for i, s in enumerate(SHARES):
        a[i, 0, :, :4] = s / 32
        a[i, 0, :, 4:] = (1 - s) / 32
    return a


def test_tau_threshold_is_inclusive_and_moves_categories():
    d = run(attributions=exact_attr())
    np.testing.assert_allclose(d.table["fg_share"], SHARES, rtol=1e-5)
    # share 0.5 == tau -> foreground; car vs truck are close -> Fine-Er
    assert d.table["category"].tolist() == [
        "correct",
        "BG-Er",
        "Fine-Er",
        "FG-Er",
        "BG-Er",
        "Fine-Er",
    ]
    d = run(attributions=exact_attr(), tau=0.25)
    assert d.table["category"].tolist()[4] == "Fine-Er"  # 0.3 >= 0.25 now
    assert d.table["category"].tolist()[1] == "BG-Er"  # 0.2 < 0.25
    d = run(attributions=exact_attr(), tau=0.95)
    assert set(d.table["category"][1:]) == {"BG-Er"}


def test_fine_threshold_and_user_groups():
    # threshold 0.95: cat~tiger (0.9) no longer close, car~truck (0.995) still close
    d = run(attributions=exact_attr(), fine_threshold=0.95)
    assert d.table["category"].tolist()[2] == "FG-Er"
    assert d.table["category"].tolist()[5] == "Fine-Er"
    # user groups override the embeddings: only animals are a group
    d = run(attributions=exact_attr(), fine_groups=[{"cat", "tiger"}])
    assert d.table["category"].tolist()[2] == "Fine-Er"
    assert d.table["category"].tolist()[5] == "FG-Er"
    # by index, and as a hierarchy
    d1 = run(attributions=exact_attr(), fine_groups=[{0, 1}, {2, 3}])
    d2 = run(
        attributions=exact_attr(),
        fine_groups={"cat": "animal", "tiger": "animal", "car": "vehicle", "truck": "vehicle"},
    )
    assert d1.table["category"].tolist() == d2.table["category"].tolist()
    assert d1.table["category"].tolist()[2::3] == ["Fine-Er", "Fine-Er"]
    # no closeness at all
    d = run(attributions=exact_attr(), fine_groups=[])
    assert "Fine-Er" not in d.table["category"].tolist()


def test_close_pairs_matches_cosines():
    close, sim = close_pairs(4, NAMES, None, EMB, 0.8)
    e = EMB / EMB.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(sim, e @ e.T, atol=1e-6)
    want = (e @ e.T > 0.8) & ~torch.eye(4, dtype=torch.bool)
    assert torch.equal(close, want)
    with pytest.raises(ValueError, match="unknown class"):
        close_pairs(4, NAMES, [{"cat", "lion"}])
    with pytest.raises(ValueError, match="not in"):
        close_pairs(4, NAMES, [{0, 7}])
    with pytest.raises(TypeError):
        close_pairs(4, NAMES, "cat")


def test_method_targets_batch_split_and_provider():
    seen = []
    full = diagnose(Toy(), toy_images(), toy_masks(), LABELS, method=lambda x, t: exact_attr())
    # batch split: per-batch attribution rows come from a lookup by position
    rows = iter(range(6))

    def by_pos(x, target):
        seen.append(target.clone())
        return torch.stack([exact_attr()[next(rows)] for _ in range(x.shape[0])])

    split = diagnose(Toy(), toy_images(), toy_masks(), LABELS, method=by_pos, internal_batch_size=4)
    cols = ["pred", "fg_share", "iou", "driver", "category"]
    assert full.table[cols].equals(split.table[cols])
    assert torch.equal(torch.cat(seen), PREDS)
    seen.clear()
    rows = iter(range(6))
    diagnose(
        Toy(),
        toy_images(),
        toy_masks(),
        LABELS,
        method=by_pos,
        target="label",
        internal_batch_size=5,
    )
    assert torch.equal(torch.cat(seen), LABELS)

    asked = []

    def provider(images, class_names):
        asked.extend(class_names)
        return toy_masks(images.shape[0])

    d = diagnose(
        Toy(), toy_images(), provider, LABELS, attributions=exact_attr(), internal_batch_size=4
    )
    assert asked == [NAMES[i] for i in LABELS]
    assert d.table["category"].tolist() == run(attributions=exact_attr()).table["category"].tolist()
    g = diagnose(
        Toy(), toy_images(), GroundTruthMasks(toy_masks()), LABELS, attributions=exact_attr()
    )
    assert g.table["fg_share"].equals(d.table["fg_share"])


def test_iou_and_without_labels():
    a = toy_masks().float()[:, None] * 2.0  # top region == mask exactly
    d = diagnose(Toy(), toy_images(), toy_masks(), attributions=a)
    np.testing.assert_allclose(d.table["iou"], 1.0)
    np.testing.assert_allclose(d.table["fg_share"], 1.0)
    assert d.table["category"].isna().all() and d.table["label"].isna().all()
    s = d.summary()
    assert s["foreground"] == 6 and math.isnan(s["accuracy"]) and math.isnan(s["bg_er"])
    # the complement: top region is the other half -> IoU 0
    d = diagnose(Toy(), toy_images(), toy_masks(), attributions=1 - a)
    np.testing.assert_allclose(d.table["iou"], 0.0)


def test_empty_mask_is_unknown_and_summary_by_group():
    m = toy_masks()
    m[1] = False
    with pytest.warns(UserWarning, match="empty object mask"):
        d = diagnose(Toy(), toy_images(), m, LABELS, attributions=exact_attr())
    assert math.isnan(d.table["fg_share"][1]) and pd.isna(d.table["driver"][1])
    assert d.table["category"][1] == "unknown"
    s = d.summary()
    assert s["unknown"] == 1 and s["unknown_er"] == 1
    d.table["group"] = ["a", "a", "a", "b", "b", "b"]
    by = d.summary(by="group")
    assert by.loc["a", "n"] == 3 and by.loc["b", "n_correct"] == 0
    assert by.loc["b", "bg_er"] == 1 and by.loc["b", "fine_er"] == 1
    with pytest.raises(ValueError, match="no column"):
        d.summary(by="nope")


def test_bad_inputs():
    x, m, a = toy_images(), toy_masks(), exact_attr()
    with pytest.raises(ValueError, match="tau"):
        diagnose(Toy(), x, m, LABELS, attributions=a, tau=1.5)
    with pytest.raises(ValueError, match="masks must have shape"):
        diagnose(Toy(), x, m[:, :4], LABELS, attributions=a)
    with pytest.raises(ValueError, match=r"labels must have one entry per example \(6\)"):
        diagnose(Toy(), x, m, LABELS[:3], attributions=a)
    with pytest.raises(ValueError, match="labels must be in"):
        diagnose(Toy(), x, m, LABELS + 3, attributions=a)
    with pytest.raises(TypeError, match="integer"):
        diagnose(Toy(), x, m, LABELS.float(), attributions=a)
    with pytest.raises(ValueError, match="class_names has 3"):
        diagnose(Toy(), x, m, LABELS, attributions=a, class_names=NAMES[:3])
    with pytest.raises(ValueError, match="target must be"):
        diagnose(Toy(), x, m, LABELS, attributions=a, target="top")
    with pytest.raises(ValueError, match="needs labels"):
        diagnose(Toy(), x, m, attributions=a, target="label")
    with pytest.raises(ValueError, match="attributions must have 6"):
        diagnose(Toy(), x, m, LABELS, attributions=a[:2])
    with pytest.raises(TypeError, match="masks must be"):
        diagnose(Toy(), x, "masks", LABELS, attributions=a)
    toy = Toy()
    del toy.text_embeddings
    with pytest.raises(ValueError, match="class closeness"):
        diagnose(toy, x, m, LABELS, attributions=a)


def test_causal_agreement_hand_built():
    share = [0.9, 0.2, 0.6, 0.4, float("nan"), 0.7]
    labels = ["foreground", "background", "background", "foreground", "foreground", "both"]
    a = causal_agreement(share, labels)
    assert (a["n"], a["n_foreground"], a["n_background"]) == (4, 2, 2)
    assert a["accuracy"] == pytest.approx(0.5)  # 0.9 and 0.2 right, 0.6 and 0.4 wrong
    assert a["auroc"] == pytest.approx(0.75)  # 3 of the 4 (fg, bg) pairs ordered right
    assert a["majority"] == pytest.approx(0.5)
    assert causal_agreement(share, labels, tau=0.35)["accuracy"] == pytest.approx(0.75)
    assert math.isnan(causal_agreement([0.3], ["foreground"])["auroc"])
    with pytest.raises(ValueError, match="equal length"):
        causal_agreement(share, labels[:3])


# ----------------------------------------------------------------------- testbed
def _testbed_or_skip(variant):
    from captum_clip.testbed import zoo

    if not zoo.weights_path(variant).is_file():
        pytest.skip(f"bundled testbed weights for {variant!r} are not in the package yet")
    pytest.importorskip("captum_clip.attr.cci")
    from captum_clip.models import ClipClassifier, load_clip
    from captum_clip.testbed import shapes

    model, _, tok = load_clip("testbed", variant=variant)
    return ClipClassifier(model, tok, list(shapes.CLASS_NAMES), templates=("a photo of {}",))


def test_testbed_shortcut_diagnosis_agrees_with_causal_truth():
    clf = _testbed_or_skip("shortcut")
    from captum_clip.testbed import causal, shapes

    # half aligned (shortcut available), half random backgrounds
    scenes = shapes.generate_scenes(160, seed=11, rho=0.5)
    x = shapes.normalize(scenes.images)
    d = diagnose(clf, x, scenes.masks, scenes.labels, method="cci", internal_batch_size=40)
    assert d.mode == "attribution"
    truth = causal.causal_labels(clf, scenes)
    pred = torch.tensor(d.table["pred"].to_numpy())
    assert torch.equal(pred, truth.pred)
    agree = causal_agreement(d, truth)
    print(f"shortcut model: {agree} causal counts {truth.counts()}")
    # measured: n=101 (48 fg / 53 bg), accuracy 0.71 (majority 0.52), AUROC 0.78;
    # seeds 12 / 13 gave AUROC 0.89 / 0.80, accuracy 0.80 / 0.72
    assert agree["n"] >= 40 and agree["n_foreground"] >= 10 and agree["n_background"] >= 10
    assert agree["auroc"] >= 0.7
    assert agree["accuracy"] >= agree["majority"] + 0.1


def test_testbed_default_model_is_mostly_foreground_driven():
    clf = _testbed_or_skip("default")
    from captum_clip.testbed import shapes

    scenes = shapes.generate_scenes(100, seed=12, rho=0.0)
    x = shapes.normalize(scenes.images)
    d = diagnose(clf, x, scenes.masks, scenes.labels, method="cci", internal_batch_size=50)
    s = d.summary()
    chance = d.table["mask_area"].mean()  # fg_share of a constant map
    print(
        f"default: foreground_rate={s['foreground_rate']:.3f} mean_fg_share="
        f"{s['mean_fg_share']:.3f} (chance {chance:.3f}) accuracy={s['accuracy']:.3f}"
    )
    # measured here: foreground_rate 0.82, mean fg_share 0.72 vs mask area 0.46; on 300
    # scenes (seed 5): 0.67 and 0.63 vs 0.46 (CCI regions of 8-px patches straddle the disc)
    assert s["foreground_rate"] >= 0.6
    assert s["mean_fg_share"] >= chance + 0.1


def test_cci_method_is_the_papers_cci_on_vit_and_resnet(tiny_vit, tiny_resnet, tokenizer):
    """``method="cci"`` is the old default: CCI.default_for(clf), i.e. the paper's
    leave-one-out CCI with K=7 (capped at the grid), attention masking on a ViT and pixel
    masking otherwise."""
    pytest.importorskip("captum_clip.attr.cci")
    from captum_clip.attr.cci import CCI
    from captum_clip.metrics import mask_iou, mask_share
    from captum_clip.models import ClipClassifier

    names = ["cat", "dog", "car"]
    for model, size, mode, k in ((tiny_vit, 32, "attention", 7), (tiny_resnet, 64, "pixel", 4)):
        clf = ClipClassifier(model, tokenizer, names)
        torch.manual_seed(0)
        x = torch.randn(3, 3, size, size)
        m = torch.zeros(3, size, size, dtype=torch.bool)
        m[:, : size // 2] = True
        labels = torch.tensor([0, 1, 2])
        d = diagnose(clf, x, m, labels, method="cci", fine_groups=[], internal_batch_size=2)
        assert d.mode == "attribution" and "fg_effect" not in d.table
        explicit = diagnose(clf, x, m, labels, method=CCI.default_for(clf), fine_groups=[],
                            internal_batch_size=2)  # fmt: skip
        pd.testing.assert_frame_equal(d.table, explicit.table)
        pred = clf(x).argmax(1)
        paper = CCI(clf, n_clusters=k, mask_mode=mode, estimator="occlusion")
        want = paper.attribute(x, target=pred)
        np.testing.assert_allclose(d.table["fg_share"], mask_share(want, m).numpy(), rtol=1e-5)
        iou = [float(mask_iou(want[i : i + 1], m[i : i + 1], seed=i)[0]) for i in range(3)]
        np.testing.assert_allclose(d.table["iou"], iou, rtol=1e-5)
        driver = np.where(d.table["fg_share"] >= 0.5, "foreground", "background")
        np.testing.assert_array_equal(d.table["driver"].to_numpy(), driver)


def test_method_strings_and_attributions():
    """``attributions=`` without a method is attribution mode; a method string with them, or
    an unknown string, is a ValueError naming the accepted strings."""
    from captum_clip.diagnosis import METHODS, PAPER_CCI, REGION_ABLATION

    assert METHODS == (REGION_ABLATION, PAPER_CCI) == ("region_ablation", "cci")
    d = run()  # attributions=, no method
    assert d.mode == "attribution" and d.summary()["mode"] == "attribution"
    assert "fg_effect" not in d.table and d.table["iou"].notna().all()
    x, m, a = toy_images(), toy_masks(), toy_attr()
    for bad in ("CCI", "ablation", "", "region-ablation"):
        with pytest.raises(ValueError, match="'region_ablation', 'cci'") as info:
            diagnose(Toy(), x, m, LABELS, method=bad)
        assert repr(bad) in str(info.value)
    for name in METHODS:
        with pytest.raises(ValueError, match=f"method={name!r} computes .*drop attributions="):
            diagnose(Toy(), x, m, LABELS, attributions=a, method=name)
    with pytest.raises(TypeError, match="method must have .attribute"):
        diagnose(Toy(), x, m, LABELS, method=3)


def test_measure_batch_is_the_per_batch_step_of_diagnose():
    """diagnose = measure_batch on each batch + the table step: the halves measured
    separately (seeded by their first index) give the diagnosis table's columns."""
    from captum_clip.diagnosis import measure_batch

    x, m, a = toy_images(), toy_masks(), toy_attr()
    d = diagnose(Toy(), x, m, LABELS, attributions=a, internal_batch_size=4)
    parts = [
        measure_batch(Toy(), x[s], m[s], "pred", attributions=a[s], seed=s.start)
        for s in (slice(0, 3), slice(3, 6))
    ]
    for key in ("pred", "target", "fg_share", "iou", "mask_area"):
        got = torch.cat([p[key] for p in parts]).numpy()
        np.testing.assert_allclose(d.table[key].to_numpy(dtype=float), got, rtol=1e-6)
    pos = a[:, 0].clamp(min=0)  # brute force: positive mass on the mask / all of it
    share = (pos * m).flatten(1).sum(1) / pos.flatten(1).sum(1)
    np.testing.assert_allclose(d.table["fg_share"], share.numpy(), rtol=1e-5)
    assert d.table["pred"].tolist() == PREDS.tolist()
