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
    "check_tokenizer",
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


def check_tokenizer(tokenizer: Any, folder_ok: bool = True) -> None:
    """The ``tokenizer`` argument of the loaders: None, a callable, or (``folder_ok``) a
    folder path (``str`` / ``os.PathLike``) with a saved Hugging Face tokenizer.

    Raises:
        TypeError: Anything else (the message names the argument, what it takes, what came).
    """
    if tokenizer is None or callable(tokenizer):
        return
    if folder_ok and isinstance(tokenizer, (str, os.PathLike)):
        return
    took = "None (the model's own), a callable texts -> LongTensor (N, S)"
    took += (
        ", or a folder (str / os.PathLike) with a saved Hugging Face tokenizer"
        if folder_ok
        else " (the testbed models take no tokenizer folder)"
    )
    raise TypeError(f"tokenizer must be {took}; got {type(tokenizer).__name__} {tokenizer!r}")


def load_open_clip(
    name: str,
    pretrained: str | None,
    checkpoint: str | os.PathLike | None,
    device: str | torch.device,
    tokenizer: Callable | str | None = None,
) -> LoadedClip:
    """An open_clip architecture with random weights, a pretrained tag or a local file."""
    import open_clip

    check_tokenizer(tokenizer)
    state = None
    if checkpoint is not None:
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise CheckpointNotFoundError(f"checkpoint file not found: {path!r}")
        state = load_state_dict(path)  # unreadable files fail here, before the model
    tok = open_clip_tokenizer(name, tokenizer)  # and a missing tokenizer too
    if pretrained is None:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    else:
        from captum_clip.models.pretrained import create_pretrained

        model, preprocess = create_pretrained(name, pretrained)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ModelLoadError(
                f"checkpoint {path!r} does not match architecture {name!r}: {err}"
            ) from err
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

    check_tokenizer(tokenizer, folder_ok=False)
    model, preprocess, tok = load_testbed(variant, device=device)
    return LoadedClip(model, preprocess, tokenizer or tok, "testbed", variant)


def load_hf(
    path: str, device: str | torch.device, tokenizer: Callable | str | None = None
) -> LoadedClip:
    """A Hugging Face ``CLIPModel``, ``SiglipModel`` or ``Siglip2Model`` (read from the
    folder's ``config.json`` ``model_type``) with its preprocess and tokenizer.

    Args:
        path: A local folder saved with ``save_pretrained`` or a cached hub id.
        device: Where to put the model.
        tokenizer: ``None`` (the folder's own tokenizer), a callable ``texts -> (N, S)`` ids,
            or a folder with a saved Hugging Face tokenizer (padded to the text context).

    Raises:
        ModelLoadError: transformers missing, an unreadable folder / uncached hub id, a
            model type other than CLIP / SigLIP / SigLIP 2, or no tokenizer (with advice).
        TypeError: ``tokenizer`` is none of those.
    """
    check_tokenizer(tokenizer)
    try:
        from transformers import AutoConfig
    except ImportError as err:
        raise ModelLoadError(
            "Hugging Face models need transformers: pip install 'captum-clip[hf]'"
        ) from err
    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except Exception as err:
        raise ModelLoadError(
            f"could not load the Hugging Face config of {path!r}: {err}. Pass a local "
            "folder saved with save_pretrained, or go online once to cache the hub id."
        ) from err
    if model_type == "clip":
        return _load_hf_clip(path, device, tokenizer)
    if model_type in ("siglip", "siglip2"):
        return _load_hf_siglip(path, device, tokenizer)
    raise ModelLoadError(
        f"{path!r} holds a Hugging Face {model_type!r} model; supported: CLIPModel ('clip'), "
        "SiglipModel ('siglip') and Siglip2Model ('siglip2')"
    )


def _hf_text_tokenizer(
    path: str, tokenizer: Callable | str | None, own: object | None, context_length: int
) -> Callable:
    """The user's callable, a tokenizer folder, or the model folder's own tokenizer, as
    ``texts -> LongTensor (N, context_length)``."""
    from captum_clip.models.hf_clip import HFTokenizer

    if callable(tokenizer):
        return tokenizer
    if tokenizer is not None or own is None:
        from transformers import AutoTokenizer

        source = path if tokenizer is None else os.fspath(tokenizer)
        try:
            own = AutoTokenizer.from_pretrained(source)
        except Exception as err:
            raise ModelLoadError(
                f"could not load a Hugging Face tokenizer from {source!r}: {err}. Pass "
                "load_clip(..., tokenizer='folder/') with a tokenizer saved by "
                "save_pretrained (CLI: --tokenizer folder/), or a callable texts -> "
                "LongTensor (N, S)."
            ) from err
    return HFTokenizer(own, context_length)


def _load_hf_clip(
    path: str, device: str | torch.device, tokenizer: Callable | str | None
) -> LoadedClip:
    from transformers import CLIPModel, CLIPProcessor

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

    context = model.config.text_config.max_position_embeddings
    tok = _hf_text_tokenizer(path, tokenizer, processor.tokenizer, context)
    return LoadedClip(model.to(device).eval(), preprocess, tok, "hf:" + path)


def _load_hf_siglip(
    path: str, device: str | torch.device, tokenizer: Callable | str | None
) -> LoadedClip:
    """SigLIP / SigLIP 2: the model through ``AutoModel``; images resized to the tower's
    fixed grid and normalised with the folder's image-processor mean / std (SigLIP's 0.5 /
    0.5 when none is saved); ids padded to ``max_length`` as SigLIP was trained."""
    from torchvision import transforms as T
    from transformers import AutoModel

    from captum_clip.models.hf_siglip import HFSiglipVision

    try:
        model = AutoModel.from_pretrained(path)
    except Exception as err:
        raise ModelLoadError(f"could not load Hugging Face SigLIP {path!r}: {err}") from err
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(path)
        mean, std = tuple(proc.image_mean), tuple(proc.image_std)
    except Exception:  # no preprocessor_config.json: SigLIP's defaults
        pass
    size = HFSiglipVision(model).image_size
    preprocess = T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    context = model.config.text_config.max_position_embeddings
    tok = _hf_text_tokenizer(path, tokenizer, None, context)
    return LoadedClip(model.to(device).eval(), preprocess, tok, "hf:" + path)


def load_testbed_file(
    variant: str, path: str, device: torch.device, tokenizer: Callable | None = None
) -> LoadedClip:
    """A testbed zoo architecture with weights from a local file."""
    from captum_clip.testbed.zoo import TestbedPreprocess, build_model, build_tokenizer, load_config

    check_tokenizer(tokenizer, folder_ok=False)
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
