"""Every command-line default is the Python default of what the option sets.

One table: (command, option) -> the Python callable and parameter it feeds. An option left
unset (default None) passes nothing, so the Python default applies by construction; an
option with its own default must equal the Python one. ``explain`` with no options runs
``CCI(clf)`` itself (the printed regions are its regions).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest
import torch
from PIL import Image

from captum_clip import counteranimals
from captum_clip.attr import CCI, IntegratedInteractions
from captum_clip.attr import _cci_settings as cci_module
from captum_clip.benchmark import MethodSettings
from captum_clip.benchmark.faithfulness import MetricSettings
from captum_clip.cli import build_parser, main
from captum_clip.commands import _common, explain
from captum_clip.covar import evaluate as covar_evaluate
from captum_clip.diagnosis import diagnose
from captum_clip.methods import METHOD_NAMES
from captum_clip.storage import read_image
from captum_clip.testbed import shapes


def _param(fn, name):
    return inspect.signature(fn).parameters[name].default


def _field(cls, name):
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


II = IntegratedInteractions.attribute
#: (command words, option dest) -> Python default of what the option sets.
PYTHON_DEFAULTS = {
    (("explain",), "n_clusters"): None,  # None: CCI(clf) picks K per estimator
    (("explain",), "estimator"): None,
    (("explain",), "mask_mode"): None,
    (("interactions",), "n_steps"): _param(II, "n_steps"),
    (("interactions",), "text_layer"): _param(II, "text_layer"),
    (("interactions",), "image_layer"): _param(II, "image_layer"),
    **{
        (("grounding", mode), opt): _param(II, opt)
        for mode in ("testbed", "folder")
        for opt in ("n_steps", "text_layer", "image_layer")
    },
    **{
        (("diagnose", mode), opt): _param(diagnose, opt)
        for mode in ("testbed", "folder")
        for opt in ("tau", "fine_threshold")
    },
    **{
        (("diagnose", mode), "n_clusters"): _param(CCI.default_for, "n_clusters")
        for mode in ("testbed", "folder")
    },
    (("demo",), "n_clusters"): _param(CCI.default_for, "n_clusters"),
    **{
        (("covar", "eval"), opt): _param(covar_evaluate, opt)
        for opt in (
            "batch_size",
            "chunk_batches",
            "n_clusters",
            "tau",
            "fine_threshold",
            "diagnosis",
        )
    },  # fmt: skip
    **{
        (("counteranimals",), opt): _param(counteranimals.evaluate, opt)
        for opt in ("batch_size", "tau", "fine_threshold")
    },
    (("counteranimals",), "n_clusters"): _param(CCI.default_for, "n_clusters"),
    (("counteranimals",), "diagnosis"): _param(covar_evaluate, "diagnosis"),
    **{
        (("diagnose", mode), "diagnosis"): _param(covar_evaluate, "diagnosis")
        for mode in ("testbed", "folder")
    },
    **{
        (("faithfulness", mode), opt): _field(MethodSettings, field)
        for mode in ("testbed", "folder")
        for opt, field in (
            ("cci_k", "cci_k"),
            ("cci_multi_k", "cci_multi_k"),
            ("ig_steps", "ig_steps"),
            ("superpixels", "superpixels"),
            ("shap_samples", "shap_samples"),
            ("batch_size", "batch_size"),
        )
    },  # fmt: skip
    **{
        (("faithfulness", mode), opt): _field(MetricSettings, opt)
        for mode in ("testbed", "folder")
        for opt in (
            "n_steps",
            "deletion_baseline",
            "insertion_baseline",
            "road_percentages",
            "pointing_tolerance",
        )
    },  # fmt: skip
}


def _subparser(words: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def _cli_default(words, dest):
    return next(a for a in _subparser(words)._actions if a.dest == dest).default


@pytest.mark.parametrize("key", list(PYTHON_DEFAULTS), ids=lambda k: " ".join(k[0]) + " " + k[1])
def test_cli_default_is_the_python_default(key):
    words, dest = key
    cli = _cli_default(words, dest)
    python = PYTHON_DEFAULTS[key]
    if isinstance(cli, list):
        cli = tuple(cli)
    assert cli == python, f"captum-clip {' '.join(words)} --{dest}: {cli!r} != {python!r}"


def test_explain_choices_are_the_registry_and_cci_s():
    assert _cli_default(("explain",), "method") == "cci" == METHOD_NAMES[0]
    actions = {a.dest: a for a in _subparser(("explain",))._actions}
    assert tuple(actions["method"].choices) == METHOD_NAMES
    assert tuple(actions["mask_mode"].choices) == cci_module.MASK_MODES
    assert "default: CCI(clf)'s, " + cci_module.DEFAULT_ESTIMATOR in actions["estimator"].help
    for k in ("32 for sufficiency", "7 for occlusion"):  # CCI's DEFAULT_K / DEFAULT_N_CLUSTERS
        assert k in actions["n_clusters"].help
    assert cci_module.DEFAULT_K["sufficiency"] == 32 and cci_module.DEFAULT_N_CLUSTERS == 7
    assert set(explain.CCI_OPTIONS) <= set(inspect.signature(CCI).parameters)


def test_explain_without_options_runs_cci_clf(tmp_path, capsys):
    """The printed regions are those of ``CCI(clf)`` (sufficiency, K=32 on the testbed's
    64 patches) on the same image and target."""
    img = tmp_path / "scene.png"
    image = shapes.generate_scenes(1, seed=1, size=64).images[0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(img)
    argv = ["explain", str(img), "--labels", "dots,checks,solid", "--out", str(tmp_path / "f.png")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines() if ln.strip().startswith("region ")]
    values = sorted(float(w[w.index("value") + 1]) for w in lines)
    clf, loaded, _ = _common.classifier(
        build_parser().parse_args(argv), ["dots", "checks", "solid"]
    )
    x = loaded.preprocess(read_image(img))[None]
    with torch.no_grad():
        target = int(clf(x).argmax(1))
    cci = CCI(clf)
    assert cci.estimator == "sufficiency" and cci.n_clusters == (32,)
    assert f"CCI sufficiency, K={cci.n_clusters[0]}," in out
    _, res = cci.attribute(x, target=target, return_clusters=True)
    expected = sorted(v for v in res.values[0].tolist() if v == v)
    assert values == pytest.approx(expected, abs=6e-4)
