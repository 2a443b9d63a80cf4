"""Pretrained open_clip weights: fail fast offline (no retries), use the caches when present."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from captum_clip.models.errors import PretrainedUnavailableError

__all__ = [
    "check_pretrained_reachable",
    "create_pretrained",
    "hub_unreachable_reason",
    "weights_cached",
]


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
    from captum_clip.models import registry

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
