"""Reading local checkpoint files as plain state dicts (weights only, never code)."""

from __future__ import annotations

import os
from typing import Any

import torch

from captum_clip.models.errors import ModelLoadError

__all__ = ["load_state_dict", "read_checkpoint"]


_REFUSED = (
    "; files that need code to run while loading are refused, not run: save a plain state dict "
    "(torch.save(model.state_dict(), path)) or a .safetensors file"
)


def read_checkpoint(path: str) -> Any:
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


def load_state_dict(path: str) -> dict:
    """A ``{name: tensor}`` state dict from a checkpoint file (see :func:`read_checkpoint`)."""
    if os.path.isdir(path):
        raise ModelLoadError(f"checkpoint {path!r} is a folder, expected a file")
    sd = read_checkpoint(path)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(
            f"checkpoint {path!r} does not hold a state dict (a mapping of names to tensors), "
            f"got {type(sd).__name__}"
        )
    return {str(k).removeprefix("module."): v for k, v in sd.items()}
