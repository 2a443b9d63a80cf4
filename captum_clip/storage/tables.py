"""Resumable result tables (rows) that any number of processes may write at once.

A long run (``covar eval``, ``faithfulness retrieval``...) writes its rows in chunks
("parts") as it goes and merges them into one table at the end; a rerun skips the rows
already stored. :class:`ResumableTable` does the bookkeeping in an output folder::

    <out>/<stem>.parquet                 merged rows (``.csv`` without pyarrow)
    <out>/parts/<group>/<name>-<run>.*   rows not merged yet (one group per model, say)
    <out>/.<stem>.lock                   lock file (empty; kept)

Rules that make concurrent writers safe (two ``covar eval`` on the same ``--out``, ranks of
``torchrun``, a rerun started while the first is still going):

* :meth:`~ResumableTable.write_part` needs no lock: every part gets a name no other process
  or call uses (host, pid, a random token, a counter) and is written with
  :func:`~captum_clip.storage.files.atomic_write`, so a reader sees a complete part or none.
* :meth:`~ResumableTable.stored` and :meth:`~ResumableTable.merge` hold an exclusive lock on
  the folder (``fcntl.flock`` / ``msvcrt.locking``; released by the OS when a process dies,
  so a crash never leaves a stale lock; :mod:`captum_clip.storage.locks`). A second process waits for it, at most
  ``lock_timeout`` seconds, then raises :class:`OutputBusyError`.
* A merge reads the merged table and every part, writes the new table atomically, and only
  then deletes exactly the parts it read. A part written during the merge is left for the
  next merge. Rows with the same key are kept once (the merged table first, then parts in
  name order), so two processes that computed the same rows cooperate instead of losing
  or duplicating them.
* Every table read is checked against a :class:`TableSchema` (columns, value ranges,
  allowed values); a file that fails raises :class:`CorruptTableError` naming it.

Example:
    >>> schema = TableSchema(columns=("model", "image_id", "score"), key=("model", "image_id"),
    ...                      ranges={"score": (0.0, 1.0)})
    >>> table = ResumableTable("out", schema)                    # doctest: +SKIP
    >>> done = set(table.stored(model="m")["image_id"])           # doctest: +SKIP
    >>> table.write_part(new_rows, group="m")                    # doctest: +SKIP
    >>> results = table.merge()                                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from captum_clip.storage.files import (
    CorruptFileError,
    find_table,
    read_table,
    slug,
    table_path,
    write_table,
)
from captum_clip.storage.locks import folder_lock

__all__ = ["CorruptTableError", "ResumableTable", "TableSchema", "group_dir_name"]

_RUN_ID = f"{slug(socket.gethostname())[:20]}-{os.getpid()}-{secrets.token_hex(3)}"
_COUNTER = itertools.count()


class CorruptTableError(CorruptFileError):
    """A stored table or table part does not have the expected columns or values."""


@dataclass(frozen=True)
class TableSchema:
    """What every row of a resumable table must look like.

    Attributes:
        columns: All columns, in the order of the merged table.
        key: Columns that identify a row (unique in the merged table, never null).
        ranges: ``{column: (low, high)}``: numeric, inside the closed interval (NaN allowed
            unless the column is in ``not_null``).
        choices: ``{column: allowed values}`` (null allowed unless in ``not_null``).
        not_null: Further columns that must hold a value in every row.
    """

    columns: tuple[str, ...]
    key: tuple[str, ...]
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    choices: Mapping[str, frozenset] = field(default_factory=dict)
    not_null: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [c for c in (*self.key, *self.ranges, *self.choices, *self.not_null)
                   if c not in self.columns]  # fmt: skip
        if unknown or not self.key or len(set(self.columns)) != len(self.columns):
            raise ValueError(
                f"a schema needs unique columns, a non-empty key and checks on its own "
                f"columns; got columns {self.columns}, key {self.key}, unknown {unknown}"
            )

    def check(self, df: pd.DataFrame, source: str | os.PathLike) -> pd.DataFrame:
        """``df`` with its columns in schema order, or :class:`CorruptTableError` naming ``source``."""
        hint = (
            "; it was written by another version or edited by hand: move it away (or "
            "delete it) to have its rows computed again"
        )
        missing = [c for c in self.columns if c not in df.columns]
        extra = [c for c in df.columns if c not in self.columns]
        if missing or extra:
            raise CorruptTableError(
                f"{str(source)!r}: expected columns {list(self.columns)}, missing {missing}, "
                f"unexpected {extra}{hint}"
            )
        for col in (*self.key, *self.not_null):
            if df[col].isna().any():
                row = int(df[col].isna().to_numpy().argmax())
                raise CorruptTableError(
                    f"{str(source)!r}: column {col!r} is empty in row {row}{hint}"
                )
        for col, (lo, hi) in self.ranges.items():
            values = pd.to_numeric(df[col], errors="coerce").astype(float)
            bad = (values.isna() & df[col].notna()) | (values < lo) | (values > hi)
            if bad.any():
                row = int(bad.to_numpy().argmax())
                raise CorruptTableError(
                    f"{str(source)!r}: column {col!r} must be numbers in [{lo}, {hi}], got "
                    f"{_plain(df[col].iloc[row])!r} in row {row}{hint}"
                )
        for col, allowed in self.choices.items():
            bad = df[col].notna() & ~df[col].isin(list(allowed))
            if bad.any():
                row = int(bad.to_numpy().argmax())
                raise CorruptTableError(
                    f"{str(source)!r}: column {col!r} must be one of {sorted(map(str, allowed))}, "
                    f"got {_plain(df[col].iloc[row])!r} in row {row}{hint}"
                )
        return df[list(self.columns)]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def group_dir_name(group: str) -> str:
    """Folder name of a part group: readable prefix + hash of the full string.

    Two groups never share a folder even when their readable forms agree
    (``"a:/x/ck/w.pt"`` and ``"a:/x/ck_w.pt"``).
    """
    digest = hashlib.sha256(str(group).encode()).hexdigest()[:12]
    return f"{slug(group)[:80]}-{digest}"


class ResumableTable:
    """A result table in ``out_dir`` written in parts by any number of processes.

    Args:
        out_dir: Output folder (created on the first write).
        schema: Columns, key and checks of the rows.
        stem: File name of the merged table (``<stem>.parquet`` or ``.csv``).
        lock_timeout: Seconds to wait for another process's lock before
            :class:`OutputBusyError` (locks are held only while reading or merging).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        schema: TableSchema,
        stem: str = "results",
        lock_timeout: float = 600.0,
    ) -> None:
        if not isinstance(schema, TableSchema):
            raise TypeError(f"schema must be a TableSchema, got {type(schema).__name__}")
        if not isinstance(lock_timeout, (int, float)) or not lock_timeout >= 0:
            raise ValueError(f"lock_timeout must be a number >= 0, got {lock_timeout!r}")
        self.out_dir = Path(out_dir)
        self.schema = schema
        self.stem = slug(stem)
        self.lock_timeout = float(lock_timeout)
        self._held = threading.local()

    @property
    def parts_dir(self) -> Path:
        """``<out_dir>/parts``."""
        return self.out_dir / "parts"

    @property
    def lock_path(self) -> Path:
        """``<out_dir>/.<stem>.lock``."""
        return self.out_dir / f".{self.stem}.lock"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Holds the folder's exclusive lock (re-entrant within one thread).

        Raises:
            OutputBusyError: Another process held it for more than ``lock_timeout`` s.
        """
        depth = getattr(self._held, "depth", 0)
        if depth:
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        with folder_lock(self.lock_path, self.lock_timeout):
            self._held.depth = 1
            try:
                yield
            finally:
                self._held.depth = 0

    def part_files(self) -> list[Path]:
        """Parts not merged yet, sorted by path (temporary files excluded)."""
        if not self.parts_dir.is_dir():
            return []
        files = [p for p in self.parts_dir.glob("*/*")
                 if p.suffix in (".parquet", ".csv") and not p.name.startswith(".")]  # fmt: skip
        return sorted(files)

    def _read(self, path: Path) -> pd.DataFrame:
        try:
            df = read_table(path)
        except CorruptTableError:
            raise
        except Exception as err:  # truncated or foreign files come in many error types
            raise CorruptTableError(
                f"{str(path)!r} is not a readable table ({type(err).__name__}: {err}); move "
                "it away (or delete it) to have its rows computed again"
            ) from err
        return self.schema.check(df, path)

    def _read_all(self) -> tuple[pd.DataFrame, Path | None, list[Path]]:
        final = find_table(self.out_dir, self.stem)
        parts = self.part_files()
        frames = [self._read(p) for p in ([final] if final is not None else []) + parts]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(columns=list(self.schema.columns)), final, parts
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        return df.drop_duplicates(list(self.schema.key), keep="first"), final, parts

    def stored(self, **match: Any) -> pd.DataFrame:
        """Rows stored so far (merged table and parts) whose columns equal ``match``.

        Example: ``table.stored(model="testbed")``. Sorted by the key; every file read is
        checked against the schema.
        """
        unknown = sorted(set(match) - set(self.schema.columns))
        if unknown:
            raise ValueError(
                f"unknown columns {unknown}; the table has {list(self.schema.columns)}"
            )
        with self.lock():
            df, _, _ = self._read_all()
        for col, value in match.items():
            df = df[df[col] == value]
        return df.sort_values(list(self.schema.key), kind="stable").reset_index(drop=True)

    def write_part(self, rows: pd.DataFrame, group: str, name: str = "part") -> Path:
        """Writes ``rows`` as a new part of ``group`` (no lock needed; atomic).

        Args:
            rows: Rows with the schema's columns (checked before writing).
            group: Which folder under ``parts/`` (e.g. the model's spec); any string.
            name: Readable start of the file name (a unique suffix is added).

        Returns:
            The part's path.
        """
        rows = self.schema.check(rows, f"rows for part {name!r}")
        stem = f"{slug(name)[:60]}-{_RUN_ID}-{next(_COUNTER):05d}"
        path = table_path(self.parts_dir / group_dir_name(group), stem)
        rows = rows.reset_index(drop=True)
        attempt = 0
        while True:
            try:
                return write_table(rows, path)
            except OSError:
                # a merge may have removed the (then empty) folder between mkdir and write
                attempt += 1
                if path.parent.is_dir() or attempt >= 5:
                    raise

    def merge(self) -> pd.DataFrame:
        """Merges every part into ``<stem>`` (sorted by the key) and returns the table.

        Holds the lock; deletes only the parts it merged, after the merged table is written.
        """
        with self.lock():
            df, final, parts = self._read_all()
            key = list(self.schema.key)
            df = df.sort_values(key, kind="stable").reset_index(drop=True)
            target = table_path(self.out_dir, self.stem)
            if parts or final is None or final != target:
                write_table(df, target)
            if final is not None and final != target:
                final.unlink()
            for p in parts:
                p.unlink(missing_ok=True)
            for d in [*sorted({p.parent for p in parts}), self.parts_dir]:
                try:
                    d.rmdir()  # only when empty (write_part retries if it raced this)
                except OSError:
                    pass
        return df
