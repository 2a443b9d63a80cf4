"""``captum-clip explain --method NAME`` for every registered method, and its refusals.

On the bundled testbed every name runs and the figure shows exactly the library's map
(``captum_clip.methods.build`` + ``pixel_map`` with the Python defaults). On a tower
without attention (a tiny ``ModifiedResNet``) the attention methods are refused with
one error line that names the reason and the methods that run; those do run on it.
"""

from __future__ import annotations

import types

import pytest
import torch
from conftest import make_tiny_resnet, tiny_tokenizer
from PIL import Image

from captum_clip.cli import build_parser, main
from captum_clip.commands import _common
from captum_clip.methods import METHOD_NAMES, METHODS, build, pixel_map, refusal, runs_on
from captum_clip.models import ClipClassifier
from captum_clip.storage import read_image
from captum_clip.testbed import shapes
from captum_clip.viz import figures

LABELS = "dots,checks,solid"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    img = tmp_path_factory.mktemp("scene") / "scene.png"
    image = shapes.generate_scenes(1, seed=1, size=64).images[0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(img)
    return img


@pytest.fixture
def shown(monkeypatch):
    """What ``explain`` passes to its figure."""
    calls = []
    real = figures.explain_figure

    def spy(image, attribution, **kw):
        calls.append((attribution, kw))
        return real(image, attribution, **kw)

    monkeypatch.setattr(figures, "explain_figure", spy)
    return calls


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_registered_method_explains_the_testbed(scene, tmp_path, capsys, shown, name):
    out = tmp_path / f"{name}.png"
    argv = ["explain", str(scene), "--labels", LABELS, "--method", name, "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"with {name}\n" in captured.out and out.exists() and captured.err == ""
    (attr, kw), = shown  # fmt: skip
    assert kw["method"] == ("CCI (sufficiency)" if name == "cci" else METHODS[name].title)
    clf, loaded, _ = _common.classifier(build_parser().parse_args(argv), LABELS.split(","))
    x = loaded.preprocess(read_image(scene))[None]
    with torch.no_grad():
        target = int(clf(x).argmax(1))
    expected = pixel_map(name, build(name, clf), clf, x, target)[0]
    assert torch.isfinite(attr).all() and attr.abs().sum() > 0
    torch.testing.assert_close(attr, expected, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def conv_clf():
    names = list(shapes.CLASS_NAMES[:3])
    return ClipClassifier(make_tiny_resnet(), tiny_tokenizer(), names, templates=("a {}",))


def test_registry_tower_claims_hold_on_a_convolutional_tower(conv_clf):
    """Every method the registry says runs on the tower runs; every other one is refused
    by the registry and by its own class, each with a ValueError."""
    clf = conv_clf
    x = torch.randn(1, 3, *clf.vision.image_size)
    works = runs_on(clf.vision)
    # "any" methods and the LRP ones (a rule per layer type of the ResNet)
    assert works == tuple(n for n in METHOD_NAMES if METHODS[n].towers in ("any", "lrp"))
    for name in METHOD_NAMES:
        if name in works:
            assert refusal(name, clf.vision) is None
            attr = pixel_map(name, build(name, clf), clf, x, 1)
            assert attr.shape == x.shape and torch.isfinite(attr).all(), name
        else:
            reason = refusal(name, clf.vision)
            assert "ModifiedResNet has none (it is not a ViT)" in reason
            assert reason.endswith("run on it: " + ", ".join(works))
            with pytest.raises(ValueError, match="ViT"):
                METHODS[name].make(clf)  # the class refuses too, not only the registry


def test_registry_lrp_refusal_names_the_layer_types():
    """A convolutional tower with a layer type that has no LRP rule: the registry refuses
    the LRP methods with the class's own reason (what works included)."""

    class Squares(torch.nn.Module):  # a user's own layer: no rule
        def forward(self, x):
            return x * x

    tower = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), Squares())
    vision = types.SimpleNamespace(module=tower, is_vit=False)
    for name in [n for n in METHOD_NAMES if METHODS[n].towers == "lrp"]:
        reason = refusal(name, vision)
        assert reason.startswith(f"{name}: AttnLRP has no LRP rule for the module type(s)")
        assert "Squares" in reason and "Registered methods that run on it: cci" in reason


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if METHODS[n].towers == "vit"])
def test_explain_refuses_an_attention_method_on_a_conv_tower(
    scene, tmp_path, capsys, monkeypatch, conv_clf, name
):
    loaded = types.SimpleNamespace(preprocess=None, random_weights=False)
    spec = types.SimpleNamespace(text="tiny-RN")
    monkeypatch.setattr(_common, "classifier", lambda *a, **k: (conv_clf, loaded, spec))
    out = tmp_path / "f.png"
    argv = ["explain", str(scene), "--labels", LABELS, "--method", name, "--out", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line == (
        f"captum-clip explain: error: {name} reads the attention of a ViT vision tower; "
        "ModifiedResNet has none (it is not a ViT). Registered methods that run on it: "
        "cci, attnlrp, attnlrp-cp, gradcam, integrated-gradients, interactions"
    )
    assert captured.out == "" and not out.exists()


def test_cci_options_with_another_method_warn(scene, tmp_path, capsys):
    argv = ["explain", str(scene), "--labels", LABELS, "--method", "rollout",
            "--n-clusters", "3", "--mask-mode", "pixel", "--out", str(tmp_path / "f.png")]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: --n-clusters, --mask-mode only apply to --method cci" in err


def test_unknown_method_names_the_registered_ones(scene, capsys):
    with pytest.raises(SystemExit) as err:
        main(["explain", str(scene), "--labels", LABELS, "--method", "lrp"])
    assert err.value.code == 2
    assert "invalid choice: 'lrp'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"unknown method 'lrp' \(did you mean 'attnlrp'"):
        build("lrp", None)


def test_the_faithfulness_benchmark_reads_the_registry(conv_clf):
    """Every registered method is a benchmark row under its label, built with its Python
    defaults; ``faithfulness --methods`` and ``build_method`` take the registered name."""
    from captum_clip.attr import AttnLRP
    from captum_clip.benchmark.methods import ALIASES, build_method
    from captum_clip.benchmark.methods import METHODS as ROWS
    from captum_clip.commands import faithfulness as cmd
    from captum_clip.models import load_clip

    assert ALIASES == {n: m.label for n, m in METHODS.items()}
    assert set(ALIASES.values()) <= set(ROWS) and cmd.METHOD_NAMES == tuple(ROWS)
    args = build_parser().parse_args(["faithfulness", "testbed", "--methods", "attnlrp-cp", "CCI"])
    assert args.methods == ["attnlrp-cp", "CCI"]
    model, _, tok = load_clip("testbed")
    clf = ClipClassifier(model, tok, LABELS.split(","), templates=("a photo of {}",))
    x = shapes.normalize(shapes.generate_scenes(2, seed=0, size=64).images)
    t = torch.tensor([0, 1])
    got = build_method("attnlrp-cp", clf)(x, t)
    assert torch.equal(got, build_method("AttnLRP cp", clf)(x, t))
    torch.testing.assert_close(got, AttnLRP(clf, attention="cp").attribute(x, target=t))
    with pytest.raises(ValueError, match="ViT"):
        build_method("legrad", conv_clf)  # the harness records it as skipped


def test_docs_table_is_the_registry():
    from pathlib import Path

    from captum_clip.methods import markdown_table

    text = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    begin = "<!-- methods: generated from captum_clip.methods, do not edit -->\n"
    inside = text.split(begin)[1].split("\n<!-- /methods -->")[0]
    assert inside == markdown_table()
