"""The one model contract: load a CLIP, wrap it as a Captum-ready forward function.

``load_clip`` gives model + preprocess + tokenizer for open_clip names (with pretrained tags
or a local checkpoint), Hugging Face ``CLIPModel`` folders, and the bundled testbed models.
``ClipClassifier`` (zero-shot logits) and ``ClipSimilarity`` (cosine to fixed texts) are
``nn.Module`` forward functions for Captum; both expose the vision tower (:attr:`vision`),
its patch grid and blocks through :class:`ClipAdapter`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from captum_clip._adapter import ClipAdapter, resolve_tower
from captum_clip._heads import (
    DEFAULT_TEMPLATES,
    ClipClassifier,
    ClipSimilarity,
    check_context_length,
    token_strings,
    tokenize,
)
from captum_clip._validate import check_images

__all__ = [
    "ClipAdapter",
    "ClipClassifier",
    "ClipSimilarity",
    "DEFAULT_TEMPLATES",
    "LoadedClip",
    "ModelLoadError",
    "check_context_length",
    "check_images",
    "load_clip",
    "resolve_tower",
    "token_strings",
    "tokenize",
]


class ModelLoadError(ValueError):
    """A model could not be loaded; the message says what was tried and how to fix it."""


class CheckpointNotFoundError(ModelLoadError, FileNotFoundError):
    """The checkpoint file given to :func:`load_clip` does not exist."""


@dataclass
class LoadedClip:
    """What :func:`load_clip` returns. Unpacks as ``model, preprocess, tokenizer``."""

    model: nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str
    pretrained: str | None = None
    random_weights: bool = False
    """True for an open_clip architecture loaded without a pretrained tag or checkpoint."""

    def __iter__(self):
        return iter((self.model, self.preprocess, self.tokenizer))


_REFUSED = (
    "; files that need code to run while loading are refused, not run: save a plain state dict "
    "(torch.save(model.state_dict(), path)) or a .safetensors file"
)


def _read_checkpoint(path: str) -> Any:
    """The object stored in a checkpoint, never running code from it (weights only)."""
    import pickle
    import re
    import warnings

    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as err:
            raise ModelLoadError(
                f"checkpoint {path!r} is not a readable safetensors file ({err}); it may be "
                "truncated or not a checkpoint"
            ) from None
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of foreign files
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL\s+([\w.]+)", str(err))
        if found:
            raise ModelLoadError(
                f"checkpoint {path!r} needs to run code to load (it refers to "
                f"{found.group(1)}){_REFUSED}"
            ) from None
        raise ModelLoadError(
            f"checkpoint {path!r} is not a PyTorch or safetensors checkpoint (its bytes do not "
            f"unpickle as tensors){_REFUSED}"
        ) from None
    except (EOFError, OSError, RuntimeError, ValueError) as err:
        detail = str(err).strip() or type(err).__name__
        raise ModelLoadError(
            f"checkpoint {path!r} could not be read ({detail}); it is truncated, damaged or "
            "not a checkpoint"
        ) from None


def _load_state_dict(path: str) -> dict:
    """A ``{name: tensor}`` state dict from a checkpoint file (see :func:`_read_checkpoint`)."""
    if os.path.isdir(path):
        raise ModelLoadError(f"checkpoint {path!r} is a folder, expected a file")
    sd = _read_checkpoint(path)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(
            f"checkpoint {path!r} does not hold a state dict (a mapping of names to tensors), "
            f"got {type(sd).__name__}"
        )
    return {str(k).removeprefix("module."): v for k, v in sd.items()}


def load_clip(
    name: str,
    pretrained: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    variant: str | None = None,
) -> LoadedClip:
    """Load a CLIP model with its preprocess and tokenizer.

    Args:
        name: An open_clip architecture (``"ViT-B-32"``, ``"RN50"``, see
            ``open_clip.list_models()``), ``"testbed"`` for the bundled shapes-testbed
            models, ``"hf:<folder or hub id>"`` for a Hugging Face ``CLIPModel``, or a
            whole model spec such as ``"ViT-B-32:openai"``, ``"ViT-B-32:/path/ckpt.pt"`` or
            ``"testbed:shortcut"`` (grammar: :mod:`captum_clip.model_spec`).
        pretrained: An open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``...).
            Downloads weights on first use (needs internet); ``None`` = random init.
        checkpoint: A local checkpoint file (``.pt``/``.bin``/``.safetensors`` state dict)
            for the architecture ``name`` (or a testbed variant); nothing is downloaded.
        device: Where to put the model.
        variant: Testbed zoo variant (``name="testbed"`` only), e.g. ``"shortcut"``.

    Returns:
        :class:`LoadedClip` (unpacks as ``model, preprocess, tokenizer``), model in eval mode.
        ``random_weights`` is True when an open_clip architecture got neither a tag nor a
        checkpoint.

    Raises:
        ModelLoadError: Unknown name/tag, mismatching checkpoint, or pretrained weights that
            cannot be fetched (:class:`~captum_clip.model_spec.PretrainedUnavailableError`;
            offline this fails in seconds, without retries).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if (":" in name and not name.startswith("hf:")) or (name == "testbed" and checkpoint):
        from captum_clip.model_spec import parse_model_spec

        if ":" in name and variant is not None:
            raise ValueError(f"spec {name!r} already names the variant; drop variant=")
        return parse_model_spec(name, pretrained, checkpoint).load(device)
    if name == "testbed":
        from captum_clip.testbed.zoo import load_testbed

        model, preprocess, tokenizer = load_testbed(variant or "default", device=device)
        return LoadedClip(model, preprocess, tokenizer, name, variant or "default")
    if variant is not None:
        raise ValueError("variant= is only meaningful with name='testbed'")
    if name.startswith("hf:"):
        return _load_hf(name[3:], device)
    import open_clip

    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelLoadError(
            f"unknown model name {name!r}: not an open_clip architecture, "
            f"'testbed', or 'hf:<path>'.{hint} See open_clip.list_models()."
        )
    if checkpoint is not None and pretrained is not None:
        raise ValueError("pass either pretrained= (a tag) or checkpoint= (a file), not both")
    if checkpoint is not None:
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise CheckpointNotFoundError(f"checkpoint file not found: {path!r}")
        state = _load_state_dict(path)  # unreadable files fail here, before the model
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ModelLoadError(
                f"checkpoint {path!r} does not match architecture {name!r}: {err}"
            ) from err
    else:
        if pretrained is not None:
            tags = open_clip.list_pretrained_tags_by_model(name)
            if pretrained not in tags and not os.path.isfile(pretrained):
                raise ModelLoadError(
                    f"unknown pretrained tag {pretrained!r} for {name!r}; known tags: {tags}"
                )
        if pretrained is None:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        else:
            from captum_clip.model_spec import create_pretrained

            model, preprocess = create_pretrained(name, pretrained)
    model = model.to(device).eval()
    random = pretrained is None and checkpoint is None
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedClip(model, preprocess, tokenizer, name, pretrained, random_weights=random)


def _load_hf(path: str, device: str | torch.device) -> LoadedClip:
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as err:
        raise ModelLoadError(
            "Hugging Face models need transformers: pip install 'captum-clip[hf]'"
        ) from err
    from captum_clip.hf import HFTokenizer

    try:
        model = CLIPModel.from_pretrained(path)
        processor = CLIPProcessor.from_pretrained(path)
    except Exception as err:
        raise ModelLoadError(
            f"could not load Hugging Face CLIP {path!r}: {err}. Pass a local "
            "folder saved with save_pretrained, or go online once to cache "
            "the hub id."
        ) from err

    def preprocess(image: Any) -> Tensor:
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    tok = HFTokenizer(processor.tokenizer, model.config.text_config.max_position_embeddings)
    return LoadedClip(model.to(device).eval(), preprocess, tok, "hf:" + path)
