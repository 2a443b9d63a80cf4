"""The one entry point of model loading: :func:`load_clip` (names, tags, files, specs)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from captum_clip.models.errors import ModelLoadError, check_known_model
from captum_clip.models.loaders import (
    LoadedClip,
    check_tokenizer,
    load_hf,
    load_open_clip,
    load_testbed_variant,
)
from captum_clip.models.spec import parse_model_spec

__all__ = ["load_clip"]


def load_clip(
    name: str,
    pretrained: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    variant: str | None = None,
    tokenizer: Callable | str | os.PathLike | None = None,
) -> LoadedClip:
    """Load a CLIP model with its preprocess and tokenizer.

    Args:
        name: An open_clip architecture (``"ViT-B-32"``, ``"RN50"``, see
            ``open_clip.list_models()``), ``"testbed"`` for the bundled shapes-testbed
            models, ``"hf:<folder or hub id>"`` for a Hugging Face ``CLIPModel``,
            ``SiglipModel`` or ``Siglip2Model`` (read from the folder's ``model_type``), or a
            whole model spec such as ``"ViT-B-32:openai"``, ``"ViT-B-32:/path/ckpt.pt"`` or
            ``"testbed:shortcut"`` (grammar: :mod:`captum_clip.models.spec`).
        pretrained: An open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``...).
            Downloads weights on first use (needs internet); ``None`` = random init.
        checkpoint: A local checkpoint file (``.pt``/``.bin``/``.safetensors`` state dict)
            for the architecture ``name`` (or a testbed variant); nothing is downloaded.
        device: Where to put the model.
        variant: Testbed zoo variant (``name="testbed"`` only), e.g. ``"shortcut"``.
        tokenizer: Your own tokenizer instead of the model's: a callable
            ``texts -> LongTensor (N, S)``, or a folder with a saved Hugging Face tokenizer
            (open_clip architectures and ``hf:`` folders). open_clip's SigLIP-family
            tokenizers download from the Hugging Face hub on first use; offline, pass a
            local one here (without one, loading fails in seconds with this advice). The
            testbed models take a callable only.

    Returns:
        :class:`LoadedClip` (unpacks as ``model, preprocess, tokenizer``), model in eval mode.
        ``random_weights`` is True when an open_clip architecture got neither a tag nor a
        checkpoint.

    Raises:
        TypeError: ``name`` is not a string, or ``tokenizer`` is neither None, a callable
            nor a folder path.
        ModelLoadError: Unknown name/tag, mismatching checkpoint, or pretrained weights that
            cannot be fetched (:class:`~captum_clip.models.spec.PretrainedUnavailableError`;
            offline this fails in seconds, without retries).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    check_tokenizer(tokenizer, folder_ok=not name.startswith("testbed"))
    if (":" in name and not name.startswith("hf:")) or (name == "testbed" and checkpoint):
        if ":" in name and variant is not None:
            raise ValueError(f"spec {name!r} already names the variant; drop variant=")
        return parse_model_spec(name, pretrained, checkpoint).load(device, tokenizer=tokenizer)
    if name == "testbed":
        return load_testbed_variant(variant or "default", device, tokenizer=tokenizer)
    if variant is not None:
        raise ValueError("variant= is only meaningful with name='testbed'")
    if name.startswith("hf:"):
        return load_hf(name[3:], device, tokenizer=tokenizer)
    import open_clip

    check_known_model(name, open_clip.list_models(), f"model name {name!r}",
                      "not an open_clip architecture, 'testbed', or 'hf:<path>'")  # fmt: skip
    if checkpoint is not None and pretrained is not None:
        raise ValueError("pass either pretrained= (a tag) or checkpoint= (a file), not both")
    if pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags and not os.path.isfile(pretrained):
            raise ModelLoadError(
                f"unknown pretrained tag {pretrained!r} for {name!r}; known tags: {tags}"
            )
    return load_open_clip(name, pretrained, checkpoint, device, tokenizer=tokenizer)
