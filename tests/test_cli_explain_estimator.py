"""``captum-clip explain --estimator``: the printed region values are CCI's, bad K exits 2."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from captum_clip.attr import CCI, ESTIMATORS, _regions
from captum_clip.cli import build_parser, main
from captum_clip.commands import _common, explain
from captum_clip.storage import read_image
from captum_clip.testbed import shapes

LABELS = "dots,checks,solid"


@pytest.fixture
def scene(tmp_path):
    img = tmp_path / "scene.png"
    image = shapes.generate_scenes(1, seed=1, size=64).images[0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(img)
    return img


def _regions_printed(out: str) -> list[tuple[float, float, float]]:
    """``(weight, value, area)`` of every printed region line, in printed order."""
    rows = []
    for line in out.splitlines():
        if line.strip().startswith("region "):
            words = line.split()
            rows.append(
                tuple(float(words[words.index(w) + 1]) for w in ("weight", "value", "area"))
            )
    return rows


def test_choices_and_limits_are_the_librarys():
    assert explain.ESTIMATORS == ESTIMATORS and explain.ESTIMATORS[0] == "occlusion"
    assert explain.MAX_EXACT_K == _regions.MAX_EXACT_K
    assert explain.BUDGET == _regions.DEFAULT_BUDGET
    assert explain.SAMPLED == _regions.BUDGETED
    assert set(explain.VALUE_MEANING) == set(ESTIMATORS)
    action = next(
        a for a in build_parser()._subparsers._group_actions[0].choices["explain"]._actions
        if a.dest == "estimator"
    )  # fmt: skip
    assert action.default is None and tuple(action.choices) == ESTIMATORS  # None: CCI(clf)'s
    assert "occlusion is the paper's" in action.help


@pytest.mark.parametrize("estimator", ["sufficiency", "occlusion", None])  # None: CCI(clf)'s
def test_printed_regions_equal_cci_with_that_estimator(scene, tmp_path, capsys, estimator):
    k = 5
    argv = ["explain", str(scene), "--labels", LABELS, "--model", "testbed"]
    argv += ["--n-clusters", str(k), "--out", str(tmp_path / "fig.png")]
    argv += ["--estimator", estimator] if estimator else []
    assert main(argv) == 0
    out = capsys.readouterr().out
    estimator = estimator or "sufficiency"
    assert f"CCI {estimator}, K={k}, highest first; value = " in out
    assert explain.VALUE_MEANING[estimator] in out
    printed = _regions_printed(out)
    # the same classifier, image and target, through the library
    args = build_parser().parse_args(argv)
    clf, loaded, _ = _common.classifier(args, LABELS.split(","))
    x = loaded.preprocess(read_image(scene))[None]
    with torch.no_grad():
        target = int(clf(x).argmax(1))
    cci = CCI(clf, n_clusters=k, estimator=estimator)
    assert cci.estimator == estimator and cci.n_clusters == (k,)
    _, res = cci.attribute(x, target=target, return_clusters=True)
    weights, values = res.weights[0], res.values[0]
    n = int(torch.isfinite(weights).sum())
    assert 3 <= n <= k and len(printed) == n
    order = torch.nan_to_num(weights, nan=-1e9).argsort(descending=True)[:n]
    for (w, v, area), c in zip(printed, order.tolist()):
        assert w == pytest.approx(float(weights[c]), abs=6e-4)
        assert v == pytest.approx(float(values[c]), abs=6e-4)
        assert area == pytest.approx(float((res.labels[0] == c).float().mean()), abs=6e-3)
    if estimator == "sufficiency":  # v({k}) - v(∅), not the paper's drop when hidden
        paper = CCI.default_for(clf, k).attribute(x, target=target, return_clusters=True)[1]
        assert torch.equal(paper.labels, res.labels)
        assert not torch.allclose(torch.nan_to_num(paper.values), torch.nan_to_num(res.values))


@pytest.mark.parametrize(
    "estimator, k, message",
    [
        ("shapley", 11, "--estimator shapley evaluates all 2^K coalitions and allows "
                        "--n-clusters <= 10, got 11"),
        ("banzhaf", 12, "allows --n-clusters <= 10, got 12"),
        ("sampled_shapley", 64, "allows --n-clusters <= 63, got 64"),
        ("owen", 100, "--estimator owen samples within 63 masked forwards"),
    ],
)  # fmt: skip
def test_too_many_clusters_is_one_error_line(scene, tmp_path, capsys, estimator, k, message):
    argv = ["explain", str(scene), "--labels", LABELS, "--model", "testbed"]
    argv += ["--estimator", estimator, "--n-clusters", str(k), "--out", str(tmp_path / "f.png")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("captum-clip explain: error: ")
    assert message in lines[0]
    assert not (tmp_path / "f.png").exists() and "explaining" not in captured.out


def test_unknown_estimator_and_gradcam_warning(scene, tmp_path, capsys):
    base = ["explain", str(scene), "--labels", LABELS, "--model", "testbed"]
    with pytest.raises(SystemExit) as err:
        main(base + ["--estimator", "lime"])
    assert err.value.code == 2 and "invalid choice: 'lime'" in capsys.readouterr().err
    fig = tmp_path / "g.png"
    assert (
        main(base + ["--method", "gradcam", "--estimator", "sufficiency", "--out", str(fig)]) == 0
    )
    captured = capsys.readouterr()
    assert "warning: --estimator only applies to --method cci" in captured.err
    assert "value = " not in captured.out and fig.exists()
