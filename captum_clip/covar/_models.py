"""Model specs of ``covar eval``: strings like ``"testbed:shortcut"`` or loaded models."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEntry", "resolve_model"]

TESTBED_TEMPLATES: tuple[str, ...] = ("a photo of {}",)
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


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
    """

    key: str
    model: nn.Module | None = None
    preprocess: Callable | None = None
    tokenizer: Callable | None = None
    templates: Sequence[str] | None = None
    loader: Callable[[], Any] | None = None

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


def _split_spec(spec: str) -> tuple[str, str | None]:
    if spec.startswith("hf:"):
        return spec, None
    name, sep, tag = spec.partition(":")
    return name, (tag if sep else None)


def resolve_model(spec: str | ModelEntry, device: Any = "cpu") -> ModelEntry:
    """Turns a model spec into a lazily loaded :class:`ModelEntry`.

    Specs: ``"testbed"`` / ``"testbed:<variant>"`` (zoo), ``"testbed:<variant>:<file>"``
    (a zoo architecture with weights from a local file), ``"<open_clip name>"`` (random
    weights), ``"<open_clip name>:<pretrained tag>"`` (downloads on first use),
    ``"<open_clip name>:<path to checkpoint>"`` (local file), ``"hf:<folder>"``.
    """
    if isinstance(spec, ModelEntry):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise TypeError(f"a model spec must be a non-empty string or ModelEntry, got {spec!r}")
    from captum_clip.models import load_clip

    name, tag = _split_spec(spec)
    if name == "testbed":
        from captum_clip.testbed.zoo import load_config

        variant, _, path = (tag or "default").partition(":")
        load_config(variant)  # unknown variants fail now, not after other models ran
        if path:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"testbed checkpoint not found: {path!r} (in {spec!r})")
            return ModelEntry(
                spec, templates=TESTBED_TEMPLATES, loader=lambda: _testbed_file(variant, path)
            )
        return ModelEntry(
            spec,
            templates=TESTBED_TEMPLATES,
            loader=lambda: load_clip("testbed", variant=variant, device=device),
        )
    if name.startswith("hf:"):
        return ModelEntry(spec, loader=lambda: load_clip(name, device=device))
    import open_clip

    if name not in open_clip.list_models():  # fail now, not after other models ran
        from captum_clip.models import ModelLoadError

        raise ModelLoadError(
            f"unknown model {name!r} in spec {spec!r}: expected testbed[:<variant>], "
            "hf:<folder> or an open_clip name (open_clip.list_models())"
        )
    if tag is not None and (
        os.path.isfile(tag) or os.sep in tag or tag.endswith((".pt", ".bin", ".safetensors"))
    ):
        return ModelEntry(spec, loader=lambda: load_clip(name, checkpoint=tag, device=device))
    return ModelEntry(spec, loader=lambda: load_clip(name, pretrained=tag, device=device))


def _testbed_file(variant: str, path: str) -> tuple:
    from captum_clip.models import ModelLoadError, _load_state_dict
    from captum_clip.testbed.zoo import TestbedPreprocess, build_model, build_tokenizer, load_config

    cfg = load_config(variant)
    model = build_model(cfg)
    try:
        model.load_state_dict({k: v.float() for k, v in _load_state_dict(path).items()})
    except RuntimeError as err:
        raise ModelLoadError(
            f"checkpoint {path!r} does not match testbed variant {variant!r}: {err}"
        ) from err
    image_size = int(cfg["model"]["vision_cfg"]["image_size"])
    return model.eval(), TestbedPreprocess(image_size), build_tokenizer(cfg)
