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
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from captum_clip.models import (
    DEFAULT_TEMPLATES,
    CheckpointNotFoundError,
    LoadedClip,
    ModelLoadError,
    load_clip,
)

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


class PretrainedUnavailableError(ModelLoadError):
    """Pretrained weights are neither cached nor downloadable (offline, or download failed).

    Attributes:
        name: The open_clip architecture.
        pretrained: The pretrained tag.
        reason: Why they could not be fetched (one line).
    """

    def __init__(self, name: str, pretrained: str, reason: str) -> None:
        self.name, self.pretrained, self.reason = name, pretrained, reason
        super().__init__(
            f"could not load open_clip {name!r} with pretrained={pretrained!r}: {reason}. "
            "Pretrained weights download on first use and need internet access; offline, "
            f"download the file elsewhere and pass load_clip({name!r}, "
            "checkpoint='path/to/file.pt'), or pretrained=None for random weights."
        )

    def cli_message(self) -> str:
        """The same error, with advice in command-line terms."""
        return (
            f"could not load --model {self.name}:{self.pretrained}: {self.reason}. Pretrained "
            "weights download on first use and need internet access. Offline: download the "
            f"checkpoint on a machine with internet and pass --model {self.name}:/path/to/"
            f"checkpoint.pt, or --model {self.name} for random weights (meaningless maps)."
        )


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
    def templates(self) -> tuple[str, ...]:
        """Default zero-shot prompt templates for this model."""
        return TESTBED_TEMPLATES if self.family == "testbed" else DEFAULT_TEMPLATES

    def load(self, device: str | torch.device = "cpu") -> LoadedClip:
        """Loads the model (eval mode) with its preprocess and tokenizer on ``device``."""
        device = resolve_device(device)
        if self.pretrained is not None:
            check_pretrained_reachable(self.name, self.pretrained)  # before importing open_clip
        if self.family == "testbed" and self.checkpoint is not None:
            return _load_testbed_file(self.variant or "default", self.checkpoint, device)
        return load_clip(
            self.name,
            pretrained=self.pretrained,
            checkpoint=self.checkpoint,
            device=device,
            variant=self.variant,
        )


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
    import difflib

    from captum_clip import _open_clip_registry as registry

    known = registry.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelLoadError(
            f"unknown model {name!r} in spec {spec!r}: expected {SPEC_GRAMMAR}.{hint} "
            "See open_clip.list_models()."
        )
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


def _load_testbed_file(variant: str, path: str, device: torch.device) -> LoadedClip:
    from captum_clip.models import _load_state_dict
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
    return LoadedClip(
        model.to(device).eval(),
        TestbedPreprocess(image_size),
        build_tokenizer(cfg),
        "testbed",
        variant,
    )


# --- pretrained weights: fail fast offline -------------------------------------------------


def hub_unreachable_reason(timeout: float = 2.0) -> str | None:
    """Why the Hugging Face hub cannot be reached, or ``None`` when it answers.

    ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` count as offline; otherwise one TCP connect
    to the hub's host (``HF_ENDPOINT`` or huggingface.co) with a ``timeout`` (DNS included,
    run in a thread so a slow resolver cannot stall), no retries.
    """
    from urllib.parse import urlparse

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result: list[BaseException | None] = []

    def probe() -> None:
        import socket

        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as err:
            result.append(err)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    if not result:
        return f"{host} did not answer within {timeout:.0f} s"
    if result[0] is not None:
        return f"{host} is unreachable ({result[0]})"
    return None


@contextmanager
def _hub_cache_only() -> Iterator[None]:
    """huggingface_hub's offline mode for one call: cached files or an immediate error."""
    try:
        from huggingface_hub import constants
    except ImportError:  # open_clip then downloads from its URLs; nothing to switch
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def weights_cached(name: str, pretrained: str) -> bool | None:
    """Whether open_clip's weights for ``name``/``pretrained`` are in the local caches.

    Looks where open_clip would download them (the Hugging Face cache for ``hf_hub``
    entries, ``~/.cache/clip`` for URLs) without building the model; ``None`` when the tag
    has no pretrained config (e.g. a file path).
    """
    from captum_clip import _open_clip_registry as registry

    cfg = registry.pretrained_cfg(name, pretrained)
    if not cfg:
        return None
    if cfg.get("file"):
        return os.path.isfile(cfg["file"])
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            hub = ""
    if hub:
        model_id, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename, filename.rsplit(".", 1)[0] + ".safetensors"]
        if filename == "open_clip_pytorch_model.bin":
            candidates.append("open_clip_model.safetensors")
        if any(isinstance(try_to_load_from_cache(model_id, f), str) for f in candidates):
            return True
    url = cfg.get("url", "")
    if url:
        return os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), url.split("/")[-1]))
    return False


def check_pretrained_reachable(name: str, pretrained: str) -> str | None:
    """Raises :class:`PretrainedUnavailableError` when the hub is unreachable and the
    weights are not cached; else returns why the hub is unreachable (``None``: online)."""
    reason = hub_unreachable_reason()
    if reason is not None and weights_cached(name, pretrained) is False:
        raise PretrainedUnavailableError(
            name, pretrained, f"{reason} and the weights are not in the local cache"
        )
    return reason


def create_pretrained(name: str, pretrained: str) -> tuple[Any, Any]:
    """``(model, preprocess)`` of open_clip with pretrained weights, failing fast offline.

    When the hub is unreachable only cached weights are used (no retries), and weights that
    are not cached fail before the model is built; otherwise open_clip downloads as usual.
    Raises :class:`PretrainedUnavailableError`.
    """
    import open_clip

    reason = check_pretrained_reachable(name, pretrained)
    try:
        if reason is None:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained
            )
        else:
            with _hub_cache_only():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=pretrained
                )
    except Exception as err:  # download failures come in many types
        why = f"{reason} and the weights are not in the local cache" if reason else str(err)
        raise PretrainedUnavailableError(name, pretrained, why) from err
    return model, preprocess
