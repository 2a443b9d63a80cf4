"""One model-spec grammar in every subcommand: testbed:VARIANT, NAME (random), NAME:FILE.

``ViT-B-32`` without a tag is an open_clip architecture with random weights (nothing is
downloaded: the network guard of conftest fails any attempt); ``ViT-B-32:<file>`` loads a
checkpoint this module writes. Each command runs on 1-2 images to stay fast.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from captum_clip.cli import main
from captum_clip.models.spec import parse_model_spec
from captum_clip.testbed import shapes

LABELS = ["dots", "checks", "solid"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Two scene images (also as a class folder), a covar root and a ViT-B-32 checkpoint."""
    import open_clip

    from captum_clip import covar

    root = tmp_path_factory.mktemp("specs")
    scenes = shapes.generate_scenes(2, seed=4, size=64)
    for i, img in enumerate(scenes.images):
        folder = root / "folder" / shapes.CLASS_NAMES[int(scenes.labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        pic = Image.fromarray((img.permute(1, 2, 0) * 255).byte().numpy())
        pic.save(folder / f"s{i}.png")
        pic.save(root / f"scene{i}.png")
    inst = covar.testbed_instances(1, size=64, seed=0, classes=["dots", "checks"])
    covar.build(root / "covar", inst, covar.testbed_backgrounds(1, size=64, seed=0), size=64,
                show_progress=False)  # fmt: skip
    torch.manual_seed(123)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    sd = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(sd, root / "vitb32.pt")
    return root


def _argv(command: str, spec: str, work, out) -> list[str]:
    img, dev = str(work / "scene0.png"), ["--device", "cpu"]
    if command == "explain":
        return ["explain", img, "--labels", ",".join(LABELS), "--model", spec,
                "--n-clusters", "2", "--out", str(out / "e.png"), *dev]  # fmt: skip
    if command == "interactions":
        return ["interactions", img, "a photo of dots", "--model", spec, "--n-steps", "1",
                "--out", str(out / "i.png"), *dev]  # fmt: skip
    if command == "diagnose":
        return ["diagnose", "testbed", "--model", spec, "--n", "1", "--no-progress",
                *dev]  # fmt: skip
    if command == "faithfulness":
        return ["faithfulness", "folder", str(work / "folder"), "--model", spec,
                "--classes", *shapes.CLASS_NAMES, "--methods", "CCI", "--cci-k", "2",
                "--n-steps", "1", "--road-percentages", "50", "--max-images", "1",
                "--out", str(out / "f.md"), "--no-progress", *dev]  # fmt: skip
    return ["covar", "eval", str(work / "covar"), "--models", spec, "--limit", "1",
            "--batch-size", "1", "--no-progress", "--out", str(out / "c"), *dev]  # fmt: skip


#: What each command's figure must say about its target (checked on the Figure object).
TARGET_TEXT = {
    "explain": ("explains predicted '", "(p="),
    "interactions": ("caption 'a photo of dots'", "score"),
    "faithfulness": ("the maps explain the predicted class",),
    "covar": ("covar eval:",),
}


@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib Figure saved during the test (the objects themselves)."""
    from matplotlib.figure import Figure

    figures = []
    real = Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def check_figure(fig, command: str, random: bool) -> None:
    """Colour bar or legend, the target in a title, RANDOM WEIGHTS exactly when random."""
    from captum_clip.viz.marks import figure_texts

    scale = any(ax.get_label() == "<colorbar>" or ax.get_legend() for ax in fig.axes)
    assert scale, f"{command}: no colour bar or legend"
    texts = " | ".join(figure_texts(fig))
    for needle in TARGET_TEXT.get(command, ()):
        assert needle in texts, f"{command}: {needle!r} not in {texts!r}"
    assert ("RANDOM WEIGHTS" in texts) == random, texts


@pytest.mark.parametrize("kind", ["testbed", "random", "checkpoint"])
@pytest.mark.parametrize(
    "command", ["explain", "interactions", "diagnose", "faithfulness", "covar"]
)
def test_every_command_takes_every_spec(command, kind, work, tmp_path, capsys, saved_figures):
    spec = {
        "testbed": "testbed:shortcut",
        "random": "ViT-B-32",
        "checkpoint": f"ViT-B-32:{work / 'vitb32.pt'}",
    }[kind]
    assert main(_argv(command, spec, work, tmp_path)) == 0
    captured = capsys.readouterr()
    assert ("RANDOM WEIGHTS" in captured.err) == (kind == "random")
    wrote = [line[6:] for line in captured.out.splitlines() if line.startswith("wrote ")]
    assert all(p.startswith(str(tmp_path)) for p in wrote)
    if command != "diagnose":
        assert wrote, captured.out
        assert len(saved_figures) >= 1
    for fig in saved_figures:
        check_figure(fig, command, kind == "random")


def test_checkpoint_spec_loads_the_saved_weights(work, capsys):
    """explain's printed probabilities are those of the checkpoint, not of a fresh init."""
    from captum_clip.models import ClipClassifier, load_clip

    spec = f"ViT-B-32:{work / 'vitb32.pt'}"
    assert main(_argv("explain", spec, work, work / "out") + ["--method", "gradcam"]) == 0
    printed = {
        line.split("p=")[0].strip(): float(line.split("p=")[1])
        for line in capsys.readouterr().out.splitlines()
        if "p=" in line and not line.startswith("wrote")
    }
    loaded = load_clip(spec)
    model, preprocess, tok = loaded
    assert not loaded.random_weights
    clf = ClipClassifier(model, tok, LABELS)
    with torch.no_grad():
        p = clf(preprocess(Image.open(work / "scene0.png").convert("RGB"))[None]).softmax(1)[0]
    assert {k: round(v, 3) for k, v in zip(LABELS, p.tolist())} == pytest.approx(printed)
    fresh, _, _ = load_clip("ViT-B-32")
    ref = ClipClassifier(fresh, tok, LABELS)
    with torch.no_grad():
        q = ref(preprocess(Image.open(work / "scene0.png").convert("RGB"))[None]).softmax(1)[0]
    assert not torch.allclose(p, q, atol=1e-3)


def test_grammar():
    assert parse_model_spec("testbed").variant == "default"
    assert parse_model_spec("testbed:shortcut").variant == "shortcut"
    s = parse_model_spec("ViT-B-32")
    assert (s.family, s.pretrained, s.checkpoint, s.random_weights) == (
        "open_clip",
        None,
        None,
        True,
    )
    s = parse_model_spec("ViT-B-32:openai")
    assert (s.pretrained, s.random_weights) == ("openai", False)
    assert parse_model_spec("ViT-B-32", pretrained="openai").pretrained == "openai"  # alias
    assert parse_model_spec("hf:./folder").family == "hf"
    assert parse_model_spec("testbed").templates == ("a photo of {}",)
    assert parse_model_spec("ViT-B-32").templates == ("a photo of a {}.",)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("ViT-B-33", "Did you mean ViT-B-32"),
        ("ViT-B-32:no-such-tag", "known tags"),
        ("ViT-B-32:/no/such/file.pt", "not found"),
        ("testbed:nope", "known variants"),
        ("ViT-B-32:", "ends in ':'"),
    ],
)
def test_bad_specs_are_one_error_line(spec, match, tmp_path, capsys):
    argv = ["explain", str(tmp_path / "x.png"), "--labels", "a", "--model", spec]
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("captum-clip explain: error:") and match in err[0]


