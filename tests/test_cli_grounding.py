"""``captum-clip grounding testbed|folder``: files, values equal to the library, errors."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from captum_clip import grounding as G
from captum_clip import load_clip
from captum_clip.attr import IntegratedInteractions
from captum_clip.cli import main
from captum_clip.testbed import shapes


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_testbed_mode_writes_table_and_figures(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["grounding", "testbed", "--model", "testbed:default", "--n", "2", "--seeds",
                 "0", "1", "--n-steps", "2", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    names = ["grounding.csv", "grounding.md", "classes.png", "coverage.png", "conditions.png",
             "examples_testbed_default.png"]  # fmt: skip
    assert printed[-len(names) :] == [f"wrote {out / n}" for n in names]
    assert printed[0].startswith("| model | role | n | area_share | object_share")
    rows = read_rows(out / "grounding.csv")
    # 2 seeds x 2 objects x 3 conditions, roles object + attribute + context each
    assert len(rows) == 36
    assert {r["role"] for r in rows} == {"object", "attribute", "context"}
    assert {r["condition"] for r in rows} == set(G.CONDITIONS)
    md = (out / "grounding.md").read_text()
    for section in ("## Per class", "## Coverage", "## Conditions", "## Unusual scenes",
                    "## Correlated contexts"):  # fmt: skip
        assert section in md
    assert "±" in md  # spread over the two seeds


def write_folder(tmp_path, n=2):
    sc = shapes.generate_scenes(n, seed=5, caption_probs=(0, 1, 0, 0))
    lines = ["image,caption,mask,object,context,unusual"]
    for i in range(n):
        img = (sc.images[i].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(img).save(tmp_path / f"img{i}.png")
        Image.fromarray(sc.masks[i].numpy().astype("uint8") * 255).save(tmp_path / f"m{i}.png")
        roles = G.testbed_roles(sc.captions[i])
        lines.append(f"img{i}.png,{sc.captions[i]},m{i}.png,{roles['object']},"
                     f"{roles['context']},{i % 2}")  # fmt: skip
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    return sc


def test_folder_mode_equals_library(tmp_path, capsys):
    sc = write_folder(tmp_path)
    out = tmp_path / "out"
    code = main(["grounding", "folder", str(tmp_path / "pairs.csv"), "--model",
                 "testbed:default", "--n-steps", "3", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    assert f"wrote {out / 'unusual.png'}" in capsys.readouterr().out
    rows = read_rows(out / "grounding.csv")
    assert [r["role"] for r in rows] == ["object", "context"] * 2
    model, preprocess, tok = load_clip("testbed")
    ii = IntegratedInteractions(model, tok)
    pictures = torch.stack([preprocess(Image.open(tmp_path / f"img{i}.png")) for i in range(2)])
    res = ii.explain(pictures, sc.captions, n_steps=3)  # from the 8-bit files, like the CLI
    roles = [{k: v for k, v in G.testbed_roles(c).items() if k != "attribute"} for c in sc.captions]
    ref = G.measure(res, sc.masks, roles)
    for got, want in zip(rows, ref):
        assert got["word"] == want["word"]
        for key in ("area_share", "object_share", "total", "pointing"):
            assert float(got[key]) == pytest.approx(want[key], rel=1e-4, abs=1e-7), key


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: t.replace("object,context", "obj,context"), "missing column"),
        (lambda t: t.replace("m1.png", "nope.png"), "mask file not found"),
        (lambda t: t.replace(",1\n", ",maybe\n"), "unusual must be 0/1"),
    ],
)
def test_folder_mode_bad_csv(tmp_path, capsys, edit, match):
    write_folder(tmp_path)
    path = tmp_path / "pairs.csv"
    path.write_text(edit(path.read_text()))
    code = main(["grounding", "folder", str(path), "--model", "testbed:default",
                 "--out", str(tmp_path / "o"), "--no-progress"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("captum-clip grounding: error:") and match in err[0]


def test_folder_mode_word_not_in_caption(tmp_path, capsys):
    write_folder(tmp_path, n=1)
    path = tmp_path / "pairs.csv"
    lines = path.read_text().splitlines()
    head, row = lines[0], lines[1].split(",")
    row[3] = "zebra"
    path.write_text(head + "\n" + ",".join(row) + "\n")
    code = main(["grounding", "folder", str(path), "--model", "testbed:default", "--n-steps",
                 "2", "--out", str(tmp_path / "o"), "--no-progress"])  # fmt: skip
    assert code == 2
    assert "word 'zebra' is not in the caption" in capsys.readouterr().err


def test_prepare_pil_maps_the_mask_like_the_picture():
    from torchvision import transforms as T

    pre = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor(),
                     T.Normalize((0.5, 0.4, 0.3), (0.2, 0.3, 0.25))])  # fmt: skip
    mask = torch.zeros(32, 48, dtype=torch.uint8)
    mask[:, :24] = 255  # left half of a 48-wide picture
    picture = Image.fromarray((torch.rand(32, 48, 3) * 255).byte().numpy())
    x, display, m = G.prepare_pil(pre, picture, Image.fromarray(mask.numpy()))
    assert x.shape == display.shape == (3, 32, 32) and m.shape == (32, 32)
    expected = torch.zeros(32, 32)
    expected[:, :16] = 1  # the centre crop keeps columns 8..39
    torch.testing.assert_close(m, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(display, T.ToTensor()(picture)[:, :, 8:40], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="mask has size"):
        G.prepare_pil(pre, picture, Image.new("L", (10, 10)))
