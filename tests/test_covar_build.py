"""``covar build``: counts, factors, exact masks, determinism, resume, folder sources."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from captum_clip import covar
from captum_clip.cli import main as cli_main
from captum_clip.covar.build import MANIFEST_COLUMNS, _background_canvas
from captum_clip.covar.transforms import (
    TRANSFORMS,
    transform_matrix,
    transform_params,
    warp_foreground,
)
from captum_clip.storage import find_table, write_table

CLASSES = ["dots", "horizontal stripes"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is much faster on a shared, loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SIZE = 64


def _sources(seed: int = 0):
    inst = covar.testbed_instances(1, size=SIZE, seed=seed, classes=CLASSES)
    bgs = covar.testbed_backgrounds(2, size=SIZE, seed=seed)
    return inst, bgs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    inst, bgs = _sources()
    root = tmp_path_factory.mktemp("covar") / "a"
    res = covar.build(root, inst, bgs, size=SIZE, seed=3, object_size=None, show_progress=False)
    return res, inst, bgs


def _load(root, rel):
    return np.asarray(Image.open(os.path.join(root, rel)))


def test_count_and_factors(built):
    res, inst, bgs = built
    m = res.manifest
    assert len(m) == len(CLASSES) * 1 * 2 * (1 + 11) == 48
    assert res.written == 48 and res.skipped == 0
    assert list(m.columns) == list(MANIFEST_COLUMNS)
    assert m["image_id"].is_unique
    combos = set(zip(m["instance"], m["background"], m["transform"]))
    expected = {(i.id, b.id, t.name) for i in inst for b in bgs for t in TRANSFORMS}
    assert combos == expected
    for i in inst:
        rows = m[m["instance"] == i.id]
        assert set(rows["class_name"]) == {i.class_name}
        assert set(rows["class_index"]) == {CLASSES.index(i.class_name)}
    fam = dict(zip(m["transform"], m["family"]))
    assert sorted(k for k, v in fam.items() if v == "scale") == [
        "scale-0.50", "scale-0.75", "scale-1.25", "scale-1.50",
    ]  # fmt: skip
    assert sorted(k for k, v in fam.items() if v == "viewpoint") == ["viewpoint-1", "viewpoint-2"]
    for family in ("identity", "hflip", "vflip", "translate", "crop", "rotate"):
        assert family in fam.values()
    # parameters do not depend on the background (background-only variation)
    for (_, _t), grp in m.groupby(["instance", "transform"]):
        assert grp["params"].nunique() == 1
    assert (m["mask_area"] > 0).all()
    settings = json.loads((res.root / "covar.json").read_text())
    assert settings["class_names"] == CLASSES and settings["seed"] == 3
    reread = covar.load_manifest(res.root)
    pd.testing.assert_frame_equal(reread, m)


def test_masks_match_pasted_pixels(built):
    res, inst, bgs = built
    by_inst = {i.id: i for i in inst}
    by_bg = {b.id: b for b in bgs}
    specs = {t.name: t for t in TRANSFORMS}
    for row in res.manifest.itertuples(index=False):
        img = _load(res.root, row.image_path)
        raw = _load(res.root, row.mask_path)
        assert set(np.unique(raw)) <= {0, 255}
        mask = raw == 255
        assert mask.sum() == row.mask_area
        i, bg = by_inst[row.instance], by_bg[row.background].image
        mat, win = transform_matrix(
            specs[row.transform], json.loads(row.params), i.mask, SIZE, None
        )
        fg, fmask = warp_foreground(i.image, i.mask, mat, SIZE, win)
        np.testing.assert_array_equal(mask, fmask)
        np.testing.assert_array_equal(img[mask], fg[mask])  # inside: the transformed object
        np.testing.assert_array_equal(img[~mask], bg[~mask])  # outside: the background


def test_identity_flips_and_translation_in_closed_form(built):
    res, inst, bgs = built
    m = res.manifest
    for i in inst:
        # testbed discs are centred: the identity composite is the source, unchanged
        row = m[(m["instance"] == i.id) & (m["transform"] == "identity")].iloc[0]
        mask = _load(res.root, row.mask_path) == 255
        img = _load(res.root, row.image_path)
        np.testing.assert_array_equal(mask, i.mask)
        np.testing.assert_array_equal(img[mask], i.image[mask])
        for name, axis in (("hflip", 1), ("vflip", 0)):
            r = m[(m["instance"] == i.id) & (m["transform"] == name)].iloc[0]
            fm = _load(res.root, r.mask_path) == 255
            np.testing.assert_array_equal(fm, np.flip(i.mask, axis))
            np.testing.assert_array_equal(
                _load(res.root, r.image_path)[fm], np.flip(i.image, axis)[fm]
            )
        r = m[(m["instance"] == i.id) & (m["transform"] == "translate")].iloc[0]
        p = json.loads(r.params)
        dx = round(p["fraction"] * SIZE * np.cos(p["direction_rad"]))
        dy = round(p["fraction"] * SIZE * np.sin(p["direction_rad"]))
        shifted = np.zeros_like(i.mask)
        ys, xs = np.nonzero(i.mask)
        keep = (ys + dy >= 0) & (ys + dy < SIZE) & (xs + dx >= 0) & (xs + dx < SIZE)
        shifted[ys[keep] + dy, xs[keep] + dx] = True
        tm = _load(res.root, r.mask_path) == 255
        np.testing.assert_array_equal(tm, shifted)
        np.testing.assert_array_equal(
            _load(res.root, r.image_path)[shifted], i.image[ys[keep], xs[keep]]
        )
        # scale changes the object's area by the square of the factor (up to edge pixels)
        area = i.mask.sum()
        for name, s in (("scale-0.50", 0.5), ("scale-0.75", 0.75)):
            a = m[(m["instance"] == i.id) & (m["transform"] == name)]["mask_area"].iloc[0]
            assert abs(a / area - s * s) < 0.08
        # crop keeps only part of the object, inside the object's former area
        r = m[(m["instance"] == i.id) & (m["transform"] == "crop")].iloc[0]
        cm = _load(res.root, r.mask_path) == 255
        assert 0.2 * area < cm.sum() < 0.7 * area and not (cm & ~i.mask).any()


def test_deterministic_same_seed(built, tmp_path):
    res, _, _ = built
    inst, bgs = _sources()
    again = covar.build(tmp_path / "b", inst, bgs, size=SIZE, seed=3, object_size=None,
                        show_progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(again.manifest, res.manifest)
    for rel in list(res.manifest["image_path"]) + list(res.manifest["mask_path"]):
        assert (res.root / rel).read_bytes() == (again.root / rel).read_bytes()
    other = covar.build(tmp_path / "c", inst, bgs, size=SIZE, seed=4, object_size=None,
                        show_progress=False)  # fmt: skip
    assert not other.manifest["params"].equals(res.manifest["params"])


def test_resume_rebuilds_only_missing(tmp_path):
    inst, bgs = _sources()
    root = tmp_path / "r"
    first = covar.build(root, inst, bgs, size=SIZE, seed=1, object_size=None, show_progress=False)
    m = first.manifest
    content = {
        rel: (root / rel).read_bytes() for rel in list(m["image_path"]) + list(m["mask_path"])
    }
    old = 1_000_000_000
    for rel in content:
        os.utime(root / rel, (old, old))
    for rel in m["image_path"].iloc[[0, 5, 17]]:
        (root / rel).unlink()  # files gone (manifest still lists them)
    dropped = m.drop(index=[30, 41])  # rows gone (files still there)
    write_table(dropped, find_table(root, "manifest"))
    second = covar.build(root, inst, bgs, size=SIZE, seed=1, object_size=None, show_progress=False)
    assert second.written == 5 and second.skipped == 43
    pd.testing.assert_frame_equal(second.manifest, m)
    redone = set(m["image_path"].iloc[[0, 5, 17, 30, 41]]) | set(
        m["mask_path"].iloc[[0, 5, 17, 30, 41]]
    )
    for rel, data in content.items():
        assert (root / rel).read_bytes() == data
        touched = os.stat(root / rel).st_mtime != old
        assert touched == (rel in redone), rel
    third = covar.build(root, inst, bgs, size=SIZE, seed=1, object_size=None, show_progress=False)
    assert third.written == 0 and third.skipped == 48
    with pytest.raises(ValueError, match="other settings"):
        covar.build(root, inst, bgs, size=SIZE, seed=2, object_size=None, show_progress=False)


def test_bad_inputs(tmp_path):
    inst, bgs = _sources()
    empty = covar.Instance("e", "dots", inst[0].image, np.zeros((SIZE, SIZE), bool))
    with pytest.raises(ValueError, match="empty"):
        covar.build(tmp_path / "x", [empty], bgs, size=SIZE, show_progress=False)
    wrong = covar.Instance("w", "dots", inst[0].image, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="mask must be"):
        covar.build(tmp_path / "x", [wrong], bgs, size=SIZE, show_progress=False)
    with pytest.raises(ValueError, match="unique"):
        covar.build(tmp_path / "x", [inst[0], inst[0]], bgs, size=SIZE, show_progress=False)
    with pytest.raises(ValueError, match="at least one"):
        covar.build(tmp_path / "x", inst, [], size=SIZE, show_progress=False)
    with pytest.raises(ValueError, match="size"):
        covar.build(tmp_path / "x", inst, bgs, size=4, show_progress=False)
    with pytest.raises(ValueError, match="object_size"):
        covar.build(tmp_path / "x", inst, bgs, size=SIZE, object_size=2.0, show_progress=False)
    with pytest.raises(ValueError, match="classes"):
        covar.testbed_instances(1, classes=["zebra"])
    with pytest.raises(FileNotFoundError):
        covar.load_manifest(tmp_path / "nowhere")


def _write_folders(tmp_path):
    rng = np.random.default_rng(0)
    inst_dir, bg_dir = tmp_path / "instances", tmp_path / "backgrounds"
    (inst_dir / "red thing").mkdir(parents=True)
    (inst_dir / "blue thing").mkdir(parents=True)
    bg_dir.mkdir()
    img = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    mask = np.zeros((40, 30), bool)
    mask[5:30, 8:20] = True
    Image.fromarray(img).save(inst_dir / "red thing" / "a.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(inst_dir / "red thing" / "a.mask.png")
    rgba = np.concatenate([img, (mask[..., None] * 255).astype(np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(inst_dir / "blue thing" / "b.png")
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(bg_dir / "noise.png")
    return inst_dir, bg_dir, img, mask


def test_folder_sources_and_cli(tmp_path):
    inst_dir, bg_dir, img, mask = _write_folders(tmp_path)
    inst = covar.folder_instances(inst_dir)
    bgs = covar.folder_backgrounds(bg_dir)
    assert [(i.id, i.class_name) for i in inst] == [("b", "blue thing"), ("a", "red thing")]
    for i in inst:
        np.testing.assert_array_equal(i.mask, mask)
        np.testing.assert_array_equal(i.image, img)
    out = tmp_path / "out"
    code = cli_main(["covar", "build", "--source", "folders", "--instances", str(inst_dir),
                     "--backgrounds", str(bg_dir), "--out", str(out), "--size", "32",
                     "--object-size", "0.5", "--no-progress"])  # fmt: skip
    assert code == 0
    m = covar.load_manifest(out)
    assert len(m) == 2 * 1 * 12
    canvas = _background_canvas(bgs[0], 32)
    specs = {t.name: t for t in TRANSFORMS}
    for row in m.itertuples(index=False):
        i = inst[0] if row.instance == "b" else inst[1]
        mat, win = transform_matrix(specs[row.transform], json.loads(row.params), i.mask, 32, 0.5)
        fg, fm = warp_foreground(i.image, i.mask, mat, 32, win)
        got = _load(out, row.image_path)
        gm = _load(out, row.mask_path) == 255
        np.testing.assert_array_equal(gm, fm)
        np.testing.assert_array_equal(got[gm], fg[gm])
        np.testing.assert_array_equal(got[~gm], canvas[~gm])
    ident = m[(m["transform"] == "identity") & (m["instance"] == "a")].iloc[0]
    gm = _load(out, ident.mask_path) == 255
    ys, xs = np.nonzero(gm)  # the 25x12 box scaled to 0.5 * 32 = 16 px on its longer side
    assert ys.max() - ys.min() + 1 == 16 and abs((xs.max() - xs.min() + 1) - 12 * 16 / 25) <= 1
    assert transform_params(specs["rotate"], 0, "a") == json.loads(
        m[(m["transform"] == "rotate") & (m["instance"] == "a")]["params"].iloc[0]
    )
    (inst_dir / "red thing" / "a.mask.png").unlink()
    with pytest.raises(ValueError, match="no mask"):
        covar.folder_instances(inst_dir)
    assert cli_main(["covar", "build", "--source", "folders", "--out", str(out)]) == 2


def test_csv_manifest_without_pyarrow(tmp_path, monkeypatch):
    import captum_clip.storage.files as io

    monkeypatch.setattr(io, "has_parquet", lambda: False)
    inst, bgs = _sources()
    res = covar.build(tmp_path / "csv", inst[:1], bgs[:1], size=SIZE, object_size=None,
                      show_progress=False)  # fmt: skip
    assert (tmp_path / "csv" / "manifest.csv").is_file()
    assert not (tmp_path / "csv" / "manifest.parquet").exists()
    pd.testing.assert_frame_equal(covar.load_manifest(tmp_path / "csv"), res.manifest)
    again = covar.build(tmp_path / "csv", inst[:1], bgs[:1], size=SIZE, object_size=None,
                        show_progress=False)  # fmt: skip
    assert again.written == 0 and again.skipped == 12
