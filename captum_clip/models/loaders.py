"""The loaders of each model source (open_clip, Hugging Face, testbed) and :class:`LoadedClip`.

Specs (:mod:`captum_clip.models.spec`) and :func:`~captum_clip.models.loading.load_clip` pick
one of these; nothing here parses a spec.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from captum_clip.models.checkpoints import load_state_dict
from captum_clip.models.errors import CheckpointNotFoundError, ModelLoadError

__all__ = [
    "LoadedClip",
    "load_hf",
    "load_open_clip",
    "load_testbed_file",
    "load_testbed_variant",
    "open_clip_tokenizer",
]


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


def load_open_clip(
    name: str,
    pretrained: str | None,
    checkpoint: str | os.PathLike | None,
    device: str | torch.device,
    tokenizer: Callable | str | None = None,
) -> LoadedClip:
    """An open_clip architecture with random weights, a pretrained tag or a local file."""
    import open_clip

    if checkpoint is not None:
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise CheckpointNotFoundError(f"checkpoint file not found: {path!r}")
        state = load_state_dict(path)  # unreadable files fail here, before the model
        tok = open_clip_tokenizer(name, tokenizer)  # and a missing tokenizer too
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ModelLoadError(
                f"checkpoint {path!r} does not match architecture {name!r}: {err}"
            ) from err
    elif pretrained is None:
        tok = open_clip_tokenizer(name, tokenizer)
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    else:
        from captum_clip.models.pretrained import create_pretrained

        tok = open_clip_tokenizer(name, tokenizer)
        model, preprocess = create_pretrained(name, pretrained)
    model = model.to(device).eval()
    random = pretrained is None and checkpoint is None
    return LoadedClip(model, preprocess, tok, name, pretrained, random_weights=random)


def _hub_tokenizer_cached(hub_id: str) -> bool:
    if os.path.isdir(hub_id):
        return True
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return any(
        isinstance(try_to_load_from_cache(hub_id, f), str)
        for f in ("tokenizer.json", "tokenizer_config.json", "spiece.model")
    )


def open_clip_tokenizer(name: str, tokenizer: Callable | str | None = None) -> Callable:
    """The tokenizer of open_clip architecture ``name``, or the user's ``tokenizer``.

    Args:
        name: An open_clip architecture.
        tokenizer: ``None`` (open_clip's own), a callable (used as is) or a local folder
            holding a Hugging Face tokenizer (``save_pretrained``), wrapped with the
            architecture's context length and text cleaning.

    Raises:
        ModelLoadError: The architecture's tokenizer is a Hugging Face hub download
            (SigLIP, SigLIP 2, MobileCLIP 2, ...) that is not cached while the hub cannot
            be reached; the message says how to pass a local one. Fails in seconds.
    """
    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    text_cfg = cfg.get("text_cfg", {})
    if callable(tokenizer):
        return tokenizer
    if tokenizer is not None:
        folder = os.fspath(tokenizer)
        if not os.path.isdir(folder):
            raise ModelLoadError(
                f"tokenizer must be a callable or a folder with a saved Hugging Face "
                f"tokenizer, got {folder!r} (not a folder)"
            )
        from open_clip.tokenizer import HFTokenizer

        return HFTokenizer(
            folder,
            context_length=int(text_cfg.get("context_length", 77)),
            **text_cfg.get("tokenizer_kwargs", {}),
        )
    hub_id = text_cfg.get("hf_tokenizer_name", "")
    if hub_id and not _hub_tokenizer_cached(hub_id):
        from captum_clip.models.pretrained import hub_unreachable_reason

        reason = hub_unreachable_reason()
        if reason is not None:
            raise ModelLoadError(
                f"{name!r} tokenizes with the Hugging Face tokenizer {hub_id!r}, which "
                f"downloads on first use, but {reason} and it is not in the local cache. "
                f"Save it on a machine with internet (AutoTokenizer.from_pretrained({hub_id!r})"
                ".save_pretrained('tok/')) and pass load_clip(..., tokenizer='tok/') "
                "(CLI: --tokenizer tok/), or pass any callable texts -> LongTensor (N, S)."
            )
    try:
        return open_clip.get_tokenizer(name)
    except Exception as err:  # hub errors come in many types
        raise ModelLoadError(
            f"could not load the tokenizer of {name!r} ({hub_id or 'open_clip'}): {err}. "
            "Pass a local one: load_clip(..., tokenizer='folder/') (CLI: --tokenizer folder/)."
        ) from err


def load_testbed_variant(
    variant: str, device: str | torch.device, tokenizer: Callable | None = None
) -> LoadedClip:
    """A bundled (or cached) testbed zoo variant."""
    from captum_clip.testbed.zoo import load_testbed

    model, preprocess, tok = load_testbed(variant, device=device)
    return LoadedClip(model, preprocess, tokenizer or tok, "testbed", variant)


def load_hf(path: str, device: str | torch.device, tokenizer: Callable | None = None) -> LoadedClip:
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as err:
        raise ModelLoadError(
            "Hugging Face models need transformers: pip install 'captum-clip[hf]'"
        ) from err
    from captum_clip.models.hf_clip import HFTokenizer

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

    tok = tokenizer or HFTokenizer(
        processor.tokenizer, model.config.text_config.max_position_embeddings
    )
    return LoadedClip(model.to(device).eval(), preprocess, tok, "hf:" + path)


def load_testbed_file(
    variant: str, path: str, device: torch.device, tokenizer: Callable | None = None
) -> LoadedClip:
    """A testbed zoo architecture with weights from a local file."""
    from captum_clip.testbed.zoo import TestbedPreprocess, build_model, build_tokenizer, load_config

    cfg = load_config(variant)
    model = build_model(cfg)
    try:
        model.load_state_dict({k: v.float() for k, v in load_state_dict(path).items()})
    except RuntimeError as err:
        raise ModelLoadError(
            f"checkpoint {path!r} does not match testbed variant {variant!r}: {err}"
        ) from err
    image_size = int(cfg["model"]["vision_cfg"]["image_size"])
    return LoadedClip(
        model.to(device).eval(),
        TestbedPreprocess(image_size),
        tokenizer or build_tokenizer(cfg),
        "testbed",
        variant,
    )
