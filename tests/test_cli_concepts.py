"""The command line's concept options: ``explain --concepts``, ``diagnose ... --masks
concepts``, checked against the library calls they wrap."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
from PIL import Image

from captum_clip import ClipClassifier, load_clip
from captum_clip.attr import CCI
from captum_clip.cli import main
from captum_clip.concepts import name_regions
from captum_clip.diagnosis import diagnose
from captum_clip.masks import ConceptMasks
from captum_clip.storage import read_image
from captum_clip.testbed import BACKGROUND_NAMES, CLASS_NAMES, shapes

LABELS = ",".join(CLASS_NAMES)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("concepts") / "scene.png"
    image = shapes.generate_scenes(1, seed=4, rho=0.9).images[0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(path)
    return path


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    path = tmp_path_factory.mktemp("words") / "words.txt"
    path.write_text("# backgrounds\n" + "\n".join(BACKGROUND_NAMES) + "\n")
    return path


def test_explain_concepts_prints_the_names_of_name_regions(scene, words, tmp_path, capsys):
    out = tmp_path / "f.png"
    argv = ["explain", str(scene), "--labels", LABELS, "--model", "testbed:shortcut",
            "--n-clusters", "6", "--concepts", str(words), "--namer", "testbed:default",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert out.is_file()
    lines = printed.split("named regions (namer: testbed:default;")[1].splitlines()[1:]
    got = sorted(line.split()[0] for line in lines if " share " in line)
    # by hand: the same image, CCI(clf, n_clusters=6), named by the default model
    loaded = load_clip("testbed", variant="shortcut")
    clf = ClipClassifier(loaded.model, loaded.tokenizer, list(CLASS_NAMES),
                         templates=["a photo of {}"])  # fmt: skip
    x = loaded.preprocess(read_image(scene))[None]
    _, res = CCI(clf, n_clusters=6).attribute(x, target=clf(x).argmax(1), return_clusters=True)
    named = name_regions(x, res, list(BACKGROUND_NAMES) + list(CLASS_NAMES),
                         namer=load_clip("testbed"))  # fmt: skip
    want = sorted(n.split()[0] for n in named.best[0] if n is not None)
    assert got == want


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "gradcam", "--concepts"], "--concepts names CCI's regions"),
        (["--namer", "testbed"], "--namer names the regions of --concepts"),
        (["--concepts", "missing.txt"], "vocabulary file not found"),
    ],
)
def test_explain_concept_option_errors(scene, tmp_path, capsys, extra, message):
    argv = ["explain", str(scene), "--labels", LABELS, "--out", str(tmp_path / "f.png"), *extra]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("captum-clip explain: error: ") and message in line


def test_diagnose_testbed_with_concept_masks_equals_the_library(words, tmp_path, capsys):
    table = tmp_path / "d.csv"
    argv = ["diagnose", "testbed", "--n", "12", "--seed", "3", "--masks", "concepts",
            "--namer", "testbed:default", "--vocabulary", str(words), "--out", str(table),
            "--no-progress", "--device", "cpu"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    got = pd.read_csv(table)
    assert {"concept_fallback", "shortcut_share"} <= set(got.columns)
    loaded = load_clip("testbed", variant="shortcut")
    clf = ClipClassifier(loaded.model, loaded.tokenizer, list(CLASS_NAMES),
                         templates=["a photo of {}"])  # fmt: skip
    scenes = shapes.generate_scenes(12, seed=3, rho=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = diagnose(clf, shapes.normalize(scenes.images),
                     ConceptMasks(load_clip("testbed"), list(BACKGROUND_NAMES)), scenes.labels,
                     internal_batch_size=32)  # fmt: skip
    assert list(got["driver"].fillna("")) == list(d.table["driver"].fillna(""))
    pd.testing.assert_series_equal(got["shortcut_share"], d.table["shortcut_share"],
                                   check_dtype=False, atol=1e-5, rtol=0)  # fmt: skip
    assert "wrote" in capsys.readouterr().out


def test_concept_options_without_concept_masks_warn(capsys):
    argv = ["diagnose", "testbed", "--n", "4", "--namer", "testbed", "--no-progress",
            "--device", "cpu"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    assert "--namer only apply to --masks concepts" in capsys.readouterr().err
