"""The CLI conventions of docs/cli.md: outputs only under the working directory, one
``wrote PATH`` line per file, help with defaults, exit codes, fast offline failure,
readable tables and marked figures."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import captum_clip
from captum_clip.cli import build_parser, main
from captum_clip.commands import _common
from captum_clip.testbed import shapes

REPO = Path(captum_clip.__file__).resolve().parents[1]
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints",
             ".venv", ".venv-ci"}  # fmt: skip


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _scene_files(folder: Path, n: int = 2) -> list[Path]:
    scenes = shapes.generate_scenes(n, seed=2, size=64)
    paths = []
    for i, img in enumerate(scenes.images):
        d = folder / f"{int(scenes.labels[i]) + 1} {shapes.CLASS_NAMES[int(scenes.labels[i])]}"
        d = d / ("common-x" if i % 2 == 0 else "counter-y")
        d.mkdir(parents=True, exist_ok=True)
        paths.append(d / f"s{i}.png")
        Image.fromarray((img.permute(1, 2, 0) * 255).byte().numpy()).save(paths[-1])
    return paths


def _all_parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    yield prefix or "captum-clip", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{prefix} {name}".strip())


def test_every_option_has_help_and_shows_its_default():
    for name, parser in _all_parsers(build_parser()):
        if name == "captum-clip":
            continue
        assert issubclass(parser.formatter_class, _common.HelpFormatter), name
        assert parser.description, f"{name} has no description"
        formatter = parser.formatter_class(name)
        for action in parser._actions:
            if not action.option_strings or action.dest in ("help", "version"):
                continue
            text = formatter._get_help_string(action)
            assert action.help and action.help.strip(), f"{name} {action.option_strings}"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "(default:" in text, f"{name} {action.option_strings}: {text}"
            if "--device" in action.option_strings:
                assert action.default == "auto", name
        assert "shared 2-core" not in parser.format_help()


def test_commands_without_subcommand_exit_2_with_usage(capsys):
    assert main([]) == 2
    assert "usage: captum-clip" in capsys.readouterr().err
    for group in ("covar", "diagnose", "faithfulness"):
        assert main([group]) == 2
        err = capsys.readouterr().err
        assert "usage:" in err and "error: name a subcommand" in err


def test_gradcam_with_n_clusters_warns(tmp_path, capsys):
    (img,) = _scene_files(tmp_path, 1)
    argv = ["explain", str(img), "--labels", "dots,checks", "--method", "gradcam",
            "--n-clusters", "3", "--out", str(tmp_path / "g.png"), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert "warning: --n-clusters only applies to --method cci" in capsys.readouterr().err


def test_diagnosis_option_region_ablation_by_default_cci_on_request(tmp_path, capsys):
    """``diagnose testbed``: the default (region ablation) and ``--diagnosis cci`` (the
    paper's CCI) differ in the header, the rows' meanings, the caveat and the table's
    columns, as docs/diagnosis.md says; the CCI table is diagnose(method=CCI K=2)'s."""
    import numpy as np
    import pandas as pd

    from captum_clip.attr.cci import CCI
    from captum_clip.commands import _diagnosis
    from captum_clip.diagnosis import METHODS, diagnose
    from captum_clip.models import ClipClassifier, load_clip

    assert _diagnosis.DIAGNOSES == METHODS
    base = ["diagnose", "testbed", "--n", "6", "--no-progress", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "ra.csv")]) == 0
    ra = capsys.readouterr()
    assert "region ablation (the object, then the background hidden) decides" in ra.out
    assert "hiding the background lowers the logit more than hiding the object" in ra.out
    assert "mean IoU" not in ra.out and "fg_share >= 0.5" not in ra.out
    assert "intervention on this model's inputs" in ra.out and ra.err == ""
    argv = [*base, "--diagnosis", "cci", "--n-clusters", "2", "--out", str(tmp_path / "c.csv")]
    assert main(argv) == 0
    cci = capsys.readouterr()
    assert "CCI (K=2) explains the predicted class, tau=0.5" in cci.out
    assert "| foreground-driven |" in cci.out and "fg_share >= 0.5" in cci.out
    assert "mean IoU" in cci.out and "threshold on an attribution share" in cci.out
    assert cci.err == ""
    t_ra, t_cci = pd.read_csv(tmp_path / "ra.csv"), pd.read_csv(tmp_path / "c.csv")
    assert {"fg_effect", "bg_effect"} <= set(t_ra) and t_ra["iou"].isna().all()
    assert not {"fg_effect", "bg_effect"} & set(t_cci) and t_cci["iou"].notna().all()
    model, _, tok = load_clip("testbed", variant="shortcut")
    clf = ClipClassifier(model, tok, list(shapes.CLASS_NAMES), templates=("a photo of {}",))
    scenes = shapes.generate_scenes(6, seed=0, rho=0.5, size=64)
    d = diagnose(clf, shapes.normalize(scenes.images), scenes.masks, scenes.labels,
                 method=CCI.default_for(clf, 2))  # fmt: skip
    np.testing.assert_allclose(t_cci["fg_share"], d.table["fg_share"], rtol=1e-5)
    assert t_cci["driver"].tolist() == d.table["driver"].tolist()
    # options the chosen diagnosis does not use: a warning, not an error
    assert main([*base, "--tau", "0.3", "--n-clusters", "3"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: --n-clusters/--tau only apply to --diagnosis cci (the diagnosis is "
        "region_ablation)"
    ]
    with pytest.raises(SystemExit) as info:
        main([*base, "--diagnosis", "paper"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --diagnosis: invalid choice: 'paper'" in err
    assert "'region_ablation', 'cci'" in err


def test_offline_pretrained_tag_fails_at_once_with_cli_advice(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    from captum_clip.models import load_clip
    from captum_clip.models.spec import PretrainedUnavailableError

    (img,) = _scene_files(tmp_path, 1)
    argv = ["explain", str(img), "--labels", "dots,checks", "--model", "ViT-B-32",
            "--pretrained", "openai", "--out", str(tmp_path / "f.png")]  # fmt: skip
    before = constants.HF_HUB_OFFLINE
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: the offline switch
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HF_HUB_OFFLINE is set" in err[0]
    assert "--model ViT-B-32:/path/to/checkpoint.pt" in err[0] and "checkpoint='" not in err[0]
    assert constants.HF_HUB_OFFLINE == before  # the cache-only switch was scoped
    with pytest.raises(PretrainedUnavailableError) as info:  # the Python API: Python advice
        load_clip("ViT-B-32:openai")
    assert "load_clip('ViT-B-32', checkpoint=" in str(info.value) and "--model" not in str(
        info.value
    )


def test_offline_check_looks_in_the_caches_before_building(tmp_path, monkeypatch):
    import open_clip

    from captum_clip.models.errors import PretrainedUnavailableError
    from captum_clip.models.pretrained import create_pretrained, weights_cached

    monkeypatch.setenv("HOME", str(tmp_path))  # open_clip's URL cache: ~/.cache/clip
    assert weights_cached("ViT-B-32", "openai") is False
    url = open_clip.get_pretrained_cfg("ViT-B-32", "openai")["url"]
    (tmp_path / ".cache" / "clip").mkdir(parents=True)
    (tmp_path / ".cache" / "clip" / url.split("/")[-1]).write_bytes(b"")
    assert weights_cached("ViT-B-32", "openai") is True
    assert weights_cached("ViT-B-32", "laion2b_s34b_b79k") is False

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built although its weights cannot come")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_build)
    with pytest.raises(PretrainedUnavailableError, match="not in the local cache"):
        create_pretrained("ViT-B-32", "laion2b_s34b_b79k")


def test_unreachable_hub_is_probed_once(monkeypatch, no_network, capsys, tmp_path):
    from conftest import no_network as guard

    from captum_clip.models.pretrained import hub_unreachable_reason

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://10.255.255.1")  # an IP: no DNS involved
    guard.expected = True  # the probe's connection is expected (and refused by the guard)
    try:
        reason = hub_unreachable_reason()
        (img,) = _scene_files(tmp_path, 1)
        argv = ["explain", str(img), "--labels", "a,b", "--model", "RN50:openai"]
        assert main(argv) == 2
    finally:
        guard.expected = False
    assert reason is not None and "10.255.255.1 is unreachable" in reason
    assert len(no_network) == 2  # one connect per load, no retries
    no_network.clear()  # expected and refused: nothing for the guard to report
    assert "is unreachable" in capsys.readouterr().err


def test_interactions_import_silences_only_the_jit_warning():
    code = (
        "import warnings, torch; import captum_clip.attr.interactions;"
        "torch.func.jvp(lambda x: 2 * x, (torch.ones(1),), (torch.ones(1),));"  # no warning
        "assert not any('is deprecated' in str(f[1]) for f in warnings.filters), 'global'"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", code],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_markdown_table():
    text = _common.markdown_table(
        [{"a": "x", "b": 0.123456, "c": 3}, {"a": "y", "b": float("nan"), "c": 4}]
    )
    assert text.splitlines() == [
        "| a | b | c |",
        "| --- | ---: | ---: |",
        "| x | 0.123 | 3 |",
        "| y |  | 4 |",
    ]


def test_every_command_writes_only_under_the_working_directory(tmp_path, monkeypatch, capsys):
    """Default outputs from a temporary working directory: repository and package unchanged,
    and every file written is announced by one ``wrote PATH`` line inside that directory."""
    inputs = tmp_path / "inputs"
    scene, _ = _scene_files(inputs / "ca")
    folder = inputs / "folder"
    (folder / "dots").mkdir(parents=True)
    Image.open(scene).save(folder / "dots" / "a.png")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("CAPTUM_CLIP_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    before = _snapshot(REPO)
    fast = ["--n-steps", "1", "--road-percentages", "50", "--methods", "CCI", "--cci-k", "2",
            "--no-progress", "--device", "cpu"]  # fmt: skip
    runs = [
        ["demo", "--n", "1", "--n-clusters", "2"],
        ["explain", str(scene), "--labels", "dots,checks", "--n-clusters", "2"],
        ["interactions", str(scene), "a photo of dots", "--n-steps", "1"],
        ["diagnose", "testbed", "--n", "2", "--no-progress", "--out", "diag.csv"],
        ["counteranimals", str(inputs / "ca"), "--model", "testbed", "--no-progress",
         "--out", "ca.parquet"],
        ["faithfulness", "testbed", "--variants", "default", "--n", "1", *fast],
        ["faithfulness", "folder", str(folder), "--model", "testbed", "--classes",
         *shapes.CLASS_NAMES, "--out", "ff/report.md", "--csv", "ff/rows.csv", *fast],
        ["grounding", "testbed", "--model", "testbed:default", "--n", "1", "--seeds", "0",
         "--n-steps", "1", "--examples", "1", "--out", "gr", "--no-progress"],
        ["covar", "build", "--out", "cv", "--n-per-class", "1", "--n-backgrounds", "1",
         "--classes", "dots", "--no-progress"],
        ["covar", "eval", "cv", "--limit", "2", "--batch-size", "2", "--out", "cv_eval",
         "--no-progress"],
    ]  # fmt: skip
    announced = set()
    for argv in runs:
        assert main(argv) == 0, argv
        lines = capsys.readouterr().out.splitlines()
        wrote = [
            line[len("wrote ") :].split(" (")[0] for line in lines if line.startswith("wrote ")
        ]
        assert wrote, argv
        assert len(wrote) == len(set(wrote)), f"{argv}: a file announced twice"
        for path in wrote:
            full = (work / path).resolve()
            assert full.is_relative_to(work) and full.exists(), (argv, path)
            announced.add(full)
    assert _snapshot(REPO) == before  # repository and package unchanged
    written = {p.resolve() for p in work.rglob("*") if p.is_file()}
    folders = [work / "cv", work / "cv_eval"]  # a dataset; covar eval's resume state
    loose = {p for p in written if not any(p.is_relative_to(f) for f in folders)}
    assert loose <= announced, loose - announced  # every other file announced
    assert (work / "cv_eval" / "covar_eval.png") in announced
    expected_defaults = {
        "captum_clip_demo/demo.png",
        "explain.png",
        "interactions.png",
        "captum_clip_faithfulness/faithfulness.md",
    }
    assert {str(p.relative_to(work)) for p in announced} >= expected_defaults


@pytest.mark.parametrize("random", [False, True])
def test_demo_figure_marks_target_failures_and_random_weights(random, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from captum_clip.testbed import zoo
    from captum_clip.viz.marks import figure_texts

    if random:  # as if the bundled weights were missing: the demo falls back to random init
        monkeypatch.setattr(zoo, "weights_path", lambda variant: tmp_path / "none.safetensors")
    figures = []
    real = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda self, *a, **k: figures.append(self) or real(self, *a, **k)
    )
    assert main(["demo", "--n", "2", "--n-clusters", "2", "--out", str(tmp_path / "d")]) == 0
    (fig,) = figures
    texts = figure_texts(fig)
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    assert "Maps explain the TRUE class" in " ".join(texts)
    titles = [t for t in texts if t.startswith("true '")]
    assert len(titles) == 2 and all("(p=" in t and "predicted '" in t for t in titles)
    assert any("RANDOM WEIGHTS" in t for t in texts) == random
    red = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_color() == "red"]
    for ax_title in (ax.title for ax in fig.axes if ax.get_title().startswith("true '")):
        wrong = ax_title.get_text().split("\n")[0][5:] != ax_title.get_text().split("\n")[1][10:]
        assert (ax_title.get_color() == "red") == wrong  # misclassified rows in red
    assert all(t.startswith(("misclassified", "CCI top region")) for t in red)


def test_offline_failure_does_not_even_import_open_clip(tmp_path):
    """The offline path fails before the slow ``import open_clip`` (seconds of imports)."""
    (img,) = _scene_files(tmp_path, 1)
    code = (
        "import sys; from captum_clip.cli import main;"
        f"rc = main(['explain', {str(img)!r}, '--labels', 'a,b', '--model', 'ViT-B-32:openai']);"
        "assert rc == 2, rc; assert 'open_clip' not in sys.modules, 'open_clip imported'"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "--model ViT-B-32:/path/to/checkpoint.pt" in out.stderr


def test_registry_without_import_matches_open_clip():
    import open_clip

    from captum_clip.models import registry

    light = registry._registry()  # open_clip/pretrained.py under a private package name
    assert light is not open_clip.pretrained
    for name in ("ViT-B-32", "RN50", "ViT-L-14"):
        assert light.list_pretrained_tags_by_model(name) == open_clip.list_pretrained_tags_by_model(
            name
        )
        for tag in open_clip.list_pretrained_tags_by_model(name):
            assert light.get_pretrained_cfg(name, tag) == open_clip.get_pretrained_cfg(name, tag)
    stems = {p.stem for p in (registry._package_dir() / "model_configs").glob("*.json")}
    assert {"ViT-B-32", "RN50"} <= stems <= set(open_clip.list_models())
