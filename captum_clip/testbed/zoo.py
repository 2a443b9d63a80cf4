"""The testbed model zoo: tiny open_clip ``CLIP`` models described by JSON recipes.

Recipes live in ``captum_clip/testbed/configs/<variant>.json``. The bundled variants
(``"default"``: no shortcut, ``"shortcut"``: rho=0.9) ship their weights in
``captum_clip/testbed/weights/`` (fp16 safetensors); other variants are trained with
``python -m captum_clip.testbed.train --variant NAME`` into the user cache
(``$CAPTUM_CLIP_CACHE`` or ``~/.cache/captum_clip/testbed``).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from captum_clip.testbed.shapes import normalize
from captum_clip.testbed.tokenizer import TestbedTokenizer

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"
WEIGHTS_DIR = PACKAGE_DIR / "weights"


def list_variants() -> list[str]:
    """Names of all zoo variants (one JSON recipe each)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(variant: str = "default") -> dict[str, Any]:
    """The recipe of a variant as a dict (model, data and train sections)."""
    if not isinstance(variant, str):
        raise TypeError(f"variant must be a str, got {type(variant).__name__}")
    # a name from the list, never a path: "../x" or "/abs/x" must not reach other folders
    if variant not in list_variants():
        raise ValueError(f"unknown testbed variant {variant!r}; known variants: {list_variants()}")
    path = CONFIG_DIR / f"{variant}.json"
    return json.loads(path.read_text())


def cache_dir() -> Path:
    """Directory for locally trained variants: ``$CAPTUM_CLIP_CACHE`` or ``~/.cache/...``."""
    env = os.environ.get("CAPTUM_CLIP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "captum_clip" / "testbed"


def weights_path(variant: str) -> Path:
    """Where the weights of ``variant`` are (package for bundled ones, else the cache)."""
    cfg = load_config(variant)
    base = WEIGHTS_DIR if cfg.get("bundled") else cache_dir()
    return base / f"{variant}.safetensors"


def build_tokenizer(config: dict[str, Any]) -> TestbedTokenizer:
    """The word-level tokenizer for a recipe (its text context length)."""
    return TestbedTokenizer(context_length=int(config["model"]["text_cfg"]["context_length"]))


def build_model(config: dict[str, Any]) -> CLIP:
    """An untrained open_clip ``CLIP`` from a recipe (vocab size set from the tokenizer)."""
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError("config must be a recipe dict with a 'model' section (see configs/)")
    m = copy.deepcopy(config["model"])
    tok = build_tokenizer(config)
    text_cfg = dict(m["text_cfg"])
    text_cfg["vocab_size"] = tok.vocab_size
    text_cfg["context_length"] = tok.context_length
    text_cfg.setdefault("pad_id", tok.pad_id)
    text_cfg.setdefault("eos_id", tok.eot_id)
    return CLIP(
        embed_dim=int(m["embed_dim"]),
        vision_cfg=CLIPVisionCfg(**m["vision_cfg"]),
        text_cfg=CLIPTextCfg(**text_cfg),
    )


class TestbedPreprocess:
    """Image → normalised float tensor at the model's resolution.

    Accepts a PIL image, an ``HxWx3`` uint8 numpy array, or a ``(3, H, W)`` /
    ``(B, 3, H, W)`` float tensor in ``[0, 1]``. Returns ``(3, S, S)`` for a single image
    (like open_clip's transforms) and ``(B, 3, S, S)`` for a batch.
    """

    __test__ = False

    def __init__(self, image_size: int = 64) -> None:
        self.image_size = int(image_size)

    def __call__(self, image: Any) -> torch.Tensor:
        single = True
        if torch.is_tensor(image):
            if not image.is_floating_point():
                raise TypeError(f"tensor images must be float in [0, 1], got {image.dtype}")
            if image.dim() == 3 and image.shape[0] == 3:
                x = image.unsqueeze(0)
            elif image.dim() == 4 and image.shape[1] == 3:
                x, single = image, False
            else:
                raise ValueError(
                    f"expected a (3, H, W) or (B, 3, H, W) tensor, got {tuple(image.shape)}"
                )
            if torch.isnan(x).any() or x.min() < 0 or x.max() > 1:
                raise ValueError("tensor images must hold finite values in [0, 1]")
        else:
            if hasattr(image, "convert") and hasattr(image, "size"):  # PIL image
                image = np.asarray(image.convert("RGB"))
            if not isinstance(image, np.ndarray):
                raise TypeError(
                    f"expected a PIL image, HxWx3 uint8 array or float tensor, got {type(image).__name__}"
                )
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"arrays must be HxWx3 uint8, got {image.shape} {image.dtype}")
            x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float() / 255
        if x.shape[-2:] != (self.image_size, self.image_size):
            mode = "area" if min(x.shape[-2:]) >= self.image_size else "bilinear"
            kw = {} if mode == "area" else {"align_corners": False}
            x = F.interpolate(x.float(), size=(self.image_size,) * 2, mode=mode, **kw)
        out = normalize(x)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"TestbedPreprocess(image_size={self.image_size})"


def save_weights(model: CLIP, config: dict[str, Any], metrics: dict, path: str | Path) -> Path:
    """Saves fp16 safetensors at ``path`` plus ``<stem>.json`` with recipe and metrics."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"variant": str(config.get("name", ""))})
    meta = {"config": config, "metrics": metrics}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_testbed(
    variant: str = "default", device: str | torch.device = "cpu"
) -> tuple[CLIP, TestbedPreprocess, TestbedTokenizer]:
    """Loads a trained testbed model offline.

    Args:
        variant: Zoo variant (see :func:`list_variants`). ``"default"`` (no shortcut) and
            ``"shortcut"`` (rho=0.9) are bundled; others must be trained first.
        device: Where to put the model.

    Returns:
        ``(model, preprocess, tokenizer)``: an open_clip ``CLIP`` in eval mode (float32),
        a :class:`TestbedPreprocess` and a :class:`TestbedTokenizer`.

    Raises:
        ValueError: Unknown variant, or a non-bundled variant that is not trained yet.
    """
    from safetensors.torch import load_file

    cfg = load_config(variant)
    path = weights_path(variant)
    if not path.is_file():
        raise ValueError(
            f"testbed variant {variant!r} is not trained yet (no file {path}); train it with "
            f"`python -m captum_clip.testbed.train --variant {variant}`"
        )
    model = build_model(cfg)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    model = model.to(device).eval()
    preprocess = TestbedPreprocess(int(cfg["model"]["vision_cfg"]["image_size"]))
    return model, preprocess, build_tokenizer(cfg)
