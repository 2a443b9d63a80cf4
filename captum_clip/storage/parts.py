"""Tensor results written in parts, each tagged with the identity of the run that wrote it.

The tensor counterpart of :class:`~captum_clip.storage.tables.ResumableTable` (same
guarantees, same file machinery): a part is one dict of tensors and lists per
``(group, index)`` -- the retrieval harness writes one per (method, batch) --
stored as ``<root>/<group>/b<index>.pt``.

* Written with :func:`~captum_clip.storage.files.atomic_write`: a killed run leaves the
  whole part or none; concurrent writers of the same part (two runs on one folder, a
  rerun while the first still goes) replace it with identical content.
* Every part carries the run's *identity* (model fingerprint + settings,
  :func:`~captum_clip.storage.identity.identity_hash`): a part of another model or other
  settings is never counted as done -- reading it raises a ``ValueError`` naming the file.
* Read with ``torch.load(weights_only=True)`` (no code runs from a part file) and checked:
  the required keys, finite tensors, one row per item of ``rows_key`` in ``row_tensors``;
  a file that fails is a :class:`~captum_clip.storage.files.CorruptFileError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from captum_clip.storage.files import CorruptFileError, atomic_write, slug

__all__ = ["TensorParts"]


class TensorParts:
    """The tensor parts of one run in ``root``.

    Args:
        root: Folder of the parts (created on the first write).
        identity: The run's identity; written into every part and required on reading.
        keys: Keys every part must hold (besides ``"identity"``).
        rows_key: Key of the list that names a part's items (its length is the number of
            rows of each tensor in ``row_tensors``).
        row_tensors: Keys of tensors with one row per item.

    Example:
        >>> parts = TensorParts("out/parts", identity_hash({"model": digest}), ("x",), "ids", ("x",))
        >>> parts.write("Saliency", 0, {"ids": [3, 4], "x": torch.zeros(2, 5)})  # doctest: +SKIP
        >>> parts.read("Saliency", 0)["x"].shape                                 # doctest: +SKIP
        torch.Size([2, 5])
    """

    def __init__(
        self,
        root: str | os.PathLike,
        identity: str,
        keys: Sequence[str] = (),
        rows_key: str | None = None,
        row_tensors: Sequence[str] = (),
    ) -> None:
        if not isinstance(identity, str) or not identity:
            raise ValueError(f"identity must be a non-empty string, got {identity!r}")
        self.root = Path(root)
        self.identity = identity
        if row_tensors and rows_key is None:
            raise ValueError("row_tensors need a rows_key naming the items of a part")
        extra = [k for k in (rows_key, *row_tensors) if k is not None and k not in keys]
        self.keys = tuple(keys) + tuple(dict.fromkeys(extra))
        self.rows_key = rows_key
        self.row_tensors = tuple(row_tensors)

    def path(self, group: str, index: int) -> Path:
        """``<root>/<slug(group)>/b<index, 7 digits>.pt``."""
        return self.root / slug(group) / f"b{int(index):07d}.pt"

    def exists(self, group: str, index: int) -> bool:
        """Whether the part is on disk (not yet whether it is this run's: see :meth:`read`)."""
        return self.path(group, index).is_file()

    def write(self, group: str, index: int, part: dict[str, Any]) -> Path:
        """Writes ``part`` (plus this run's identity) atomically and returns its path."""
        missing = [k for k in self.keys if k not in part]
        if missing:
            raise ValueError(f"a part needs the keys {list(self.keys)}; missing {missing}")
        import torch

        blob = dict(part, identity=self.identity)
        return atomic_write(self.path(group, index), lambda tmp: torch.save(blob, tmp))

    def read(self, group: str, index: int) -> dict[str, Any]:
        """Reads and checks one part of this run.

        Raises:
            CorruptFileError: Unreadable, lacking keys, tensors with the wrong number of
                rows or with NaN/infinite values (names the file).
            ValueError: Written by another model or other settings (names the file).
        """
        import torch

        path = self.path(group, index)
        try:
            part = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated or foreign files fail in many ways
            raise CorruptFileError(
                f"cannot read part file {str(path)!r} ({type(err).__name__}: {err}); delete it "
                "to recompute it"
            ) from err
        need = ("identity", *self.keys)
        if not isinstance(part, dict) or any(k not in part for k in need):
            got = sorted(part) if isinstance(part, dict) else type(part).__name__
            raise CorruptFileError(f"part file {str(path)!r} needs keys {list(need)}, has {got}")
        if part["identity"] != self.identity:
            raise ValueError(
                f"part file {str(path)!r} was written by another model or other settings "
                f"(identity {part['identity']} != {self.identity}); use another output folder, "
                "or delete its parts to start over"
            )
        for key in self.row_tensors:
            v, n = part[key], len(part[self.rows_key])
            if not isinstance(v, torch.Tensor) or v.ndim == 0 or v.shape[0] != n:
                shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise CorruptFileError(
                    f"part file {str(path)!r}: {key} must have {n} rows (one per "
                    f"{self.rows_key}), got {shape}"
                )
        for key, v in part.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not v.isfinite().all():
                raise CorruptFileError(f"part file {str(path)!r}: {key} holds NaN or inf values")
        return part
