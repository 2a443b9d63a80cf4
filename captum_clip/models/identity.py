"""Model identity: a spec string (``"testbed:shortcut"``, ``"ViT-B-32:openai"``) or a loaded
model as a lazily loaded :class:`ModelEntry`, and the fingerprint of its weights.

Used by every long run that stores results per model (``covar eval``, the faithfulness
and retrieval harnesses): the fingerprint is stored with each row so that a resumed run
never mixes the rows of two different weights under one name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captum_clip.models.spec import DEFAULT_TEMPLATES, TESTBED_TEMPLATES
from captum_clip.storage import state_dict_digest

__all__ = [
    "DEFAULT_TEMPLATES", "TESTBED_TEMPLATES", "ModelEntry", "resolve_model", "weights_fingerprint"
]  # fmt: skip


@dataclass
class ModelEntry:
    """A model to evaluate.

    Attributes:
        key: Its name in the result tables (the spec string for loaded ones).
        model: open_clip ``CLIP`` or ``transformers.CLIPModel`` (``None`` until loaded).
        preprocess: PIL image → ``(3, H, W)`` model input.
        tokenizer: Texts → token ids.
        templates: Zero-shot prompt templates (``None``: testbed or default templates).
        loader: Zero-argument callable returning ``(model, preprocess, tokenizer)``;
            called only when the model has work to do (resume skips loading).
        fingerprint: Zero-argument callable returning the identity of the weights
            (``"sha256:..."`` of the checkpoint file); see :meth:`identity`.
    """

    key: str
    model: nn.Module | None = None
    preprocess: Callable | None = None
    tokenizer: Callable | None = None
    templates: Sequence[str] | None = None
    loader: Callable[[], Any] | None = None
    fingerprint: Callable[[], str] | None = None
    _identity: str | None = field(default=None, init=False, repr=False, compare=False)

    def identity(self) -> str:
        """What the weights are, stored with every result row (``model_hash``).

        ``"sha256:<16 hex>"`` of the checkpoint file for specs with a file (bundled testbed
        variants included), of the state dict for a model passed in, ``""`` when it cannot be
        known without loading (pretrained tags, random weights, a bare ``loader``). A resumed
        run refuses stored rows of the same key with another known identity.
        """
        if self._identity is None:
            if self.fingerprint is not None:
                self._identity = str(self.fingerprint())
            elif self.model is not None:
                self._identity = state_dict_digest(self.model)
            else:
                self._identity = ""
        return self._identity

    def load(self, device: torch.device) -> ModelEntry:
        """Loads (if needed) and moves the model to ``device`` (a no-op when it is there)."""
        if self.model is None:
            if self.loader is None:
                raise ValueError(f"model {self.key!r} has neither a model nor a loader")
            self.model, self.preprocess, self.tokenizer = tuple(self.loader())[:3]
        if self.preprocess is None or self.tokenizer is None:
            raise ValueError(f"model {self.key!r} needs a preprocess and a tokenizer")
        self.model = self.model.to(device)
        return self


def _files_digest(paths: list[Path]) -> str:
    from captum_clip.storage import file_digest

    if not paths:
        return ""
    if len(paths) == 1:
        return file_digest(paths[0])
    joined = "|".join(f"{p.name}={file_digest(p)}" for p in sorted(paths))
    return "sha256:" + hashlib.sha256(joined.encode()).hexdigest()[:16]


def weights_fingerprint(
    family: str, name: str, variant: str | None = None, checkpoint: str | None = None
) -> str:
    """Identity of the weights a parsed spec loads, without loading them.

    Args:
        family: ``"testbed"``, ``"open_clip"`` or ``"hf"``.
        name: Architecture, or ``"hf:<folder>"``.
        variant: Testbed variant.
        checkpoint: Local weights file, if any.

    Returns:
        ``"sha256:<16 hex>"`` of the checkpoint file (bundled testbed weights, the files of a
        Hugging Face folder), or ``""`` when unknown before loading (pretrained tags, random
        weights, hub ids).
    """
    if checkpoint is not None:
        return _files_digest([Path(checkpoint)] if os.path.isfile(checkpoint) else [])
    if family == "testbed":
        from captum_clip.testbed.zoo import weights_path

        weights = weights_path(variant or "default")
        return _files_digest([weights] if weights.is_file() else [])
    if family == "hf":
        folder = Path(name.removeprefix("hf:"))
        if folder.is_dir():
            return _files_digest(
                [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")]
            )
    return ""


def resolve_model(spec: str | ModelEntry, device: Any = "cpu", tokenizer: Any = None) -> ModelEntry:
    """Turns a model spec into a lazily loaded :class:`ModelEntry`.

    Specs follow :mod:`captum_clip.models.spec` (``testbed[:VARIANT[:FILE]]``,
    ``NAME[:TAG|:CHECKPOINT]``, ``hf:DIR``); they are checked now (unknown names, variants,
    tags and missing files fail before any other model runs) and loaded on first use.
    ``tokenizer`` (a folder with a saved Hugging Face tokenizer, or a callable) replaces the
    tokenizer of architectures whose own one is a hub download (SigLIP family); the other
    models keep theirs.
    """
    if isinstance(spec, ModelEntry):
        return spec
    from captum_clip.models.spec import parse_model_spec

    parsed = parse_model_spec(spec)
    templates = TESTBED_TEMPLATES if parsed.family == "testbed" else None
    fingerprint = None
    if parsed.family != "open_clip" or parsed.checkpoint is not None:
        fingerprint = lambda: weights_fingerprint(  # noqa: E731
            parsed.family, parsed.name, parsed.variant, parsed.checkpoint
        )
    return ModelEntry(
        parsed.text,
        templates=templates,
        loader=lambda: parsed.load(device, tokenizer=tokenizer if parsed.hub_tokenizer else None),
        fingerprint=fingerprint,
    )
