"""Resumable tables: parts, merges, locks and schema checks under concurrent writers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import captum_clip.storage.tables as rs
from captum_clip.storage import (
    CorruptTableError,
    OutputBusyError,
    ResumableTable,
    TableSchema,
    find_table,
    group_dir_name,
    write_table,
)

SCHEMA = TableSchema(
    columns=("model", "item", "score", "kind"),
    key=("model", "item"),
    ranges={"score": (0.0, 1.0)},
    choices={"kind": frozenset({"a", "b"})},
    not_null=("kind",),
)


def rows(model: str, items, score: float = 0.5) -> pd.DataFrame:
    items = list(items)
    return pd.DataFrame(
        {
            "model": model,
            "item": items,
            "score": score,
            "kind": ["a", "b"] * (len(items) // 2) + ["a"] * (len(items) % 2),
        }  # fmt: skip
    )


def test_parts_merge_dedupe_and_resume(tmp_path):
    t = ResumableTable(tmp_path, SCHEMA)
    assert t.stored().empty and t.merge().empty
    t.write_part(rows("m", [3, 1]), group="m", name="r0-b0")
    t.write_part(rows("m", [2, 1], score=0.9), group="m", name="r0-b0")  # same name: new file
    t.write_part(rows("n", [1]), group="n")
    assert len(t.part_files()) == 3
    got = t.stored(model="m")
    assert sorted(got["item"]) == [1, 2, 3] and len(got) == 3  # item 1 kept once
    merged = t.merge()
    assert list(zip(merged["model"], merged["item"])) == [("m", 1), ("m", 2), ("m", 3), ("n", 1)]
    assert t.part_files() == [] and not t.parts_dir.exists()
    assert (
        float(merged.loc[(merged["model"] == "m") & (merged["item"] == 1), "score"].iloc[0]) == 0.5
    )
    # merged rows come first: a part repeating a merged key does not replace it
    t.write_part(rows("m", [1], score=0.1), group="m")
    again = t.merge()
    pd.testing.assert_frame_equal(again, merged)


def test_group_folders_never_collide(tmp_path):
    a, b = "testbed:default:/x/ck/w.pt", "testbed:default:/x/ck_w.pt"
    assert group_dir_name(a) != group_dir_name(b)
    t = ResumableTable(tmp_path, SCHEMA)
    pa = t.write_part(rows(a, [0]), group=a)
    pb = t.write_part(rows(b, [0]), group=b)
    assert pa.parent != pb.parent
    assert list(t.stored(model=a)["model"]) == [a] and list(t.stored(model=b)["model"]) == [b]


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda d: d.drop(columns="kind"), r"missing \['kind'\]"),
        (lambda d: d.assign(extra=1), r"unexpected \['extra'\]"),
        (lambda d: d.assign(score=7.5), r"'score' must be numbers in \[0.0, 1.0\], got 7.5"),
        (lambda d: d.assign(score="high"), r"'score' must be numbers"),
        (lambda d: d.assign(kind="z"), r"'kind' must be one of \['a', 'b'\], got 'z'"),
        (lambda d: d.assign(kind=None), r"'kind' is empty in row 0"),
        (lambda d: d.assign(item=np.nan), r"'item' is empty"),
    ],
)
def test_schema_check_names_the_file(tmp_path, bad, message):
    t = ResumableTable(tmp_path, SCHEMA)
    t.write_part(rows("m", [0, 1]), group="m")
    path = write_table(bad(rows("m", [5, 6])), t.parts_dir / "m" / "foreign.parquet")
    for call in (t.stored, t.merge):
        with pytest.raises(CorruptTableError, match=message) as info:
            call()
        assert str(path) in str(info.value) and "move it away" in str(info.value)
    assert path.is_file() and len(t.part_files()) == 2  # nothing deleted after the error
    with pytest.raises(CorruptTableError, match="rows for part"):
        t.write_part(bad(rows("m", [7])), group="m")


def test_unreadable_part_and_final_are_named(tmp_path):
    t = ResumableTable(tmp_path, SCHEMA)
    junk = t.parts_dir / "m" / "junk.parquet"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"\x00not a parquet file")
    with pytest.raises(CorruptTableError, match="junk.parquet.*not a readable table"):
        t.stored()
    junk.unlink()
    t.write_part(rows("m", [0]), group="m")
    final = t.out_dir / "results.csv"
    final.write_text("model,item,score,kind\nm,9,0.2,a\n")  # a legal CSV table is read
    assert sorted(t.stored()["item"]) == [0, 9]


def test_two_merges_cannot_interleave(tmp_path, monkeypatch):
    """The bad ordering (both read, then both write and delete) is blocked by the lock."""
    t1, t2 = ResumableTable(tmp_path, SCHEMA), ResumableTable(tmp_path, SCHEMA)
    for i in range(4):
        t1.write_part(rows("m", range(10 * i, 10 * i + 10)), group="m")
    read_done, go_on = threading.Event(), threading.Event()
    real_read_all = ResumableTable._read_all

    def slow_read_all(self):
        out = real_read_all(self)
        if threading.current_thread().name == "first":
            read_done.set()
            assert go_on.wait(10)
        return out

    monkeypatch.setattr(ResumableTable, "_read_all", slow_read_all)
    first = threading.Thread(target=t1.merge, name="first")
    first.start()
    assert read_done.wait(10)
    # while the first merge holds what it read, a writer adds parts and a second merge starts
    late = t2.write_part(rows("n", range(40)), group="n")
    second = threading.Thread(target=t2.merge, name="second")
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waiting for the lock, not merging
    go_on.set()
    first.join(10)
    assert late.is_file()  # the first merge did not read it, so it did not delete it
    second.join(10)
    final = rs.read_table(find_table(tmp_path, "results"))
    assert len(final) == 80 and not final.duplicated(["model", "item"]).any()
    assert t1.part_files() == []


def test_lock_timeout_raises_clear_error(tmp_path):
    holder, waiter = (
        ResumableTable(tmp_path, SCHEMA),
        ResumableTable(tmp_path, SCHEMA, lock_timeout=0.2),
    )
    held, release = threading.Event(), threading.Event()

    def hold():
        with holder.lock():
            held.set()
            release.wait(10)

    th = threading.Thread(target=hold)
    th.start()
    assert held.wait(10)
    with pytest.raises(OutputBusyError, match="in use by another process.*another output folder"):
        waiter.merge()
    release.set()
    th.join(10)
    assert waiter.merge().empty  # free again
    with holder.lock(), holder.lock():  # re-entrant in one thread
        holder.merge()


WRITER = textwrap.dedent(
    """
    import sys, types
    # captum_clip.storage needs only pandas: skip the package __init__ (torch) to start fast
    pkg = types.ModuleType("captum_clip")
    pkg.__path__ = [sys.argv[3]]
    sys.modules["captum_clip"] = pkg
    import pandas as pd
    from captum_clip.storage import ResumableTable, TableSchema

    out, model = sys.argv[1], sys.argv[2]
    schema = TableSchema(columns=("model", "item", "score", "kind"), key=("model", "item"),
                         ranges={"score": (0.0, 1.0)}, choices={"kind": frozenset({"a", "b"})})
    t = ResumableTable(out, schema)
    for i in range(15):
        rows = pd.DataFrame({"model": model, "item": [2 * i, 2 * i + 1], "score": 0.5,
                             "kind": ["a", "b"]})
        t.write_part(rows, group=model)
        if i % 2:
            t.merge()
        t.stored(model=model)
    t.merge()
    assert "torch" not in sys.modules
    """
)


def test_real_processes_writing_and_merging_one_folder(tmp_path):
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "out"), m, str(root / "captum_clip")],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for m in ("p", "q", "p")  # two writers of the same model cooperate
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    final = ResumableTable(tmp_path / "out", SCHEMA).merge()
    assert len(final) == 60 and not final.duplicated(["model", "item"]).any()
    assert sorted(final.loc[final["model"] == "q", "item"]) == list(range(30))
