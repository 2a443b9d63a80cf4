"""Tables on disk: Parquet when pyarrow is installed, else CSV; atomic writes.

Used by COVAR folders and by :mod:`captum_clip._resumable` (resumable result tables).
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
from pathlib import Path

import pandas as pd

__all__ = ["find_table", "has_parquet", "read_table", "slug", "table_path", "write_table"]


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


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Writes ``df`` atomically (temporary file, then rename) as Parquet or CSV by suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"expected a .parquet or .csv path, got {str(path)!r}")
    # unique per process and call: two writers never share a temporary file
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def slug(text: str) -> str:
    """File-name-safe form of ``text``: runs of other characters become ``_``."""
    out = re.sub(r"[^A-Za-z0-9.\-]+", "_", str(text)).strip("_")
    if not out:
        raise ValueError(f"cannot make a file name from {text!r}")
    return out
