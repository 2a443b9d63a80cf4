"""The mask-provider protocol, ground-truth masks and the helpers every provider shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import Tensor

from captum_clip._validate import check_images

Detector = Callable[[Tensor, Sequence[str]], Sequence[Any]]
"""``detector(images01, class_names) -> B entries``, each ``None`` (nothing found) or
boxes ``(4,)`` / ``(N, 4)`` in pixel ``x0, y0, x1, y1``; ``images01`` in ``[0, 1]``."""


@runtime_checkable
class MaskProvider(Protocol):
    """``provider(images, class_names) -> (B, H, W)`` bool object masks."""

    def __call__(self, images: Tensor, class_names: Sequence[str] | None) -> Tensor: ...


def _check_images(images: Any) -> Tensor:
    return check_images(images)


def _check_names(class_names: Any, n: int, required: bool) -> list[str] | None:
    if class_names is None:
        if required:
            raise ValueError("this mask provider needs class_names (one per image)")
        return None
    if isinstance(class_names, str):
        class_names = [class_names] * n
    names = list(class_names)
    if len(names) != n:
        raise ValueError(f"class_names must have one name per image ({n}), got {len(names)}")
    for c in names:
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"class names must be non-empty strings, got {c!r}")
    return names


def to_unit_images(
    images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> Tensor:
    """Undo ``(x - mean) / std`` and clip to ``[0, 1]`` (``mean=None``: only clip)."""
    if mean is None:
        return images.clamp(0, 1)
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp(0, 1)


def _uint8(images01: Tensor) -> list[np.ndarray]:
    arr = (images01.detach().float().cpu() * 255).round().to(torch.uint8)
    return [np.ascontiguousarray(a.permute(1, 2, 0).numpy()) for a in arr]


class GroundTruthMasks:
    """Masks that come with the data, validated and passed through.

    Args:
        masks: ``(N, H, W)`` or ``(N, 1, H, W)`` bool (or 0/1) masks, one per image.
    """

    def __init__(self, masks: Tensor) -> None:
        if not isinstance(masks, Tensor):
            raise TypeError(f"masks must be a torch.Tensor (N, H, W), got {type(masks).__name__}")
        m = masks[:, 0] if masks.ndim == 4 and masks.shape[1] == 1 else masks
        if m.ndim != 3 or m.shape[0] == 0:
            raise ValueError(
                f"masks must have shape (N, H, W) with N >= 1, got {tuple(masks.shape)}"
            )
        if m.dtype != torch.bool:
            if m.is_complex() or not ((m == 0) | (m == 1)).all():
                raise ValueError("masks must be boolean or contain only 0 and 1")
            m = m != 0
        self.masks = m

    def __len__(self) -> int:
        return self.masks.shape[0]

    def __getitem__(self, index: Any) -> GroundTruthMasks:
        sub = self.masks[index]
        return GroundTruthMasks(sub if sub.ndim == 3 else sub[None])

    def __call__(self, images: Tensor, class_names: Sequence[str] | None = None) -> Tensor:
        """The stored masks, checked against ``images`` (same count and size)."""
        images = _check_images(images)
        _check_names(class_names, images.shape[0], required=False)
        want = (images.shape[0], images.shape[-2], images.shape[-1])
        if tuple(self.masks.shape) != want:
            raise ValueError(
                f"ground-truth masks have shape {tuple(self.masks.shape)} but the images need "
                f"{want}; index the provider (masks[i:j]) to match the batch"
            )
        return self.masks.to(images.device)


def boxes_from_attributions(attributions: Tensor, rtol: float = 1e-6) -> Tensor:
    """Bounding box of the top region of each attribution map, ``(B, 4)`` ``x0, y0, x1, y1``.

    The top region is the set of pixels at the map's maximum (for a CCI map: the most
    important cluster), reduced to its largest 8-connected component. Coordinates are
    pixel edges (``x1``/``y1`` exclusive), as SAM expects for box prompts.

    Args:
        attributions: ``(B, C, H, W)`` (summed over channels), ``(B, 1, H, W)`` or ``(B, H, W)``.
        rtol: Relative tolerance for "at the maximum".
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions must be a tensor, got {type(attributions).__name__}")
    a = attributions.sum(1) if attributions.ndim == 4 else attributions
    if a.ndim != 3:
        raise ValueError(
            f"attributions must be (B, C, H, W) or (B, H, W), got {tuple(attributions.shape)}"
        )
    a = a.detach().double().cpu()
    if not torch.isfinite(a).all():
        raise ValueError("attributions contain NaN or infinite values")
    boxes = []
    for amap in a:
        top = amap.max()
        region = (amap >= top - rtol * max(abs(float(top)), 1e-12)).numpy()
        lab, k = ndimage.label(region, structure=np.ones((3, 3)))
        if k > 1:
            sizes = ndimage.sum(region, lab, index=range(1, k + 1))
            region = lab == 1 + int(np.argmax(sizes))
        ys, xs = np.nonzero(region)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(boxes, dtype=torch.float32)


def _as_boxes(item: Any, h: int, w: int) -> np.ndarray | None:
    if item is None:
        return None
    b = np.asarray(item.detach().cpu() if isinstance(item, Tensor) else item, dtype=np.float64)
    if b.size == 0:
        return None
    b = b.reshape(-1, 4) if b.ndim == 1 and b.shape[0] == 4 else b
    if b.ndim != 2 or b.shape[1] != 4 or not np.isfinite(b).all():
        raise ValueError(
            f"detector boxes must be finite (4,) or (N, 4) x0, y0, x1, y1; got {b.shape}"
        )
    b = b.copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    if ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
        raise ValueError(
            f"detector boxes need x1 > x0 and y1 > y0 inside the image, got {b.tolist()}"
        )
    return b


def preprocess_mask(mask: Any, preprocess: Callable) -> Tensor:
    """Apply an image ``preprocess`` (resize/crop + normalise) to a mask, ``(H, W)`` bool.

    The mask is drawn as a black/white RGB image, sent through ``preprocess`` (so it gets
    exactly the images' geometry), and thresholded half-way between the preprocessed
    black and white values.

    Args:
        mask: A PIL image (mode ``L``/``1``/``RGB``), or a 2-D array/tensor (non-zero = object).
        preprocess: The model's image transform (PIL image -> ``(3, H, W)`` tensor).
    """
    if hasattr(mask, "convert") and hasattr(mask, "size"):
        arr = np.asarray(mask.convert("L")) > 127
    else:
        arr = np.asarray(mask.detach().cpu() if isinstance(mask, Tensor) else mask)
        if arr.ndim != 2:
            raise ValueError(f"mask arrays must be 2-D (H, W), got shape {arr.shape}")
        arr = arr != 0
    rgb = Image.fromarray(np.repeat((arr * 255).astype(np.uint8)[..., None], 3, axis=2))
    out = preprocess(rgb)
    lo = preprocess(Image.new("RGB", rgb.size, (0, 0, 0)))
    hi = preprocess(Image.new("RGB", rgb.size, (255, 255, 255)))
    if not isinstance(out, Tensor) or out.ndim != 3:
        raise TypeError("preprocess must map a PIL image to a (3, H, W) tensor")
    return (out[0] - lo[0]) > 0.5 * (hi[0] - lo[0])
