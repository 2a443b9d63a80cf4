"""Resumable part files of the retrieval harness: atomic writes, model identity, checks.

A part holds the results of one method on one fixed batch of images. It is written to a
temporary file and renamed into place (``os.replace``), so a killed run leaves either the
whole part or none, and concurrent writers of the same part (two runs on one folder)
replace it with identical content. Every part carries the *identity* of the run that wrote
it (model fingerprint + settings): a part of another model or other settings is never
counted as done -- resuming into such a folder is refused with a message naming the file.
Parts are read with ``torch.load(weights_only=True)`` (no code runs from a part file).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_clip._resumable import state_dict_digest

__all__ = ["fingerprint_model", "identity_hash", "part_path", "read_part", "write_part"]

#: Keys every part must hold (checked on reading).
PART_KEYS = (
    "identity", "method", "batch", "image_index", "image_ids", "caption_hash", "fractions",
    "clean", "deletion", "insertion", "seconds", "forwards", "autograd",
)  # fmt: skip


def fingerprint_model(model: nn.Module) -> str:
    """The model identity of a run's parts: :func:`captum_clip._resumable.state_dict_digest`."""
    return state_dict_digest(model)


def identity_hash(identity: dict[str, Any]) -> str:
    """Short stable hash of a JSON-serialisable identity dict."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def caption_hash(captions: list[str]) -> str:
    """Hash of one image's captions (a changed captions file recomputes that image)."""
    return hashlib.sha256("\n".join(captions).encode()).hexdigest()[:16]


def part_path(parts_dir: Path, method_slug: str, batch: int) -> Path:
    """``<parts_dir>/<method_slug>/b<batch>.pt``."""
    return parts_dir / method_slug / f"b{batch:07d}.pt"


def write_part(path: Path, part: dict[str, Any]) -> Path:
    """Writes ``part`` atomically (temporary file in the same folder, then rename)."""
    missing = [k for k in PART_KEYS if k not in part]
    if missing:
        raise ValueError(f"a retrieval part needs keys {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(part, tmp)
    os.replace(tmp, path)
    return path


def read_part(path: Path, identity: str) -> dict[str, Any]:
    """Reads and checks one part of this run.

    Raises:
        ValueError: The file is unreadable, lacks keys, has inconsistent shapes, or was
            written by another model or other settings (names the file).
    """
    try:
        part = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign files fail in many ways
        raise ValueError(
            f"cannot read part file {str(path)!r} ({type(err).__name__}: {err}); delete it "
            "to recompute its batch"
        ) from err
    if not isinstance(part, dict) or any(k not in part for k in PART_KEYS):
        got = sorted(part) if isinstance(part, dict) else type(part).__name__
        raise ValueError(f"part file {str(path)!r} is not a retrieval part (keys {got})")
    if part["identity"] != identity:
        raise ValueError(
            f"part file {str(path)!r} was written by another model or other settings "
            f"(identity {part['identity']} != {identity}); use another output folder, or "
            "delete its parts/ folder to start over"
        )
    n = len(part["image_index"])
    s = len(part["fractions"])
    for key in ("deletion", "insertion"):
        v = part[key]
        if not isinstance(v, Tensor) or v.ndim != 3 or v.shape[:2] != (n, s):
            raise ValueError(
                f"part file {str(path)!r}: {key} must be ({n}, {s}, D), got "
                f"{tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}"
            )
        if not torch.isfinite(v).all():
            raise ValueError(f"part file {str(path)!r}: {key} holds NaN or infinite values")
    if not isinstance(part["clean"], Tensor) or part["clean"].shape[0] != n:
        raise ValueError(f"part file {str(path)!r}: clean embeddings do not match its images")
    return part
