"""The one model-spec grammar of the library and the CLI, and its loader.

A model spec is a string::

    testbed                      bundled testbed model, variant "default"
    testbed:VARIANT              a testbed zoo variant ("shortcut", ...)
    testbed:VARIANT:FILE         a zoo architecture with weights from a local file
    NAME                         open_clip architecture with RANDOM weights (no download)
    NAME:TAG                     open_clip pretrained tag ("ViT-B-32:openai"; downloads once)
    NAME:FILE                    open_clip architecture + local checkpoint (no download)
    hf:DIR                       Hugging Face CLIPModel folder (or cached hub id)

``NAME:X`` is a checkpoint when ``X`` is an existing file, contains a path separator or
ends in ``.pt``/``.pth``/``.bin``/``.safetensors``; otherwise it is a pretrained tag.
:func:`parse_model_spec` checks names, variants and tags without loading anything;
:func:`load_model_spec` (and :func:`captum_clip.models.load_clip`, which accepts the same
strings) loads. :func:`default_templates` gives the zero-shot prompt templates for a spec.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from captum_clip.models.errors import (
    CheckpointNotFoundError,
    ModelLoadError,
    PretrainedUnavailableError,
    check_known_model,
)
from captum_clip.models.heads import DEFAULT_TEMPLATES
from captum_clip.models.loaders import (
    LoadedClip,
    load_hf,
    load_open_clip,
    load_testbed_file,
    load_testbed_variant,
)
from captum_clip.models.pretrained import check_pretrained_reachable

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "DEFAULT_TEMPLATES",
    "TESTBED_TEMPLATES",
    "ModelSpec",
    "PretrainedUnavailableError",
    "default_templates",
    "has_random_weights",
    "load_model_spec",
    "parse_model_spec",
    "resolve_device",
]

#: Zero-shot templates of the testbed models (their first training caption form).
TESTBED_TEMPLATES: tuple[str, ...] = ("a photo of {}",)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
SPEC_GRAMMAR = "testbed[:VARIANT[:FILE]], NAME[:TAG|:CHECKPOINT] (open_clip) or hf:DIR"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec (see the module docstring for the grammar).

    Attributes:
        text: The spec as given (its name in tables and figures).
        family: ``"testbed"``, ``"open_clip"`` or ``"hf"``.
        name: ``"testbed"``, the open_clip architecture, or ``"hf:<folder>"``.
        pretrained: open_clip pretrained tag, if any.
        checkpoint: Local weights file, if any.
        variant: Testbed variant (testbed only).
    """

    text: str
    family: str
    name: str
    pretrained: str | None = None
    checkpoint: str | None = None
    variant: str | None = None

    @property
    def random_weights(self) -> bool:
        """True for an open_clip architecture without pretrained tag or checkpoint."""
        return self.family == "open_clip" and self.pretrained is None and self.checkpoint is None

    @property
    def hub_tokenizer(self) -> str:
        """The Hugging Face hub tokenizer this open_clip architecture downloads on first use
        (SigLIP family), or ``""``: the models a ``--tokenizer`` folder is meant for."""
        if self.family != "open_clip":
            return ""
        from captum_clip.models import registry

        return registry.hub_tokenizer(self.name)

    @property
    def templates(self) -> tuple[str, ...]:
        """Default zero-shot prompt templates for this model."""
        return TESTBED_TEMPLATES if self.family == "testbed" else DEFAULT_TEMPLATES

    def load(
        self, device: str | torch.device = "cpu", tokenizer: Callable | str | None = None
    ) -> LoadedClip:
        """Loads the model (eval mode) with its preprocess and tokenizer on ``device``.

        Args:
            device: Where to put the model (``"auto"``: CUDA when available).
            tokenizer: A tokenizer to use instead of the model's own (a callable, or for
                open_clip architectures a folder with a saved Hugging Face tokenizer).
        """
        device = resolve_device(device)
        if self.pretrained is not None:
            check_pretrained_reachable(self.name, self.pretrained)  # before importing open_clip
        if self.family == "testbed" and self.checkpoint is not None:
            return load_testbed_file(self.variant or "default", self.checkpoint, device, tokenizer)
        if self.family == "testbed":
            return load_testbed_variant(self.variant or "default", device, tokenizer)
        if self.family == "hf":
            return load_hf(self.name[3:], device, tokenizer)
        return load_open_clip(self.name, self.pretrained, self.checkpoint, device, tokenizer)


