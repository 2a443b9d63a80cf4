"""Identities of what a stored result was computed from: files, model weights, settings.

A resumable run stores an identity with its results and counts a stored result as done
only when the identity matches (:class:`~captum_clip.storage.parts.TensorParts` checks it
on every read; COVAR and retrieval tables carry it in a column or in the part).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

__all__ = ["file_digest", "identity_hash", "state_dict_digest", "text_hash"]

_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """``"sha256:<first 16 hex digits>"`` of a file's bytes (cached by path, size, mtime)."""
    st = os.stat(path)
    cache_key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if cache_key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[cache_key] = "sha256:" + h.hexdigest()[:16]
    return _DIGESTS[cache_key]


def state_dict_digest(model: Any) -> str:
    """``"sha256:<first 16 hex digits>"`` of a model's state dict (names, dtypes, shapes, bytes).

    Exact: equal only when every weight is bit-identical, whatever device it lives on. Used
    as the model identity of resumable runs (COVAR, retrieval).
    """
    import torch  # lazily: writer processes that only merge tables never load torch

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        c = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    return "sha256:" + h.hexdigest()[:16]


def identity_hash(identity: dict[str, Any]) -> str:
    """Short stable hash (16 hex digits) of a JSON-serialisable identity dict."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def text_hash(lines: list[str]) -> str:
    """Short hash of some lines of text (e.g. one image's captions: edited captions are new)."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
