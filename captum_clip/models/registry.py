"""open_clip's architectures and pretrained tags, read without importing open_clip.

Importing ``open_clip`` takes seconds (it pulls in torchvision, timm and transformers), yet
checking a model spec, or whether pretrained weights are cached, needs only its bundled
architecture configs (``open_clip/model_configs/*.json``) and its tag registry
(``open_clip/pretrained.py``, which imports nothing of open_clip but its constants). That
file is executed under a private package name so that a later ``import open_clip`` is
untouched. Once open_clip is imported (e.g. after ``open_clip.add_model_config``), its own
functions are used.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["hub_tokenizer", "list_models", "model_config", "pretrained_cfg", "pretrained_tags"]

_ALIAS = "_captum_clip_open_clip_registry"


def _package_dir() -> Path:
    spec = importlib.util.find_spec("open_clip")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip is not installed: pip install open_clip_torch")
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def _registry() -> Any:
    package = types.ModuleType(_ALIAS)
    package.__path__ = [str(_package_dir())]
    sys.modules[_ALIAS] = package
    return importlib.import_module(f"{_ALIAS}.pretrained")


def _loaded() -> Any:
    return sys.modules.get("open_clip")


def list_models() -> list[str]:
    """``open_clip.list_models()``."""
    if _loaded() is not None:
        return list(_loaded().list_models())
    return sorted(p.stem for p in (_package_dir() / "model_configs").glob("*.json"))


def pretrained_tags(name: str) -> list[str]:
    """``open_clip.list_pretrained_tags_by_model(name)``."""
    source = _loaded() or _registry()
    return list(source.list_pretrained_tags_by_model(name))


def pretrained_cfg(name: str, tag: str) -> dict:
    """``open_clip.get_pretrained_cfg(name, tag)`` (``{}`` for an unknown pair)."""
    source = _loaded() or _registry()
    return dict(source.get_pretrained_cfg(name, tag) or {})


def model_config(name: str) -> dict:
    """``open_clip.get_model_config(name)`` (``{}`` for an unknown name)."""
    if _loaded() is not None:
        return dict(_loaded().get_model_config(name) or {})
    path = _package_dir() / "model_configs" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def hub_tokenizer(name: str) -> str:
    """The Hugging Face hub tokenizer an open_clip architecture downloads on first use
    (``"timm/ViT-B-16-SigLIP"``...), or ``""`` when its tokenizer ships with open_clip."""
    return str(model_config(name).get("text_cfg", {}).get("hf_tokenizer_name", "") or "")