def test_old_flags_are_aliases(work, tmp_path, capsys):
    ckpt = str(work / "vitb32.pt")
    argv = _argv("explain", "ViT-B-32", work, tmp_path)
    assert main(argv + ["--checkpoint", ckpt, "--method", "gradcam"]) == 0
    assert "RANDOM WEIGHTS" not in capsys.readouterr().err
    assert main(_argv("explain", f"ViT-B-32:{ckpt}", work, tmp_path) + ["--pretrained", "x"]) == 2
    assert "already names its weights" in capsys.readouterr().err


def test_hub_tokenizer_offline_fails_fast_and_tokenizer_dir_is_used(
    work, tmp_path, capsys, monkeypatch
):
    """SigLIP's tokenizer is a hub download: offline the command fails before building the
    model, naming --tokenizer; with --tokenizer DIR the spec loads with that tokenizer."""
    import time

    from captum_clip.commands import _common
    from captum_clip.models import registry

    spec = "ViT-B-16-SigLIP"
    assert registry.hub_tokenizer(spec) and parse_model_spec(spec).hub_tokenizer
    assert parse_model_spec("ViT-B-32").hub_tokenizer == ""
    t0 = time.perf_counter()
    assert main(_argv("explain", spec, work, tmp_path)) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - t0 < 60  # no retries, no model built
    assert err.count("error:") == 1 and "--tokenizer" in err
    calls = []

    class Spec:  # records what load_model hands to the spec
        text, hub_tokenizer = spec, "timm/ViT-B-16-SigLIP"

        def load(self, device, tokenizer=None):
            calls.append(tokenizer)
            raise ValueError("stop here")

    args = _common.argparse.Namespace(model=spec, device="cpu", tokenizer="tok/")
    monkeypatch.setattr(_common, "model_spec", lambda a: Spec())
    with pytest.raises(ValueError, match="stop here"):
        _common.load_model(args)
    Spec.hub_tokenizer = ""  # a model with its own tokenizer keeps it
    with pytest.raises(ValueError, match="stop here"):
        _common.load_model(args)
    assert calls == ["tok/", None]
