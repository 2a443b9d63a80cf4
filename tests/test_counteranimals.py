"""CounterAnimals loader and evaluation on a tiny folder built in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from captum_clip.counteranimals import CounterAnimals, evaluate

RED, GREEN, BLUE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)
DIM_RED, DIM_GREEN = (200, 0, 0), (0, 200, 0)
# (folder, {group: [(left half, right half), ...]}); dataset order: 34 -> 0, 105 -> 1, 291 -> 2
LAYOUT = {
    "34 leatherback turtle": {
        "common-sand": [(RED, BLACK), (RED, BLACK)],
        "counter-grass": [(DIM_RED, GREEN), (RED, BLACK)],  # BG-Er (pred 1)
    },
    "105 koala": {
        "common-tree": [(GREEN, BLACK), (RED, BLACK)],  # FG-Er (pred 0, not close)
        "counter-snow": [(DIM_GREEN, RED), (GREEN, BLACK)],  # BG-Er (pred 0)
    },
    "291 lion": {
        "common-savanna": [(BLUE, BLACK), (BLUE, BLACK)],
        "counter-snow": [(RED, BLACK), (BLUE, BLACK)],  # Fine-Er (pred 0, close to 2)
    },
}


def make_folder(root, names=None):
    for k, (cls, groups) in enumerate(LAYOUT.items()):
        if names is not None:
            cls = f"{cls.split()[0]} {names[k]}"
        for group, images in groups.items():
            d = root / cls / group
            d.mkdir(parents=True)
            for i, (left, right) in enumerate(images):
                arr = np.zeros((16, 16, 3), dtype=np.uint8)
                arr[:, :8] = left
                arr[:, 8:] = right
                Image.fromarray(arr).save(d / f"img{i}.jpg", quality=95)
    (root / "README.txt").write_text("not a class folder")
    (root / "notes").mkdir()  # ignored: no index


def to_tensor(img):
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


class MeanColour(torch.nn.Module):
    """Predicts the brightest mean channel: red -> 0, green -> 1, blue -> 2."""

    class_names = ["leatherback turtle", "koala", "lion"]

    def forward(self, x):
        return x.mean(dim=(2, 3))


def left_half(images, class_names):
    m = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool)
    m[:, :, :8] = True
    return m


def test_loader_labels_groups_and_backgrounds(tmp_path):
    make_folder(tmp_path)
    ds = CounterAnimals(tmp_path, transform=to_tensor)
    assert len(ds) == 12
    assert ds.classes == [(34, "leatherback turtle"), (105, "koala"), (291, "lion")]
    assert ds.class_names == ["leatherback turtle", "koala", "lion"]
    assert ds.targets == [0] * 4 + [1] * 4 + [2] * 4
    groups = [ds[i][2] for i in range(len(ds))]
    assert groups == ["common", "common", "counter", "counter"] * 3
    x, y, g = ds[5]
    assert x.shape == (3, 16, 16) and y == 1 and g == "common"
    np.testing.assert_allclose(
        x[:, :, :8].mean(dim=(1, 2)), [1, 0, 0], atol=0.05
    )  # koala img1: red
    frame = ds.frame()
    assert frame["background"].tolist()[:4] == ["sand", "sand", "grass", "grass"]
    assert frame["imagenet_index"].tolist() == [34] * 4 + [105] * 4 + [291] * 4
    inet = CounterAnimals(tmp_path, label_space="imagenet", groups="counter")
    assert len(inet) == 6 and inet.targets == [34, 34, 105, 105, 291, 291]
    img, label, group = inet[0]
    assert isinstance(img, Image.Image) and label == 34 and group == "counter"


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        CounterAnimals(tmp_path / "nope")
    (tmp_path / "LAION-final").mkdir()
    with pytest.raises(ValueError, match="one level down"):
        CounterAnimals(tmp_path)
    make_folder(tmp_path / "LAION-final")
    with pytest.raises(ValueError, match="groups"):
        CounterAnimals(tmp_path / "LAION-final", groups=("rare",))
    with pytest.raises(ValueError, match="label_space"):
        CounterAnimals(tmp_path / "LAION-final", label_space="coco")
    ds = CounterAnimals(tmp_path / "LAION-final")
    with pytest.raises(TypeError, match="transform"):
        evaluate(MeanColour(), ds)


def test_evaluate_accuracies_and_diagnosis_split(tmp_path):
    make_folder(tmp_path)
    ds = CounterAnimals(tmp_path, transform=to_tensor)
    clf = MeanColour()
    # accuracy only
    r = evaluate(clf, ds, batch_size=5)
    assert r.accuracy == pytest.approx({"common": 5 / 6, "counter": 3 / 6})
    assert r.drop == pytest.approx(2 / 6)
    assert r.split == {} and r.diagnosis is None
    assert r.summary().loc["counter", "accuracy"] == pytest.approx(0.5)
    # with masks: brightness attribution, object = left half, {turtle, lion} close
    r = evaluate(
        clf,
        ds,
        left_half,
        batch_size=5,
        method=lambda x, t: x.sum(1, keepdim=True),
        fine_groups=[{"leatherback turtle", "lion"}],
    )
    assert r.accuracy == pytest.approx({"common": 5 / 6, "counter": 3 / 6})
    t = r.table
    want_pred = [0, 0, 1, 0, 1, 0, 0, 1, 2, 2, 0, 2]
    assert t["pred"].tolist() == want_pred
    assert t["category"].tolist() == [
        "correct",
        "correct",
        "BG-Er",
        "correct",
        "correct",
        "FG-Er",
        "BG-Er",
        "correct",
        "correct",
        "correct",
        "Fine-Er",
        "correct",
    ]
    np.testing.assert_allclose(t["fg_share"][2], 200 / 455, atol=0.03)
    assert r.split["bg"] == pytest.approx(2 / 6)
    assert r.split["fine"] == pytest.approx(1 / 6)
    assert r.split["fg"] == pytest.approx(-1 / 6)
    assert r.split["bg"] + r.split["fine"] + r.split["fg"] + r.split["unknown"] == pytest.approx(
        r.drop
    )
    assert r.split["bg_share"] == pytest.approx(1.0)
    s = r.summary()
    assert s.loc["counter", "bg_er"] == 2 and s.loc["common", "fg_er"] == 1
    assert set(t["group"]) == {"common", "counter"} and t["path"].str.endswith(".jpg").all()
    # batch size does not change the result
    r1 = evaluate(
        clf,
        ds,
        left_half,
        batch_size=12,
        method=lambda x, t: x.sum(1, keepdim=True),
        fine_groups=[{"leatherback turtle", "lion"}],
    )
    assert r1.table["category"].tolist() == t["category"].tolist()
    np.testing.assert_allclose(r1.table["fg_share"], t["fg_share"], rtol=1e-6)
    assert r.diagnosis.mode == "attribution" and (s["mode"] == "attribution").all()
    # the default diagnosis: region ablation (pixel mode: the half replaced by black); on
    # these two-colour images it calls the same drivers as the brightness map
    ra = evaluate(clf, ds, left_half, batch_size=5, fine_groups=[{"leatherback turtle", "lion"}])
    assert ra.diagnosis.mode == "region_ablation"
    assert (ra.summary()["mode"] == "region_ablation").all()
    assert ra.table["category"].tolist() == t["category"].tolist()
    assert ra.split == pytest.approx(r.split, nan_ok=True)
    left = torch.stack([ds[i][0][:, :, :8].mean(dim=(1, 2)) for i in range(len(ds))]) / 2
    pred = torch.tensor(want_pred)
    np.testing.assert_allclose(ra.table["fg_effect"], left[torch.arange(12), pred], atol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(clf, ds, batch_size=0)


def test_cli_counteranimals_accuracy_matches_direct_classification(tmp_path, capsys):

    from captum_clip.cli import main
    from captum_clip.models import ClipClassifier
    from captum_clip.testbed import zoo

    torch.manual_seed(0)
    cfg = zoo.load_config("default")
    model = zoo.build_model(cfg).eval()
    ckpt = tmp_path / "random.pt"
    torch.save(model.state_dict(), ckpt)
    make_folder(tmp_path / "ca", names=["dots", "checks", "solid"])  # testbed vocabulary
    assert (
        main(
            [
                "counteranimals",
                str(tmp_path / "ca"),
                "--model",
                f"testbed:default:{ckpt}",
                "--out",
                str(tmp_path / "r.csv"),
                "--no-progress",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()]
    table = {c[0]: c[1] for c in cells if len(c) == 3}  # the Markdown summary
    got = {"accuracy": {g: float(table[f"accuracy ({g})"]) for g in ("common", "counter")}}
    assert float(table["drop"]) == pytest.approx(
        got["accuracy"]["common"] - got["accuracy"]["counter"], abs=1e-3
    )
    assert f"wrote {tmp_path / 'r.csv'}" in text
    ds = CounterAnimals(tmp_path / "ca", transform=zoo.TestbedPreprocess(64))
    clf = ClipClassifier(
        model, zoo.build_tokenizer(cfg), ds.class_names, templates=("a photo of {}",)
    )
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        correct = (clf(x).argmax(1) == torch.tensor(ds.targets)).float()
    common, counter = correct[[0, 1, 4, 5, 8, 9]].mean(), correct[[2, 3, 6, 7, 10, 11]].mean()
    assert got["accuracy"]["common"] == pytest.approx(common.item(), abs=1e-3)  # 3 digits
    assert got["accuracy"]["counter"] == pytest.approx(counter.item(), abs=1e-3)
    assert len(__import__("pandas").read_csv(tmp_path / "r.csv")) == 12


def test_cli_counteranimals_with_concept_masks_diagnoses(tmp_path, capsys):
    """``--masks concepts`` is a mask source: the diagnosis split is printed and the table
    gets the concept columns; SAM and concepts together are refused."""
    import warnings

    import pandas as pd

    from captum_clip.cli import main

    make_folder(tmp_path / "ca", names=["dots", "checks", "solid"])  # testbed vocabulary
    words = tmp_path / "words.txt"
    words.write_text("grass\nsky\nwater\n")
    argv = ["counteranimals", str(tmp_path / "ca"), "--model", "testbed", "--masks", "concepts",
            "--namer", "testbed", "--vocabulary", str(words), "--out", str(tmp_path / "r.csv"),
            "--no-progress"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Diagnosis: region ablation" in text
    table = pd.read_csv(tmp_path / "r.csv")
    assert {"driver", "concept_fallback", "shortcut_share"} <= set(table.columns)
    assert main([*argv, "--sam-checkpoint", str(words)]) == 2
    assert "give one mask source" in capsys.readouterr().err
