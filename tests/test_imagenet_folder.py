"""``faithfulness folder --imagenet``: open_clip's metadata, sorted WordNet ids -> index."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from PIL import Image

from captum_clip.benchmark import inputs
from captum_clip.benchmark.imagenet import (
    imagenet_class_names,
    imagenet_folder_classes,
    imagenet_templates,
)
from captum_clip.cli import main as cli_main
from captum_clip.testbed import shapes


def test_metadata_from_open_clip():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    names, templates = imagenet_class_names(), imagenet_templates()
    assert len(names) == 1000 and names[0] == "tench" and names[-1] == "toilet paper"
    assert names == list(IMAGENET_CLASSNAMES)
    assert len(templates) == 80 and templates[0] == "a bad photo of a {}."
    for t, f in zip(templates, OPENAI_IMAGENET_TEMPLATES):
        assert t.format("goldfish") == f("goldfish")


def _wnid_folders(root, ids, images=()):
    for i in ids:
        (root / f"n{i:08d}").mkdir(parents=True, exist_ok=True)
    for i, (wnid, img) in enumerate(images):
        arr = (img.permute(1, 2, 0) * 255).byte().numpy()
        Image.fromarray(arr).save(root / f"n{wnid:08d}" / f"im{i}.png")


def test_folder_count_and_names(tmp_path):
    _wnid_folders(tmp_path / "full", range(1000))
    assert imagenet_folder_classes(tmp_path / "full") == imagenet_class_names()
    _wnid_folders(tmp_path / "three", [7, 3, 5])
    with pytest.raises(ValueError, match=r"expects the 1000 ImageNet .* has 3; for a subset"):
        imagenet_folder_classes(tmp_path / "three")
    with pytest.raises(ValueError, match="has 3 class sub-folders but 2 class names"):
        imagenet_folder_classes(tmp_path / "three", ["a", "b"])
    assert imagenet_folder_classes(tmp_path / "three", ["a", "b", "c"]) == ["a", "b", "c"]
    (tmp_path / "odd").mkdir()
    for i in range(1000):
        (tmp_path / "odd" / f"class{i:04d}").mkdir()
    with pytest.raises(ValueError, match="sub-folders like \\['class0000'"):
        imagenet_folder_classes(tmp_path / "odd")


def test_sorted_folders_give_the_labels(tmp_path):
    """Folder n...3 is class 0, n...5 class 1, n...7 class 2 -- whatever the names say."""
    scenes = shapes.generate_scenes(3, seed=1)
    _wnid_folders(tmp_path, [7, 3, 5], zip([7, 3, 5], scenes.images))
    x, labels, _, names, paths = inputs.load_folder(
        tmp_path, lambda im: torch.zeros(3, 2, 2), class_names=["x", "y", "z"], labels_by="order"
    )
    assert [p.split("/")[-2] for p in paths] == ["n00000003", "n00000005", "n00000007"]
    assert labels.tolist() == [0, 1, 2] and names == ["x", "y", "z"]
    with pytest.raises(ValueError, match="one class name per sub-folder"):
        inputs.load_folder(tmp_path, lambda im: im, class_names=["x"], labels_by="order")


def test_cli_imagenet_end_to_end(tmp_path, capsys):
    """Three WordNet-id folders named by --classes; the table's targets follow the order."""
    scenes = shapes.generate_scenes(6, seed=2)
    order = sorted([40, 10, 30])  # folder ids; sorted order = class index
    classes = ["dots", "checks", "solid"]
    keep = [(order[classes.index(shapes.CLASS_NAMES[int(c)])], img)
            for c, img in zip(scenes.labels, scenes.images)
            if shapes.CLASS_NAMES[int(c)] in classes]  # fmt: skip
    if not keep:
        keep = [(order[0], scenes.images[0])]
    _wnid_folders(tmp_path / "val", order, keep)
    csv = tmp_path / "table.csv"
    argv = ["faithfulness", "folder", str(tmp_path / "val"), "--imagenet", "--model", "testbed",
            "--classes", *classes, "--templates", "a photo of {}", "--target", "label",
            "--methods", "CCI", "MaskCLIP", "--n-steps", "2", "--road-percentages", "50",
            "--out", str(tmp_path / "res.md"), "--csv", str(csv), "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 0
    table = pd.read_csv(csv)
    targets = table.loc[table["method"] == "CCI", "target"].tolist()
    assert targets == sorted(order.index(w) for w, _ in keep)
    assert (
        "ImageNet layout: sorted sub-folders = class index, 3 classes"
        in (tmp_path / "res.md").read_text()
    )
    # without --classes: 3 folders are not ImageNet -> one error line, exit 2
    no_classes = [a for a in argv if a not in classes and a != "--classes"]
    assert cli_main(no_classes) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expects the 1000 ImageNet class sub-folders" in err[0]
    assert str(tmp_path / "val") in err[0]


def test_cli_imagenet_defaults_reach_the_benchmark(tmp_path, monkeypatch):
    """1000 WordNet folders: open_clip's 1000 names, 80 templates, labels by order."""
    _wnid_folders(tmp_path, range(1000))
    seen = {}

    class Stop(Exception):
        pass

    def fake(model, images_dir, class_names, masks_dir, **kw):
        seen.update(kw, class_names=class_names)
        raise Stop

    monkeypatch.setattr(inputs, "run_folder", fake)
    with pytest.raises(Stop):
        cli_main(["faithfulness", "folder", str(tmp_path), "--imagenet", "--model", "testbed",
                  "--no-progress"])  # fmt: skip
    assert seen["class_names"] == imagenet_class_names()
    assert seen["templates"] == imagenet_templates() and seen["labels_by"] == "order"
