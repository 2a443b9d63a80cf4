"""``captum-clip demo`` and ``captum-clip explain`` run in-process, offline."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from captum_clip.cli import main
from captum_clip.commands.demo import load_demo_model
from captum_clip.testbed import shapes


def _rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| scene") and "---" not in line
    ]


def test_demo_writes_figure_and_table(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--n", "3", "--n-clusters", "4"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    rows = _rows(out)
    assert len(rows) == 4 and rows[-1][0] == "mean"
    truth = shapes.generate_scenes(3, seed=0, size=64).labels.tolist()
    assert [r[1] for r in rows[:3]] == [shapes.CLASS_NAMES[c] for c in truth]
    for r in rows[:3]:
        assert r[2] in shapes.CLASS_NAMES
        assert all(0.0 <= float(v) <= 1.0 for v in r[3:])
    *_, warning = load_demo_model()
    assert ("RANDOM WEIGHTS" in captured.err) == (warning is not None)


@pytest.mark.parametrize("method", ["cci", "gradcam"])
def test_explain_writes_figure(tmp_path, capsys, method):
    img = tmp_path / "scene.png"
    scene = shapes.generate_scenes(1, seed=1, size=48).images[0]
    Image.fromarray((scene.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(img)
    fig = tmp_path / "out" / "fig.png"
    argv = ["explain", str(img), "--labels", "dots,checks,solid", "--model", "testbed"]
    argv += ["--method", method, "--target", "checks", "--n-clusters", "3", "--out", str(fig)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert fig.stat().st_size > 5_000
    assert "class 'checks'" in out and f"wrote {fig}" in out
    if method == "cci":
        weights = [
            float(line.split("weight")[1].split()[0])
            for line in out.splitlines()
            if "weight" in line
        ]
        assert 1 <= len(weights) <= 3 and sum(abs(w) for w in weights) == pytest.approx(1, abs=2e-3)


def test_explain_errors(tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(torch.zeros(40, 40, 3, dtype=torch.uint8).numpy()).save(img)
    base = ["explain", str(img), "--model", "testbed", "--out", str(tmp_path / "f.png")]
    assert main(base + ["--labels", "cat,dog", "--target", "bird"]) == 2
    assert "not one of the labels" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "missing.png"), "--labels", "a", "--out", "f.png"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(base + ["--labels", " , "]) == 2
