"""``covar eval`` with concurrent writers, model identity on resume, checked part files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import captum_clip.storage.tables as rs
from captum_clip import covar
from captum_clip.cli import main as cli_main
from captum_clip.models import resolve_model
from captum_clip.storage import find_table, read_table, write_table
from captum_clip.testbed import zoo

ev = sys.modules["captum_clip.covar.evaluate"]
CLASSES = ["dots", "horizontal stripes", "vertical stripes"]
FAST = dict(batch_size=2, chunk_batches=1, n_clusters=2, plot=False, show_progress=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("covar_conc") / "data"
    covar.build(out, covar.testbed_instances(1, classes=CLASSES, seed=0),
                covar.testbed_backgrounds(1, seed=0), size=64, object_size=None,
                show_progress=False)  # fmt: skip
    return out


def _ckpt(path: Path, seed: int) -> str:
    cfg = zoo.load_config("default")
    torch.manual_seed(seed)
    return str(zoo.save_weights(zoo.build_model(cfg), cfg, {}, path))


def test_real_processes_on_one_out_keep_every_row_once(root, tmp_path):
    """Two `covar eval` processes with different models write one --out at the same time.

    (Two processes with the same model cooperating: tests/test_resumable.py.)
    """
    out = tmp_path / "shared"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "captum_clip",
                "covar",
                "eval",
                str(root),
                "--models",
                m,
                "--out",
                str(out),
                "--limit",
                "12",
                "--batch-size",
                "2",
                "--chunk-batches",
                "1",
                "--n-clusters",
                "2",
                "--device",
                "cpu",
                "--no-plot",
                "--no-progress",
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for m in ("testbed", "testbed:shortcut")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    res = read_table(find_table(out, "results"))
    assert len(res) == 24 and not res.duplicated(["model", "image_id"]).any()
    assert res.groupby("model").size().to_dict() == {"testbed": 12, "testbed:shortcut": 12}
    assert not any((out / "parts").glob("*/*"))
    summary = read_table(find_table(out, "summary"))
    assert summary.loc[summary["subset"] == "all", "n"].tolist() == [12, 12]
    # the same rows as one process on its own
    alone = ev.evaluate(root, ["testbed"], tmp_path / "alone", limit=12, **FAST).results
    pd.testing.assert_frame_equal(
        res[res["model"] == "testbed"].reset_index(drop=True), alone, check_dtype=False
    )


def test_interleaved_merges_of_two_evaluations(root, tmp_path, monkeypatch):
    """Run A pauses inside its merge; run B evaluates and merges meanwhile: nothing is lost."""
    import threading

    out = tmp_path / "o"
    paused, go_on = threading.Event(), threading.Event()
    real = rs.ResumableTable._read_all

    def slow(self):
        got = real(self)
        if threading.current_thread().name == "A" and not paused.is_set():
            paused.set()
            assert go_on.wait(60)
        return got

    monkeypatch.setattr(rs.ResumableTable, "_read_all", slow)
    done = {}
    a = threading.Thread(name="A", target=lambda: done.setdefault(
        "a", ev.evaluate(root, ["testbed"], out, limit=6, **FAST)))  # fmt: skip
    a.start()
    assert paused.wait(120)  # A holds the lock after reading (its first stored() call)
    b = threading.Thread(name="B", target=lambda: done.setdefault(
        "b", ev.evaluate(root, ["testbed:shortcut"], out, limit=6, **FAST)))  # fmt: skip
    b.start()
    b.join(1.0)
    assert b.is_alive()  # B waits for the lock instead of reading a half-merged folder
    go_on.set()
    a.join(120)
    b.join(120)
    res = read_table(find_table(out, "results"))
    assert len(res) == 12 and not res.duplicated(["model", "image_id"]).any()
    assert done["a"].computed == 6 and done["b"].computed == 6


def test_specs_that_slug_alike_both_get_rows(root, tmp_path):
    (tmp_path / "ck").mkdir()
    a = f"testbed:default:{_ckpt(tmp_path / 'ck' / 'w.safetensors', 0)}"
    b = f"testbed:default:{_ckpt(tmp_path / 'ck_w.safetensors', 1)}"
    assert rs.slug(a) == rs.slug(b)
    r = ev.evaluate(root, [a, b], tmp_path / "o", limit=4, **FAST)
    assert r.computed == 8
    assert r.results.groupby("model").size().to_dict() == {a: 4, b: 4}
    hashes = r.results.groupby("model")["model_hash"].unique()
    assert hashes[a][0] != hashes[b][0] and hashes[a][0].startswith("sha256:")
    # separately, the second spec is evaluated even though the first left parts behind
    out = tmp_path / "p"
    part_rows = r.results[r.results["model"] == a]
    rs.ResumableTable(out, ev.RESULT_SCHEMA).write_part(part_rows, group=a)
    again = ev.evaluate(root, [b], out, limit=4, **FAST)
    assert again.computed == 4 and again.results.groupby("model").size().to_dict() == {a: 4, b: 4}


def test_changed_checkpoint_is_not_taken_for_done(root, tmp_path):
    ck = tmp_path / "w.safetensors"
    spec = f"testbed:default:{_ckpt(ck, 0)}"
    first = ev.evaluate(root, [spec], tmp_path / "o", limit=2, **FAST)
    assert first.computed == 2
    _ckpt(ck, 1)  # other weights under the same path
    with pytest.raises(ValueError, match="computed with other weights.*another --out"):
        ev.evaluate(root, [spec], tmp_path / "o", limit=4, **FAST)
    _ckpt(ck, 0)  # the original weights again: resume skips the stored rows
    assert ev.evaluate(root, [spec], tmp_path / "o", limit=4, **FAST).computed == 2
    assert resolve_model(spec).identity() == first.results["model_hash"].iloc[0]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.drop(columns="category"), r"missing \['category'\]"),
        (lambda d: d.assign(fg_share=7.5), r"'fg_share' must be numbers in \[0.0, 1.0\], got 7.5"),
        (lambda d: d.assign(category="great"), r"'category' must be one of"),
    ],
)
def test_resume_checks_stored_parts(root, tmp_path, edit, message, capsys):
    out = tmp_path / "o"
    table = rs.ResumableTable(out, ev.RESULT_SCHEMA)
    good = ev.evaluate(root, ["testbed"], tmp_path / "ref", limit=4, **FAST).results
    part = table.write_part(good.iloc[:2], group="testbed")
    write_table(edit(read_table(part)), part)
    with pytest.raises(ValueError, match=message) as info:
        ev.evaluate(root, ["testbed"], out, limit=4, **FAST)
    assert str(part) in str(info.value)
    code = cli_main(["covar", "eval", str(root), "--out", str(out), "--limit", "4",
                     "--no-progress", "--no-plot"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(part) in err and "error:" in err


def test_build_manifest_save_keeps_rows_another_builder_recorded(tmp_path):
    """A slower builder's chunk save must not overwrite a fuller manifest on disk."""
    build_mod = sys.modules["captum_clip.covar.build"]
    inst = covar.testbed_instances(1, classes=["dots"], seed=0)
    res = covar.build(tmp_path / "b", inst, covar.testbed_backgrounds(1, seed=0), size=64,
                      object_size=None, show_progress=False)  # fmt: skip
    full = res.manifest
    path = find_table(tmp_path / "b", "manifest")
    plan = full.drop(columns="mask_area")
    done = np.zeros(len(plan), dtype=bool)
    done[:3] = True
    areas = np.where(done, full["mask_area"].to_numpy(), -1)
    saved = build_mod._save_manifest(plan, areas, done, path)  # "its" view: 3 of 12 rows
    pd.testing.assert_frame_equal(saved, full)
    pd.testing.assert_frame_equal(read_table(path), full)
    # a row whose files are gone is not taken from the other builder's manifest
    (tmp_path / "b" / full["image_path"].iloc[5]).unlink()
    saved = build_mod._save_manifest(plan, areas, done, path)
    assert len(saved) == 11 and full["image_id"].iloc[5] not in set(saved["image_id"])


def test_build_never_leaves_a_half_written_image(tmp_path, monkeypatch):
    from PIL import Image

    build_mod = sys.modules["captum_clip.covar.build"]
    real_save = Image.Image.save

    def crash(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        with open(fp, "r+b") as f:
            f.truncate(10)  # half-written
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(Image.Image, "save", crash)
    target = tmp_path / "x" / "img.png"
    with pytest.raises(KeyboardInterrupt):
        build_mod._save_png(np.zeros((8, 8, 3), dtype=np.uint8), target)
    assert not target.exists() and list(target.parent.iterdir()) == []
