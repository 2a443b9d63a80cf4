"""One validator, and one wording, per argument shared across the package.

``images`` (:func:`check_images`), ``target`` (:func:`check_target`) and
``internal_batch_size`` (:func:`check_batch_size`) are checked here and nowhere else.

The ``target`` argument (documented once, here; every ``attribute`` refers to it):
    The output index whose score is explained: an ``int`` (the same for every example), a
    sequence of ``B`` ints or an integer tensor (a scalar or ``(B,)``), one per example.
    It may be omitted (None) only when ``forward_func`` returns one score per example.
    Each index must lie in ``[0, n_outputs - 1]``; negative indices are refused even when
    ``n_outputs`` is not known yet (no Python-style ``-1`` = last class).

The ``images`` / ``inputs`` argument: a preprocessed ``(B, 3, H, W)`` floating tensor at the
model's size, without NaN/inf. Its floating dtype may differ from the model's: the images are
cast to the model's dtype (float64 or float16 images work with a float32 model), and
attributions come back in the dtype of the inputs that were passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_batch_size", "check_images", "check_target"]


def check_images(
    images: Any,
    image_size: tuple[int, int] | None = None,
    name: str = "images",
    channels: int | None = 3,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Validate a non-empty ``(B, C, H, W)`` floating tensor without NaN/inf and return it.

    The dtype rule: any floating dtype is accepted, and with ``dtype`` given (the model's,
    :attr:`VisionTower.dtype`) the images are cast to it — float64 or float16 images work
    with a float32 model. The cast is differentiable (gradients reach the caller's tensor in
    its own dtype) and attributions keep the dtype of the inputs the caller passed.

    Args:
        images: The tensor to check.
        image_size: ``(H, W)`` the model expects (None: any).
        name: Argument name used in the messages.
        channels: Required ``C`` (None: any).
        dtype: Cast to this floating dtype (None: keep the images' dtype).

    Returns:
        ``images``, or their cast to ``dtype``.
    """
    c = "C" if channels is None else str(channels)
    if not isinstance(images, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (B, {c}, H, W), got {type(images).__name__}"
        )
    if images.ndim != 4 or (channels is not None and images.shape[1] != channels):
        raise ValueError(f"{name} must have shape (B, {c}, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(
            f"{name} must be a floating tensor (preprocessed, normalised), got {images.dtype}"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if image_size is not None and tuple(images.shape[-2:]) != tuple(image_size):
        raise ValueError(
            f"{name} must be {image_size[0]}x{image_size[1]} for this model, got "
            f"{images.shape[-2]}x{images.shape[-1]} (use the model's preprocess)"
        )
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if dtype is not None and images.dtype != dtype:
        if not dtype.is_floating_point:
            raise TypeError(f"the model's dtype must be floating, got {dtype}")
        given = images.dtype
        images = images.to(dtype)
        if not torch.isfinite(images).all():
            raise ValueError(
                f"{name} has values outside the range of the model's dtype {dtype} "
                f"(cast from {given}); are they preprocessed?"
            )
    return images


def check_target(
    target: Any,
    batch: int,
    n_outputs: int | None = None,
    *,
    name: str = "target",
    required: bool = True,
) -> Tensor | None:
    """Per-example indices ``(B,)`` (long, CPU) from ``target`` (see module docstring).

    Args:
        target: None, an int, a sequence of ints or an integer tensor.
        batch: Number of examples ``B``.
        n_outputs: Outputs per example, for the range check (None: not checked).
        name: Argument name used in the messages.
        required: With ``target=None``: raise when ``n_outputs > 1`` (True) or return None.

    Returns:
        ``(B,)`` indices; None for ``target=None`` (zeros when ``n_outputs == 1``).
    """
    if target is None:
        if n_outputs is None or not required:
            return None
        if n_outputs == 1:
            return torch.zeros(batch, dtype=torch.long)
        raise ValueError(
            f"{name} is required: forward_func has {n_outputs} outputs per example "
            "(pass a class/text index, or one per example)"
        )
    expected = f"{name} must be an int, a sequence of ints or an integer tensor"
    if isinstance(target, (bool, float, str, bytes)):
        raise TypeError(f"{expected}, got {target!r}")
    if isinstance(target, (list, tuple)) and any(
        isinstance(i, bool) or not isinstance(i, (int, Tensor)) for i in target
    ):
        raise TypeError(f"{expected}, got {target!r}")
    try:
        t = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{expected}, got {type(target).__name__}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.ndim > 1:
        raise TypeError(f"{expected}, got {t.dtype} of shape {tuple(t.shape)}")
    t = t.detach().cpu().long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"{name} must have one entry per example ({batch}), got {t.numel()}")
    if n_outputs is None and (t < 0).any():
        got = t.unique().tolist()[:10] if batch > 1 else int(t[0])
        raise ValueError(f"{name} must be >= 0 (an output index), got {got}")
    if n_outputs is not None and ((t < 0).any() or (t >= n_outputs).any()):
        got = t.unique().tolist()[:10] if batch > 1 else int(t[0])
        raise ValueError(
            f"{name} must be in [0, {n_outputs - 1}] for {n_outputs} outputs, got {got}"
        )
    return t.clone()


def check_batch_size(
    value: Any, name: str = "internal_batch_size", allow_none: bool = True
) -> int | None:
    """A positive int (or None when ``allow_none``), else ``TypeError`` / ``ValueError``
    naming ``name``."""
    expected = "a positive int or None" if allow_none else "a positive int"
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_choice(**named: tuple[Any, Sequence[Any]]) -> None:
    """``name=(value, allowed)`` pairs: a ValueError naming the first value not allowed."""
    for name, (value, allowed) in named.items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
