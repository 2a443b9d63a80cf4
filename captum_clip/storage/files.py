"""Files on disk: atomic writes, Parquet/CSV tables, file-name-safe names.

Every file a resumable run writes (a table, a table part, a tensor part) goes through
:func:`atomic_write`: a temporary file no other writer uses, then a rename, so a reader
sees the whole file or none and a killed writer leaves no half-written file behind.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import pandas as pd

__all__ = [
    "CorruptFileError",
    "atomic_write",
    "find_table",
    "has_parquet",
    "read_table",
    "slug",
    "table_path",
    "write_table",
]


class CorruptFileError(ValueError):
    """A stored result file (table, table part, tensor part) is unreadable or fails its checks."""


def atomic_write(path: str | os.PathLike, save: Callable[[Path], None]) -> Path:
    """Calls ``save(tmp)`` on a temporary file beside ``path``, then renames it to ``path``.

    The temporary name is unique per process and call (pid + random token), so writers of
    the same path never share one; it starts with ``.`` and ends in ``.tmp``, so listings
    of parts skip it. The temporary file is removed if ``save`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def has_parquet() -> bool:
    """Whether pandas can write Parquet here (pyarrow installed)."""
    return importlib.util.find_spec("pyarrow") is not None


def table_path(directory: str | os.PathLike, stem: str) -> Path:
    """``<directory>/<stem>.parquet`` (or ``.csv`` without pyarrow)."""
    return Path(directory) / f"{stem}.{'parquet' if has_parquet() else 'csv'}"


def find_table(directory: str | os.PathLike, stem: str) -> Path | None:
    """The existing ``<stem>.parquet`` or ``<stem>.csv`` in ``directory``, else ``None``."""
    for ext in ("parquet", "csv"):
        p = Path(directory) / f"{stem}.{ext}"
        if p.is_file():
            return p
    return None


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Reads a Parquet or CSV table."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    raise ValueError(f"expected a .parquet or .csv table, got {str(path)!r}")


def write_table(df: pd.DataFrame, path: str | os.PathLike, index: bool = False) -> Path:
    """Writes ``df`` atomically (:func:`atomic_write`) as Parquet or CSV by suffix."""
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"expected a .parquet or .csv path, got {str(path)!r}")
    if path.suffix == ".parquet":
        return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=index))
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=index))


def slug(text: str) -> str:
    """File-name-safe form of ``text``: runs of other characters become ``_``."""
    out = re.sub(r"[^A-Za-z0-9.\-]+", "_", str(text)).strip("_")
    if not out:
        raise ValueError(f"cannot make a file name from {text!r}")
    return out
