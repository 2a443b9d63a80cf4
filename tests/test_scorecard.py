"""The method scorecard (``captum_clip.benchmark.scorecard``): its trust columns against
straightforward implementations, its aggregation, and the documents' generated passages
against the committed results (no number of those passages is typed by hand)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from captum_clip.attr.cci import CCI
from captum_clip.benchmark import scorecard as sc
from captum_clip.methods import build
from captum_clip.models import ClipClassifier
from captum_clip.models.adapter import ClipAdapter
from captum_clip.testbed import load_testbed, shapes

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "scorecard_script", ROOT / "benchmarks" / "scorecard.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup():
    model, _, tok = load_testbed("default")
    clf = ClipClassifier(model, tok, list(shapes.CLASS_NAMES),
                         templates=(shapes.PROMPT_TEMPLATE.format(pattern="{}"),))  # fmt: skip
    scenes = shapes.generate_scenes(2, seed=7, rho=0.5, size=64)
    x = shapes.normalize(scenes.images)
    with torch.no_grad():
        t = clf(x).argmax(1)
    return clf, x, t


def _spearman_rows(a, b):
    return np.array([scipy.stats.spearmanr(u, v).statistic for u, v in zip(a, b)])


def test_control_closed_forms_and_model_untouched(setup):
    clf, x, t = setup
    before = copy.deepcopy(clf.model.state_dict())
    rows = sc.trust_scores(clf, x, t, sc.CONTROL, sc.ScorecardSettings(n_perturb_samples=2))
    # a map that ignores the model: the same after randomisation and for any class
    np.testing.assert_allclose(rows["randomisation"], 1.0, atol=1e-12)
    np.testing.assert_allclose(rows["random_logit"], 1.0, atol=1e-12)
    assert rows["stability"].isna().all()  # no seed
    # sparseness: the Gini index of the channel-summed edge map, written out
    from captum_clip.metrics.trust import edge_map

    m = edge_map(x).sum(1).flatten(1).double().abs()
    m = m / m.amax(1, keepdim=True) + 1e-7
    s, _ = m.sort(1)
    n = s.shape[1]
    gini = ((2 * torch.arange(1, n + 1) - n - 1) * s).sum(1) / (n * s.sum(1))
    np.testing.assert_allclose(rows["sparseness"], gini.numpy(), rtol=1e-9)
    after = clf.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_randomisation_and_stability_equal_straightforward_versions(setup):
    clf, x, t = setup
    s = sc.ScorecardSettings(n_perturb_samples=2)
    rows = sc.trust_scores(clf, x, t, "rollout", s)
    original = build("rollout", clf).attribute(x, target=t).sum(1).flatten(1).detach()
    # every vision block re-initialised, last block first, modules last first, seed 43
    twin = copy.deepcopy(clf.model)
    for block in reversed(list(ClipAdapter(twin).vision.blocks)):
        for module in reversed([m for m in block.modules() if hasattr(m, "reset_parameters")]):
            torch.manual_seed(s.randomisation_seed + 1)
            module.reset_parameters()
    twin_clf = ClipClassifier(twin, clf.tokenizer, list(clf.class_names), templates=clf.templates)
    random = build("rollout", twin_clf).attribute(x, target=t).sum(1).flatten(1).detach()
    np.testing.assert_allclose(
        rows["randomisation"], _spearman_rows(original.numpy(), random.numpy()), atol=1e-9
    )
    assert rows["randomisation"].mean() < 0.9  # the gradient method moves, the control does not
    assert rows["stability"].isna().all()
    assert (rows["sensitivity"] > 0).all()

    cci = sc.trust_scores(clf, x, t, "cci", s)
    maps = [CCI(clf, random_state=k).attribute(x, target=t).sum(1).flatten(1).numpy()
            for k in s.stability_seeds]  # fmt: skip
    pairs = [_spearman_rows(maps[i], maps[j]) for i in range(3) for j in range(i + 1, 3)]
    np.testing.assert_allclose(cci["stability"], np.mean(pairs, 0), atol=1e-9)
    assert ((cci["stability"] > 0) & (cci["stability"] <= 1)).all()


def test_run_scorecard_rows_are_the_harness_and_trust_means(setup):
    from captum_clip.benchmark import run_testbed
    from captum_clip.benchmark.methods import MethodSettings
    from captum_clip.testbed import causal_labels

    clf, _, _ = setup
    s = sc.ScorecardSettings(n=2, seeds=(5,), n_perturb_samples=2)
    table = sc.run_scorecard(s, variants=["default"], methods=["maskclip"])
    assert table["method"].tolist() == ["maskclip", sc.CONTROL]
    (res,) = run_testbed(["default"], n=2, seed=5, methods=["MaskCLIP", "edge-map control"],
                         method_settings=MethodSettings(ig_steps=50))  # fmt: skip
    summary = res.summary()
    for name, label in (("maskclip", "MaskCLIP"), (sc.CONTROL, "edge-map control")):
        row = table.set_index("method").loc[name]
        for col in ("deletion_prob", "insertion_prob", "road", "pointing", "mask_share"):
            assert row[col] == pytest.approx(summary.loc[label, col], abs=1e-9)
    scenes = shapes.generate_scenes(2, seed=5, rho=0.5, size=64)
    x = shapes.normalize(scenes.images)
    targets = causal_labels(clf, scenes).target
    torch.manual_seed(5)
    trust = sc.trust_scores(clf, x, targets, "maskclip", s)
    row = table.set_index("method").loc["maskclip"]
    for col in ("randomisation", "random_logit", "sensitivity", "sparseness"):
        assert row[col] == pytest.approx(trust[col].mean(), abs=1e-9)
    with pytest.raises(ValueError, match="unknown method 'lrp'"):
        sc.run_scorecard(s, variants=["default"], methods=["lrp"])


def test_summarise_is_mean_and_sd_over_seeds():
    table = pd.DataFrame({
        "model": ["m"] * 4, "seed": [1, 2, 1, 2], "method": ["a", "a", "b", "b"],
        "deletion_prob": [0.2, 0.4, 0.1, 0.1], "stability": [math.nan, math.nan, 0.5, 0.7],
    })  # fmt: skip
    out = sc.summarise(table)
    assert out.loc[("m", "a"), "deletion_prob"] == pytest.approx(0.3)
    assert out.loc[("m", "a"), "deletion_prob_sd"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert out.loc[("m", "b"), "stability"] == pytest.approx(0.6)
    assert math.isnan(out.loc[("m", "a"), "stability"])


def test_replace_blocks():
    text = "a\n<!-- scorecard:x -->\nold\n<!-- /scorecard:x -->\nb\n<!-- scorecard:y -->\nkeep\n<!-- /scorecard:y -->\n"
    out = sc.replace_blocks(text, {"x": "new"})
    assert out == text.replace("old", "new")
    with pytest.raises(ValueError, match="1 scorecard passage"):
        sc.replace_blocks("<!-- scorecard:x -->\nno end\n", {"x": "new"})


def test_documents_hold_the_passages_written_from_the_results():
    """README and docs claims about which method leads are generated from the committed
    scorecard: re-rendering them from ``scorecard.json`` changes nothing."""
    script = _script()
    data = json.loads((ROOT / "benchmarks" / "results" / "scorecard.json").read_text())
    blocks = sc.render_blocks(
        script._summary_from_json(data), len(data["settings"]["seeds"]), data["settings"]["n"]
    )
    used = set()
    for rel in script.DOCUMENTS:
        text = (ROOT / rel).read_text()
        names = re.findall(r"<!-- scorecard:([\w-]+) -->", text)
        assert names, f"{rel} has no generated scorecard passage"
        used.update(names)
        assert sc.replace_blocks(text, blocks) == text, (
            f"{rel}: run benchmarks/scorecard.py --docs-only"
        )
    assert used == set(blocks)
    results = (ROOT / "benchmarks" / "results" / "scorecard.md").read_text()
    assert results == script.markdown(data, data["command"])
    # the guide's own prose holds no measured number: those are all in the passages
    guide = (ROOT / "docs" / "choosing.md").read_text()
    prose = re.sub(r"<!-- scorecard:([\w-]+) -->.*?<!-- /scorecard:\1 -->", "", guide, flags=re.S)
    prose = re.sub(r"`[^`]*`", "", prose)
    assert not re.findall(r"\d\.\d", prose), "numbers in docs/choosing.md outside the passages"


def test_trust_scores_bad_input(setup):
    clf, x, t = setup
    with pytest.raises(ValueError, match="unknown method 'rolout'.*did you mean 'rollout'"):
        sc.trust_scores(clf, x, t, "rolout")
    with pytest.raises(
        ValueError, match=r"images must be a \(B, 3, H, W\) tensor, got \(3, 64, 64\)"
    ):
        sc.trust_scores(clf, x[0], t, "rollout")
    with pytest.raises(ValueError, match="target"):
        sc.trust_scores(clf, x, torch.tensor([0, 99]), "rollout")
