"""``covar eval``: per-image rows (region ablation by default, the paper's CCI on request),
summaries, resume after an interruption, one diagnosis per folder, CLI."""

from __future__ import annotations

import importlib
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import captum_clip.diagnosis as diagnosis_mod
import captum_clip.storage.tables as rs
from captum_clip import covar
from captum_clip.cli import main as cli_main
from captum_clip.diagnosis.region_ablation import region_effects
from captum_clip.models import ClipClassifier, ModelEntry, resolve_model
from captum_clip.models.spec import TESTBED_TEMPLATES
from captum_clip.testbed import zoo

ev = importlib.import_module("captum_clip.covar.evaluate")  # the module, not covar.evaluate()

CLASSES = ["dots", "horizontal stripes", "vertical stripes"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is much faster on a shared, loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_testbed_model(seed: int = 0):
    """The bundled default model if its weights exist, else a random one of its architecture."""
    cfg = zoo.load_config("default")
    if zoo.weights_path("default").is_file():
        model, _, _ = zoo.load_testbed("default")
    else:
        torch.manual_seed(seed)
        model = zoo.build_model(cfg).eval()
    return model, zoo.TestbedPreprocess(64), zoo.build_tokenizer(cfg)


class CountingLoader:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return make_testbed_model()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    inst = covar.testbed_instances(1, classes=CLASSES, seed=0)
    bgs = covar.testbed_backgrounds(1, seed=0)
    out = tmp_path_factory.mktemp("covar_eval") / "data"
    covar.build(out, inst, bgs, size=64, object_size=None, show_progress=False)
    return out  # 3 classes x 1 instance x 1 background x 12 = 36 composites


def _entry(key="tb", loader=None):
    return ModelEntry(key, templates=TESTBED_TEMPLATES, loader=loader or CountingLoader())


@pytest.fixture(scope="module")
def reference(root, tmp_path_factory):
    """The default evaluation: region ablation (objects that cover no 8 px patch by the
    majority rule stay undecided: one warning for all batches)."""
    out = tmp_path_factory.mktemp("covar_eval") / "ref"
    with pytest.warns(UserWarning, match=r"covar eval tb: \d+ of 36 image\(s\) have") as rec:
        r = ev.evaluate(root, [_entry()], out, batch_size=4, chunk_batches=2, n_clusters=3,
                        show_progress=False)  # fmt: skip
    assert len([w for w in rec if "image(s) have" in str(w.message)]) == 1
    return r


@pytest.fixture(scope="module")
def cci_reference(root, tmp_path_factory):
    """The paper's diagnosis (the default before issue 21)."""
    out = tmp_path_factory.mktemp("covar_eval") / "cci"
    return ev.evaluate(root, [_entry()], out, batch_size=4, chunk_batches=2, n_clusters=3,
                       diagnosis="cci", plot=False, show_progress=False)  # fmt: skip


def _direct(root, res):
    """The classifier, the saved composites (as the table orders them), masks and labels."""
    model, preprocess, tok = make_testbed_model()
    clf = ClipClassifier(model, tok, CLASSES, templates=TESTBED_TEMPLATES)
    m = covar.load_manifest(root).set_index("image_id").loc[res["image_id"]]
    x = torch.stack([preprocess(Image.open(root / p).convert("RGB")) for p in m["image_path"]])
    masks = torch.stack([torch.from_numpy(np.asarray(Image.open(root / p)) > 127)
                         for p in m["mask_path"]])  # fmt: skip
    return clf, m, x, masks, torch.tensor(m["class_index"].to_numpy())


def _check_categories(res):
    wrong = ~res["correct"]
    stripes = {"horizontal stripes", "vertical stripes"}
    fine = res["pred_name"].isin(stripes) & res["class_name"].isin(stripes)
    expect = np.where(~wrong, "correct", np.where(res["driver"] == "background", "BG-Er",
                                                  np.where(fine, "Fine-Er", "FG-Er")))  # fmt: skip
    expect[wrong.to_numpy() & res["driver"].isna().to_numpy()] = "unknown"
    np.testing.assert_array_equal(res["category"].to_numpy(), expect)


def test_rows_agree_with_direct_computation(root, reference):
    res = reference.results
    manifest = covar.load_manifest(root)
    assert len(res) == len(manifest) == 36 and reference.computed == 36
    assert list(res["image_id"]) == sorted(manifest["image_id"])
    assert res["model"].eq("tb").all() and res["diagnosis"].eq("region_ablation").all()
    # predictions: the zero-shot classifier applied directly to the saved PNGs
    clf, m, x, masks, labels = _direct(root, res)
    with torch.no_grad():
        pred = clf(x).argmax(1).numpy()
    np.testing.assert_array_equal(res["pred"].to_numpy(), pred)
    np.testing.assert_array_equal(res["label"].to_numpy(), m["class_index"].to_numpy())
    np.testing.assert_array_equal(res["correct"].to_numpy(), pred == m["class_index"].to_numpy())
    area = np.array([(np.asarray(Image.open(root / p)) == 255).mean() for p in m["mask_path"]])
    np.testing.assert_allclose(res["mask_area"].to_numpy(), area, rtol=1e-6)
    # region ablation: the predicted logit with the object / the background hidden
    _, fg_eff, bg_eff = region_effects(clf, x, masks, torch.from_numpy(pred))
    np.testing.assert_allclose(res["fg_effect"], fg_eff.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res["bg_effect"], bg_eff.numpy(), rtol=1e-4, atol=1e-4)
    assert res["iou"].isna().all()
    known = res["fg_effect"].notna()
    assert known.sum() >= 30
    drv = np.where(res["fg_effect"] >= res["bg_effect"], "foreground", "background")
    np.testing.assert_array_equal(res["driver"][known].to_numpy(), drv[known])
    assert res["driver"][~known].isna().all()
    share = res["fg_share"].dropna()
    assert ((share >= 0) & (share <= 1)).all()
    _check_categories(res)


def test_cci_diagnosis_reproduces_the_papers_numbers(root, cci_reference):
    """diagnosis="cci" is the old default: CCI (K=3) fg_share >= tau, batch by batch."""
    from captum_clip.attr.cci import CCI
    from captum_clip.diagnosis import diagnose

    res = cci_reference.results
    assert res["diagnosis"].eq("cci").all() and len(res) == 36
    assert res[["fg_effect", "bg_effect"]].isna().all().all()
    clf, _, x, masks, labels = _direct(root, res)
    fine = [list(g) for g in ev.TESTBED_FINE_GROUPS]
    fine = [[c for c in g if c in CLASSES] for g in fine]
    parts = [diagnose(clf, x[s : s + 4], masks[s : s + 4], labels[s : s + 4],
                      method=CCI.default_for(clf, 3), fine_groups=fine).table
             for s in range(0, 36, 4)]  # the batches of evaluate(batch_size=4)  # fmt: skip
    want = pd.concat(parts, ignore_index=True)
    for col in ("pred", "fg_share", "iou", "mask_area", "similarity"):
        np.testing.assert_allclose(res[col].to_numpy(dtype=float),
                                   want[col].to_numpy(dtype=float), rtol=1e-5)  # fmt: skip
    for col in ("driver", "category"):
        np.testing.assert_array_equal(res[col].to_numpy(), want[col].to_numpy())
    drv = np.where(res["fg_share"] >= 0.5, "foreground", "background")
    np.testing.assert_array_equal(res["driver"].to_numpy(), drv)
    assert res["iou"].notna().all()
    _check_categories(res)


@pytest.mark.parametrize("which", ["reference", "cci_reference"])
def test_summary_matches_results(which, request):
    evaluated = request.getfixturevalue(which)
    res, summ = evaluated.results, evaluated.summary
    assert list(summ["subset"]) == [t.name for t in covar.TRANSFORMS] + ["all"]
    assert summ["diagnosis"].eq(res["diagnosis"].iloc[0]).all()
    for row in summ.itertuples(index=False):
        part = res if row.subset == "all" else res[res["transform"] == row.subset]
        assert row.n == len(part)
        assert row.accuracy == pytest.approx(part["correct"].mean())
        n_err = int((~part["correct"]).sum())
        assert row.n_errors == n_err
        bg = int((part["category"] == "BG-Er").sum())
        assert row.bg_er == bg and row.bg_er_of_all == pytest.approx(bg / len(part))
        assert row.unknown == int(part["driver"].isna().sum())
        assert row.unknown_er == int((part["category"] == "unknown").sum())
        if n_err:
            assert row.bg_er_rate == pytest.approx(bg / n_err)
            total = row.bg_er_rate + row.fg_er_rate + row.fine_er_rate + row.unknown_er / n_err
            assert total == pytest.approx(1.0)
    if which == "reference":
        assert (evaluated.out_dir / "covar_eval.png").is_file()
    assert not any((evaluated.out_dir / "parts").glob("*/*"))


def test_interrupted_run_resumes_without_recomputing(root, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    writes = {"n": 0}
    real_write = rs.write_table

    def failing_write(df, path):
        if "parts" in str(path):
            writes["n"] += 1
            if writes["n"] == 3:
                raise RuntimeError("simulated interruption")
        return real_write(df, path)

    monkeypatch.setattr(rs, "write_table", failing_write)
    with pytest.raises(RuntimeError, match="simulated"):
        ev.evaluate(root, [_entry()], out, batch_size=4, chunk_batches=2, n_clusters=3,
                    show_progress=False)  # fmt: skip
    monkeypatch.setattr(rs, "write_table", real_write)
    assert len(list((out / "parts").glob("*/*"))) == 2  # two chunks of 8 images saved

    seen = {"images": 0}
    real_diagnose = diagnosis_mod.diagnose

    def counting_diagnose(forward_func, images, *args, **kwargs):
        seen["images"] += images.shape[0]
        return real_diagnose(forward_func, images, *args, **kwargs)

    monkeypatch.setattr(diagnosis_mod, "diagnose", counting_diagnose)
    resumed = ev.evaluate(root, [_entry()], out, batch_size=4, chunk_batches=2, n_clusters=3,
                          show_progress=False)  # fmt: skip
    assert resumed.computed == 36 - 16 and seen["images"] == 20
    pd.testing.assert_frame_equal(resumed.results, reference.results)
    pd.testing.assert_frame_equal(resumed.summary, reference.summary)

    loader = CountingLoader()
    again = ev.evaluate(root, [_entry(loader=loader)], out, batch_size=4, n_clusters=3,
                        show_progress=False)  # fmt: skip
    assert again.computed == 0 and loader.calls == 0 and seen["images"] == 20
    pd.testing.assert_frame_equal(again.results, reference.results)


def test_constant_attribution_gives_area_share(root, tmp_path):
    """With a constant positive map, fg_share is exactly the mask's area fraction."""
    const = lambda x, target: torch.ones(x.shape[0], 1, *x.shape[-2:])  # noqa: E731
    with pytest.raises(ValueError, match="attribution= replaces CCI's map and needs diagnosis"):
        ev.evaluate(root, [_entry()], tmp_path / "c", attribution=const, show_progress=False)
    assert not (tmp_path / "c").exists()
    r = ev.evaluate(root, [_entry()], tmp_path / "c", batch_size=6, attribution=const,
                    diagnosis="cci", subsets=["identity", "scale-0.50"], tau=0.2, plot=False,
                    show_progress=False)  # fmt: skip
    res = r.results
    assert set(res["transform"]) == {"identity", "scale-0.50"} and len(res) == 6
    np.testing.assert_allclose(res["fg_share"], res["mask_area"], rtol=1e-6)
    np.testing.assert_array_equal(
        res["driver"], np.where(res["mask_area"] >= 0.2, "foreground", "background")
    )
    assert list(r.summary["subset"]) == ["identity", "scale-0.50", "all"]


def test_two_models_and_cli(root, reference, tmp_path):
    model, _, _ = make_testbed_model()
    ckpt = zoo.save_weights(model, zoo.load_config("default"), {}, tmp_path / "tb.safetensors")
    out = tmp_path / "cli"
    code = cli_main(["covar", "eval", str(root), "--models", f"testbed:default:{ckpt}",
                     "--out", str(out), "--batch-size", "4", "--n-clusters", "3",
                     "--no-progress", "--no-plot"])  # fmt: skip
    assert code == 0
    res = pd.read_parquet(out / "results.parquet") if (out / "results.parquet").is_file() else (
        pd.read_csv(out / "results.csv"))  # fmt: skip
    ref = reference.results.drop(columns="model")
    got = (
        res[res["model"] == f"testbed:default:{ckpt}"].drop(columns="model").reset_index(drop=True)
    )
    if zoo.weights_path("default").is_file():  # fp16 round trip of trained weights
        assert (got["pred"] == ref["pred"]).mean() > 0.9
    else:
        pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-3, atol=1e-3)
    second = ev.evaluate(root, [_entry("other")], out, batch_size=4, n_clusters=3, limit=8,
                         plot=False, show_progress=False)  # fmt: skip
    assert second.computed == 8
    assert set(second.results["model"]) == {"other", f"testbed:default:{ckpt}"}
    assert list(second.results["model"]) == sorted(second.results["model"])


def test_one_diagnosis_per_folder(root, reference, cci_reference, tmp_path, capsys):
    """A folder written with one diagnosis is refused with the other (Python and CLI), and
    resumed with its own."""
    for done, other in ((reference, "cci"), (cci_reference, "region_ablation")):
        own = done.results["diagnosis"].iloc[0]
        copy = tmp_path / own
        shutil.copytree(done.out_dir, copy)
        with pytest.raises(ValueError, match=f"diagnosed with {own!r}, not with {other!r}"):
            ev.evaluate(root, [_entry()], copy, n_clusters=3, diagnosis=other,
                        show_progress=False)  # fmt: skip
        with pytest.raises(ValueError, match=f"diagnosed with {own!r}"):  # any model
            ev.evaluate(root, [_entry("other")], copy, diagnosis=other, show_progress=False)
        argv = ["covar", "eval", str(root), "--models", "testbed", "--out", str(copy),
                "--no-progress", "--no-plot", "--device", "cpu"]  # fmt: skip
        if other == "cci":
            argv += ["--diagnosis", "cci"]
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("captum-clip covar eval: error: ")
        assert f"--diagnosis {own}" in err[0]
        again = ev.evaluate(root, [_entry()], copy, n_clusters=3, diagnosis=own, plot=False,
                            show_progress=False)  # fmt: skip
        assert again.computed == 0
        pd.testing.assert_frame_equal(again.results, done.results)
    with pytest.raises(ValueError, match=r"diagnosis must be one of \('region_ablation', 'cci'\)"):
        ev.evaluate(root, [_entry()], tmp_path / "x", diagnosis="CCI", show_progress=False)


def test_cli_diagnosis_option(root, reference, cci_reference, tmp_path, capsys):
    """``covar eval --diagnosis cci`` writes the rows of ``diagnosis="cci"``; the default
    those of region ablation; the printed summary says which."""
    if not zoo.weights_path("default").is_file():
        pytest.skip("the bundled default testbed weights are missing")
    for flags, want, says in (
        ([], reference, "Diagnosis: region ablation"),
        (["--diagnosis", "cci", "--n-clusters", "3"], cci_reference, "the paper's CCI (K=3)"),
    ):
        out = tmp_path / (flags[1] if flags else "default")
        argv = ["covar", "eval", str(root), "--models", "testbed", "--out", str(out),
                "--batch-size", "4", "--no-progress", "--no-plot", "--device", "cpu",
                *flags]  # fmt: skip
        assert cli_main(argv) == 0
        printed = capsys.readouterr().out
        assert says in printed
        got = pd.read_parquet(out / "results.parquet") if (out / "results.parquet").is_file() else (
            pd.read_csv(out / "results.csv"))  # fmt: skip
        drop = ["model", "model_hash"]
        pd.testing.assert_frame_equal(got.drop(columns=drop), want.results.drop(columns=drop),
                                      check_exact=False, rtol=1e-5, atol=1e-6)  # fmt: skip


def test_bad_arguments(root, tmp_path):
    with pytest.raises(ValueError, match="unknown subsets"):
        ev.evaluate(root, [_entry()], tmp_path / "x", subsets=["zoom"], show_progress=False)
    with pytest.raises(ValueError, match="non-empty"):
        ev.evaluate(root, [], tmp_path / "x", show_progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        ev.evaluate(root, [_entry()], tmp_path / "x", batch_size=0, show_progress=False)
    with pytest.raises(ValueError, match="unique"):
        ev.evaluate(root, [_entry(), _entry()], tmp_path / "x", show_progress=False)
    with pytest.raises(FileNotFoundError, match="covar.json"):
        ev.evaluate(tmp_path, [_entry()], tmp_path / "x", show_progress=False)
    with pytest.raises(ValueError, match="unknown testbed variant"):
        resolve_model("testbed:nope")
    with pytest.raises(FileNotFoundError):
        resolve_model("testbed:default:/no/such/file.safetensors")
    assert cli_main(["covar", "eval", str(tmp_path), "--out", str(tmp_path / "y")]) == 2


def test_user_model_left_as_it_was(root, tmp_path):
    model, preprocess, tok = make_testbed_model()
    model.train()
    model.visual.proj.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    entry = ModelEntry("mine", model, preprocess, tok, TESTBED_TEMPLATES)
    r = ev.evaluate(root, [entry], tmp_path / "u", subsets=["identity"], n_clusters=3,
                    plot=False, show_progress=False)  # fmt: skip
    assert r.computed == 3 and entry.model is model
    assert model.training and all(m.training for m in model.modules())
    assert not model.visual.proj.requires_grad and model.visual.conv1.weight.requires_grad
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.visual._forward_hooks and not model.visual._forward_pre_hooks


def test_unknown_open_clip_name_fails_before_any_work(root, tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        ev.evaluate(root, [_entry(), "ViT-B-99:openai"], tmp_path / "z", show_progress=False)
    assert not (tmp_path / "z").exists()


def test_open_clip_model_and_text_closeness(tmp_path):
    """A (tiny, random) open_clip ViT on 32 px composites; Fine-Er decided by text cosine."""
    from conftest import make_tiny_vit, tiny_tokenizer

    from captum_clip.testbed.shapes import normalize

    src = covar.testbed_instances(1, classes=["dots", "checks"], size=32)
    inst = [covar.Instance(f"i{k}", name, s.image, s.mask)
            for k, (s, name) in enumerate(zip(src, ["tabby cat", "golden retriever"]))]  # fmt: skip
    covar.build(tmp_path / "d", inst, covar.testbed_backgrounds(2, size=32), size=32,
                object_size=None, show_progress=False)  # fmt: skip

    def preprocess(im):
        x = torch.from_numpy(np.array(im, dtype=np.float32) / 255).permute(2, 0, 1)
        return normalize(x[None])[0]

    entry = ModelEntry("tiny-vit", make_tiny_vit(), preprocess, tiny_tokenizer())
    r = ev.evaluate(tmp_path / "d", [entry], tmp_path / "o", batch_size=8, n_clusters=3,
                    fine_threshold=0.5, plot=False, show_progress=False)  # fmt: skip
    res = r.results
    assert len(res) == 2 * 2 * 12 and set(res["class_name"]) == {"tabby cat", "golden retriever"}
    clf = ClipClassifier(entry.model, entry.tokenizer, ["tabby cat", "golden retriever"])
    emb = clf.text_embeddings
    cos = float(emb[0] @ emb[1] / (emb[0].norm() * emb[1].norm()))
    wrong = ~res["correct"]
    assert wrong.any()
    np.testing.assert_allclose(res.loc[wrong, "similarity"], cos, rtol=1e-5)
    fg = res["driver"] == "foreground"
    expected = np.where(~wrong, "correct", np.where(~fg, "BG-Er",
                        "Fine-Er" if cos > 0.5 else "FG-Er"))  # fmt: skip
    expected[wrong.to_numpy() & res["driver"].isna().to_numpy()] = "unknown"
    np.testing.assert_array_equal(res["category"].to_numpy(), expected)


def test_concept_masks_instead_of_the_manifest(root, reference, tmp_path, capsys):
    """``masks=ConceptMasks(...)``: rows diagnosed with the provider's masks (mask area as
    the provider gives it), stored as ``region_ablation+masks``; a folder holds one source."""
    import warnings

    from captum_clip.masks import ConceptMasks
    from captum_clip.testbed import BACKGROUND_NAMES

    model, preprocess, tok = make_testbed_model()
    provider = ConceptMasks((model, preprocess, tok), list(BACKGROUND_NAMES), evidence=False)
    out = tmp_path / "concepts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ev.evaluate(root, [_entry()], out, batch_size=4, masks=provider, plot=False,
                          show_progress=False).results  # fmt: skip
        clf, m, x, _, labels = _direct(root, res)
        masks = provider(x, [CLASSES[i] for i in labels.tolist()])
    assert set(res["diagnosis"]) == {"region_ablation+masks"}
    np.testing.assert_allclose(res["mask_area"], masks.flatten(1).float().mean(1).numpy())
    with pytest.raises(ValueError, match=r"--diagnosis region_ablation --masks concepts"):
        ev.evaluate(root, [_entry()], out, show_progress=False)
    argv = ["covar", "eval", str(root), "--models", "testbed", "--out", str(tmp_path / "c2"),
            "--masks", "concepts", "--no-progress", "--no-plot", "--device", "cpu"]  # fmt: skip
    assert cli_main(argv) == 2
    assert "needs --namer" in capsys.readouterr().err