def _is_checkpoint(part: str) -> bool:
    return (
        os.path.isfile(part)
        or "/" in part
        or os.sep in part
        or part.lower().endswith(CHECKPOINT_SUFFIXES)
    )


def parse_model_spec(
    spec: str | ModelSpec, pretrained: str | None = None, checkpoint: str | None = None
) -> ModelSpec:
    """Parses and checks a model spec without loading weights.

    Args:
        spec: A spec string (module docstring) or a :class:`ModelSpec` (returned as is).
        pretrained: Old-style separate tag (``--pretrained``); only with a bare ``NAME``.
        checkpoint: Old-style separate checkpoint file (``--checkpoint``); likewise.

    Raises:
        ModelLoadError: Unknown architecture, variant or tag (close matches suggested).
        CheckpointNotFoundError: A checkpoint path that does not exist.
    """
    if isinstance(spec, ModelSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise TypeError(f"a model spec must be a non-empty string ({SPEC_GRAMMAR}), got {spec!r}")
    spec = spec.strip()
    if pretrained is not None and checkpoint is not None:
        raise ValueError("give either a pretrained tag or a checkpoint file, not both")
    if spec.startswith("hf:"):
        if pretrained is not None or checkpoint is not None:
            raise ValueError(f"{spec!r} is a Hugging Face folder; it takes no tag or checkpoint")
        if len(spec) == 3:
            raise ModelLoadError("hf: needs a folder or hub id, e.g. hf:./my-clip")
        return ModelSpec(spec, "hf", spec)
    name, sep, rest = spec.partition(":")
    if sep and (pretrained is not None or checkpoint is not None):
        raise ValueError(
            f"model spec {spec!r} already names its weights; drop the separate "
            "pretrained tag / checkpoint (write NAME:TAG or NAME:/path/to/checkpoint.pt)"
        )
    if name == "testbed":
        from captum_clip.testbed.zoo import load_config

        variant, _, path = rest.partition(":") if sep else ("default", "", "")
        variant = variant or "default"
        path = path or checkpoint or ""
        if pretrained is not None:
            raise ValueError(
                f"the testbed takes a variant (testbed:VARIANT), got a tag {pretrained!r}"
            )
        load_config(variant)  # unknown variants fail here, with the known ones listed
        if path and not os.path.isfile(path):
            raise CheckpointNotFoundError(f"testbed checkpoint not found: {path!r} (in {spec!r})")
        return ModelSpec(spec, "testbed", "testbed", checkpoint=path or None, variant=variant)
    from captum_clip.models import registry

    check_known_model(name, registry.list_models(), f"model {name!r} in spec {spec!r}",
                      f"expected {SPEC_GRAMMAR}")  # fmt: skip
    if sep and not rest:
        raise ModelLoadError(f"model spec {spec!r} ends in ':'; write {name}:TAG or {name}:FILE")
    if sep and _is_checkpoint(rest):
        checkpoint = rest
    elif sep:
        pretrained = rest
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise CheckpointNotFoundError(f"checkpoint file not found: {checkpoint!r}")
    if pretrained is not None:
        tags = registry.pretrained_tags(name)
        if pretrained not in tags:
            raise ModelLoadError(
                f"unknown pretrained tag {pretrained!r} for {name!r}; known tags: {tags} "
                "(a checkpoint must be an existing file)"
            )
    return ModelSpec(spec, "open_clip", name, pretrained=pretrained, checkpoint=checkpoint)


def load_model_spec(spec: str | ModelSpec, device: str | torch.device = "cpu") -> LoadedClip:
    """Loads a model spec: ``parse_model_spec(spec).load(device)``."""
    return parse_model_spec(spec).load(device)


def has_random_weights(spec: str | ModelSpec) -> bool:
    """True when ``spec`` parses to an open_clip architecture without weights.

    Anything that is not a valid spec (e.g. a table key of a user's own model) is False.
    """
    try:
        return parse_model_spec(spec).random_weights
    except (ValueError, TypeError):
        return False


def default_templates(spec: str | ModelSpec) -> tuple[str, ...]:
    """Zero-shot prompt templates for a spec: the testbed's for ``testbed*``, else CLIP's."""
    if isinstance(spec, ModelSpec):
        return spec.templates
    name = str(spec).partition(":")[0]
    return TESTBED_TEMPLATES if name == "testbed" else DEFAULT_TEMPLATES


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` → CUDA when available, else CPU; anything else as ``torch.device``."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from err
