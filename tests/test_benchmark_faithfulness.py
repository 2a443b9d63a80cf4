"""The faithfulness benchmark harness: its numbers are the metric functions' numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_vit, tiny_tokenizer

from captum_clip.attr.cci import CCI
from captum_clip.benchmark import (
    METHODS,
    ForwardCounter,
    MethodSettings,
    MetricSettings,
    build_method,
    evaluate,
    markdown_report,
    reference_comparison,
    reference_method,
    slic_superpixels,
)
from captum_clip.diagnosis import causal_agreement
from captum_clip.metrics import (
    deletion_auc,
    insertion_auc,
    mask_share,
    pointing_game,
    road,
)
from captum_clip.models import ClipClassifier

CLASSES = ["cat", "dog", "car"]


@pytest.fixture(scope="module")
def clf():
    return ClipClassifier(make_tiny_vit(), tiny_tokenizer(), CLASSES)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    masks = torch.stack(
        [(yy - 10) ** 2 + (xx - 12) ** 2 < 64, (yy - 20) ** 2 + (xx - 18) ** 2 < 81]
    )
    return x, masks


def _direct(clf, x, attr, target, masks, mt):
    """Every metric by a direct call of captum_clip.metrics (what the harness must equal)."""
    kw = dict(target=target, n_steps=mt.n_steps, seed=mt.seed)
    return {
        "deletion_prob": deletion_auc(clf, x, attr, baselines="zeros", score="prob", **kw),
        "deletion_top1": deletion_auc(clf, x, attr, baselines="zeros", score="top1", **kw),
        "insertion_prob": insertion_auc(clf, x, attr, baselines="blur", score="prob", **kw),
        "insertion_top1": insertion_auc(clf, x, attr, baselines="blur", score="top1", **kw),
        "deletion_prob_patch": deletion_auc(
            clf, x, attr, baselines="zeros", score="prob", unit="patch", patch_size=8, **kw
        ),
        "deletion_prob_blur": deletion_auc(clf, x, attr, baselines="blur", score="prob", **kw),
        "road": road(
            clf, x, attr, target=target, percentages=mt.road_percentages, score="prob"
        ).score,
        "pointing": pointing_game(attr, masks, tolerance=mt.pointing_tolerance),
        "mask_share": mask_share(attr, masks),
    }


def test_harness_numbers_equal_direct_metric_calls(clf, data):
    x, masks = data
    mt = MetricSettings(n_steps=5, road_percentages=(30, 70))
    with torch.no_grad():
        target = clf(x).argmax(1)
    causal = ["foreground", "background"]
    res = evaluate(
        clf,
        x,
        target,
        masks,
        causal,
        methods=["CCI", "Saliency"],
        metric_settings=mt,
        chunk_size=1,
    )
    direct_maps = {
        "CCI": CCI(clf, n_clusters=7, estimator="occlusion").attribute(x, target=target),
        "Saliency": build_method("Saliency", clf)(x, target),
    }
    for name, attr in direct_maps.items():
        rows = res.table[res.table.method == name].sort_values("image")
        expected = _direct(clf, x, attr, target, masks, mt)
        for col, value in expected.items():
            np.testing.assert_allclose(
                rows[col].to_numpy(),
                value.double().numpy(),
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{name} {col}",
            )
        agree = causal_agreement(expected["mask_share"].numpy(), causal)
        assert res.causal.loc[name, "auroc"] == pytest.approx(agree["auroc"])
    # the summary is the per-method mean of the table
    assert res.summary().loc["CCI", "road"] == pytest.approx(
        res.table[res.table.method == "CCI"]["road"].mean()
    )


def test_chunking_does_not_change_the_numbers(clf, data):
    x, masks = data
    mt = MetricSettings(n_steps=4, road_percentages=(50,), deletion_variants=())
    kw = dict(methods=["CCI", "MaskCLIP"], metric_settings=mt)
    a = evaluate(clf, x, None, masks, chunk_size=1, **kw).table
    b = evaluate(clf, x, None, masks, chunk_size=2, **kw).table
    cols = ["deletion_prob", "insertion_top1", "road", "mask_share"]
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), rtol=1e-5, atol=1e-6)


def test_sampling_methods_are_reproducible(clf, data):
    x, masks = data
    kw = dict(
        methods=["KernelShap", "Lime"],
        method_settings=MethodSettings(shap_samples=8, superpixels=9),
        metric_settings=MetricSettings(n_steps=2, road_percentages=(50,), deletion_variants=()),
    )
    a = evaluate(clf, x, None, masks, **kw).table
    b = evaluate(clf, x, None, masks, **kw).table
    cols = ["deletion_prob", "insertion_prob", "mask_share"]
    np.testing.assert_array_equal(a[cols].to_numpy(), b[cols].to_numpy())


def test_forward_counts_are_exact(clf, data):
    x, masks = data
    with torch.no_grad():
        target = clf(x).argmax(1)
    ms = MethodSettings(cci_k=3, ig_steps=5)
    res = evaluate(
        clf,
        x,
        target,
        methods=["CCI", "IntegratedGradients", "Occlusion", "MaskCLIP"],
        method_settings=ms,
        metric_settings=MetricSettings(n_steps=2, road_percentages=(50,), deletion_variants=()),
        chunk_size=2,
    )
    _, clusters = CCI(clf, n_clusters=3, estimator="occlusion").attribute(
        x, target=target, return_clusters=True
    )
    n_hidden = int(torch.isfinite(clusters.scores).sum())  # one masked copy per cluster
    cost = res.cost
    assert cost.loc["CCI", "forwards_per_image"] == (2 + n_hidden) / 2  # + the unmasked pass
    assert cost.loc["CCI", "autograd_forwards_per_image"] == 0
    assert cost.loc["IntegratedGradients", "forwards_per_image"] == 5
    assert cost.loc["IntegratedGradients", "autograd_forwards_per_image"] == 5
    assert cost.loc["Occlusion", "forwards_per_image"] == 1 + 16  # clean + 4x4 patch windows
    assert cost.loc["MaskCLIP", "forwards_per_image"] == 1
    assert (cost["seconds_per_image"] > 0).all()


def test_counter_counts_images_and_removes_its_hook(clf, data):
    x, _ = data
    with ForwardCounter(clf) as count:
        with torch.no_grad():
            clf(x)
        clf(torch.cat([x, x]))
    assert (count.calls, count.images, count.autograd) == (2, 6, 4)
    assert not count.module._forward_pre_hooks
    with torch.no_grad():
        clf(x)
    assert count.images == 6


def test_every_method_runs_and_leaves_the_model_unchanged(clf, data):
    x, _ = data
    pytest.importorskip("pytorch_grad_cam")
    target = torch.tensor([0, 2])
    before = {k: v.clone() for k, v in clf.model.state_dict().items()}
    modes = [m.training for m in clf.modules()]
    ms = MethodSettings(ig_steps=3, shap_samples=8, superpixels=6)
    for name in METHODS:
        attr = build_method(name, clf, ms)(x, target)
        assert attr.shape == x.shape and torch.isfinite(attr).all(), name
    assert all(p.grad is None and p.requires_grad for p in clf.model.parameters())
    assert [m.training for m in clf.modules()] == modes  # pytorch-grad-cam calls .eval()
    assert all(torch.equal(v, before[k]) for k, v in clf.model.state_dict().items())
    hooks = [m for m in clf.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert not hooks


def test_slic_superpixels_match_skimage(data):
    from skimage.segmentation import slic

    from captum_clip.testbed import shapes

    x = shapes.normalize(shapes.generate_scenes(2, seed=1).images)
    fmask = slic_superpixels(x, n_segments=24)
    assert fmask.shape == (2, 1, 64, 64) and fmask.dtype == torch.long
    for i in range(2):
        img = x[i].permute(1, 2, 0).double()
        img = ((img - img.min()) / (img.max() - img.min())).numpy()
        ref = slic(img, n_segments=24, compactness=10.0, start_label=0)
        ids = fmask[i, 0].numpy()
        assert np.array_equal(np.unique(ids), np.arange(ids.max() + 1))
        # the same partition (labels may be renumbered)
        pairs = {(a, b) for a, b in zip(ids.ravel(), ref.ravel())}
        assert len(pairs) == len(np.unique(ref)) == ids.max() + 1 >= 6
    # pure noise: SLIC merges everything into one segment -> a 3x3 grid instead
    noise = slic_superpixels(data[0], n_segments=9)[0, 0]
    expected = (torch.arange(32) * 3 // 32)[:, None] * 3 + (torch.arange(32) * 3 // 32)[None]
    assert torch.equal(noise, expected)


def test_bad_input_is_rejected(clf, data):
    x, masks = data
    with pytest.raises(ValueError, match="unknown method"):
        evaluate(clf, x, methods=["NoSuchMethod"])
    with pytest.raises(ValueError, match="images must be"):
        evaluate(clf, x[0], methods=["CCI"])
    with pytest.raises(ValueError, match="masks must be"):
        evaluate(clf, x, masks=masks[:1], methods=["CCI"])
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate(clf, x, methods=["CCI"], chunk_size=0)
    with pytest.raises(ValueError, match="unknown method"):
        build_method("CCI()", clf)


def test_report_and_cli_defaults(clf, data):
    from captum_clip.commands import faithfulness as cmd

    assert cmd.METHOD_NAMES == tuple(METHODS)
    ms, mt = MethodSettings(), MetricSettings()
    assert {k: getattr(ms, k) for k in cmd.METHOD_DEFAULTS} == cmd.METHOD_DEFAULTS
    assert {k: getattr(mt, k) for k in cmd.METRIC_DEFAULTS} == cmd.METRIC_DEFAULTS
    x, masks = data
    mt = MetricSettings(n_steps=2, road_percentages=(50,))
    res = evaluate(clf, x, None, masks, methods=["CCI", "Saliency"], metric_settings=mt)
    cmp = reference_comparison(res)
    t = res.table.pivot(index="image", columns="method", values="deletion_prob")
    share = ((t["CCI"] < t["Saliency"]) + 0.5 * (t["CCI"] == t["Saliency"])).mean()
    assert cmp.loc["Saliency", "reference_better_share"] == pytest.approx(share)
    assert reference_method([res]) == "CCI"
    text = markdown_report([res], "cmd --x", ["setting A"])
    assert "Command: `cmd --x`" in text and "- setting A" in text
    assert "| CCI rank |" in text and "Saliency" in text


def test_reference_without_cci(clf, data):
    """Without CCI the reference is the first method of the run that every model ran."""
    x, masks = data
    mt = MetricSettings(n_steps=2, road_percentages=(50,))
    both = evaluate(clf, x, None, masks, methods=["Saliency", "InputXGradient"], metric_settings=mt)
    one = evaluate(clf, x, None, masks, methods=["InputXGradient"], metric_settings=mt)
    assert reference_method([both]) == "Saliency"
    assert reference_method([both, one]) == "InputXGradient"
    cmp = reference_comparison(both, "insertion_prob", reference="InputXGradient")
    t = both.table.pivot(index="image", columns="method", values="insertion_prob")
    assert cmp.loc["Saliency", "reference_mean"] == pytest.approx(t["InputXGradient"].mean())
    with pytest.raises(ValueError, match="no 'CCI' rows; its methods"):
        reference_comparison(both)
    text = markdown_report([both, one], "cmd", [])
    assert "InputXGradient vs every method" in text and "time ÷ InputXGradient" in text
    assert "| InputXGradient rank |" in text and "| 1 of 1 |" in text


def test_cli_folder_end_to_end(tmp_path):
    from PIL import Image

    from captum_clip.cli import main

    pytest.importorskip("safetensors")
    from captum_clip.testbed.zoo import weights_path

    if not weights_path("default").is_file():
        pytest.skip("bundled testbed weights missing")
    from captum_clip.testbed import shapes

    scenes = shapes.generate_scenes(2, seed=5)
    for i, (img, m) in enumerate(zip(scenes.images, scenes.masks)):
        cls = shapes.CLASS_NAMES[int(scenes.labels[i])]
        for root, arr in (("img", (img.permute(1, 2, 0) * 255)), ("mask", m[..., None] * 255)):
            d = tmp_path / root / cls
            d.mkdir(parents=True, exist_ok=True)
            a = arr.byte().numpy()
            Image.fromarray(a if a.shape[-1] == 3 else a[..., 0]).save(d / f"s{i}.png")
    out = tmp_path / "res.md"
    rc = main(
        [
            "faithfulness", "folder", str(tmp_path / "img"), "--model", "testbed:default",
            "--classes", *shapes.CLASS_NAMES, "--masks", str(tmp_path / "mask"),
            "--methods", "CCI", "MaskCLIP", "--n-steps", "2", "--road-percentages", "50",
            "--out", str(out), "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    text = out.read_text()
    assert "testbed:default (2 images)" in text and "| CCI |" in text
    assert "**CCI**" not in text  # only best values are bold, never a method name
    assert (tmp_path / "res_testbed-default.png").is_file()


def test_cli_testbed_without_cci(tmp_path):
    """Without CCI the report compares with the first requested method, and its numbers are
    the per-image table's means."""
    import pandas as pd

    from captum_clip.cli import main

    pytest.importorskip("safetensors")
    from captum_clip.testbed.zoo import weights_path

    if not weights_path("default").is_file():
        pytest.skip("bundled testbed weights missing")
    out, csv = tmp_path / "res.md", tmp_path / "res.csv"
    rc = main(
        [
            "faithfulness", "testbed", "--variants", "default", "--n", "2",
            "--methods", "rollout", "attnlrp", "--n-steps", "2", "--road-percentages", "50",
            "--out", str(out), "--csv", str(csv), "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    text, table = out.read_text(), pd.read_csv(csv)
    ref, other = "GradientRollout", "AttnLRP"  # the first requested method is the reference
    assert "CCI" not in text[text.index("\n## ") :]  # the settings lines name every method
    assert f"## Deletion AUC (probability, lower is better): {ref} vs every method" in text
    assert f"| {ref} rank |" in text and f"time ÷ {ref}" in text
    means = table.groupby("method")["deletion_prob"].mean()
    t = table.pivot(index="image", columns="method", values="deletion_prob")
    share = ((t[ref] < t[other]) + 0.5 * (t[ref] == t[other])).mean()
    headline = text.split("-- pixels replaced by the mean colour")[1]
    for m in (ref, other):
        row = next(r for r in headline.splitlines() if r.startswith(f"| {m} |"))
        assert row.split("|")[2].strip().strip("*").startswith(f"{means[m]:.3f}")
    assert f"({100 * share:.0f} %)" in headline.split(f"| {other} |")[1].splitlines()[0]
    section = text.split("## testbed:default (2 images)")[1]
    header = next(r for r in section.splitlines() if r.startswith("| method |"))
    cols = [c.strip() for c in header.split("|")]
    for m in (ref, other):
        row = [c.strip().strip("*") for c in next(
            r for r in section.splitlines() if r.startswith(f"| {m} |")
        ).split("|")]  # fmt: skip
        for column, name in (("deletion_prob", "del. AUC prob ↓"), ("mask_share", "mask share ↑")):
            mean = table.groupby("method")[column].mean()[m]
            assert row[cols.index(name)] == f"{mean:.3f}"
    ref_row = next(r for r in section.splitlines() if r.startswith(f"| {ref} |"))
    assert ref_row.split("|")[cols.index(f"time ÷ {ref}")].strip() == "1.00"
