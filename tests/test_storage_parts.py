"""Tensor parts of the one storage mechanism: identity, checks, atomic writes."""

from __future__ import annotations

import pytest
import torch

from captum_clip.storage import (
    CorruptFileError,
    TensorParts,
    atomic_write,
    identity_hash,
    read_table,
    write_table,
)


def _part(n=3):
    return {"ids": list(range(n)), "x": torch.arange(n * 2.0).reshape(n, 2), "scale": torch.ones(5)}


def test_round_trip_and_identity(tmp_path):
    ident = identity_hash({"model": "sha256:abc", "steps": 4})
    assert ident == identity_hash({"steps": 4, "model": "sha256:abc"})  # key order ignored
    parts = TensorParts(tmp_path, ident, ("scale",), "ids", ("x",))
    path = parts.write("Saliency method", 7, _part())
    assert path == tmp_path / "Saliency_method" / "b0000007.pt"
    got = parts.read("Saliency method", 7)
    torch.testing.assert_close(got["x"], _part()["x"])
    assert got["identity"] == ident and got["ids"] == [0, 1, 2]
    other = TensorParts(tmp_path, identity_hash({"model": "sha256:def", "steps": 4}), ("scale",))
    with pytest.raises(ValueError, match=r"b0000007\.pt' was written by another model"):
        other.read("Saliency method", 7)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p.update(x=torch.zeros(2, 2)), r"x must have 3 rows \(one per ids\)"),
        (lambda p: p["scale"].__setitem__(0, float("nan")), "scale holds NaN or inf"),
        (lambda p: p.pop("scale"), r"needs keys .*'scale'"),
    ],
)
def test_a_bad_part_is_refused_naming_the_file(tmp_path, edit, message):
    parts = TensorParts(tmp_path, "id", ("scale",), "ids", ("x",))
    part = dict(_part(), identity="id")
    edit(part)
    path = parts.path("m", 0)
    path.parent.mkdir(parents=True)
    torch.save(part, path)
    with pytest.raises(CorruptFileError, match=message):
        parts.read("m", 0)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CorruptFileError, match=r"cannot read part file '.*b0000000\.pt'"):
        parts.read("m", 0)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    import pandas as pd

    path = write_table(pd.DataFrame({"a": [1, 2]}), tmp_path / "t.csv")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert read_table(path)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]
    with pytest.raises(ValueError, match="row_tensors need a rows_key"):
        TensorParts(tmp_path, "id", row_tensors=("x",))
