"""Inputs of ``covar build``: foreground instances (image + mask + class) and backgrounds.

Built-in: the testbed's pattern discs (:func:`testbed_instances`) and backgrounds
(:func:`testbed_backgrounds`). Your own data (:func:`folder_instances`,
:func:`folder_backgrounds`) in this layout::

    instances/<class name>/<instance>.png          RGB cut-out (any size) ...
    instances/<class name>/<instance>.mask.png     ... and its mask (non-zero = object)
    instances/<class name>/<other>.png             or an RGBA PNG: alpha > 0 = object
    backgrounds/<background>.jpg|.jpeg|.png        any size (centre-cropped square)

The class name is the folder name (as written, e.g. ``"golden retriever"``); ids are
the file stems.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from captum_clip.storage import read_image

__all__ = [
    "Background",
    "Instance",
    "folder_backgrounds",
    "folder_instances",
    "testbed_backgrounds",
    "testbed_instances",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Instance:
    """A foreground cut-out.

    Attributes:
        id: Unique id (file-name safe after slugging), e.g. ``"dots-003"``.
        class_name: Its class (the zero-shot label).
        image: ``(H, W, 3)`` uint8.
        mask: ``(H, W)`` bool, the object's pixels (non-empty).
    """

    id: str
    class_name: str
    image: np.ndarray
    mask: np.ndarray

    def validate(self) -> None:
        """Raises ``ValueError``/``TypeError`` when image and mask do not fit together."""
        if not isinstance(self.image, np.ndarray) or self.image.dtype != np.uint8:
            raise TypeError(f"instance {self.id!r}: image must be a uint8 numpy array")
        if self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f"instance {self.id!r}: image must be HxWx3, got {self.image.shape}")
        if not isinstance(self.mask, np.ndarray) or self.mask.shape != self.image.shape[:2]:
            got = getattr(self.mask, "shape", type(self.mask).__name__)
            raise ValueError(
                f"instance {self.id!r}: mask must be a {self.image.shape[:2]} array, got {got}"
            )
        if self.mask.dtype != bool:
            raise TypeError(f"instance {self.id!r}: mask must be bool, got {self.mask.dtype}")
        if not self.mask.any():
            raise ValueError(f"instance {self.id!r}: mask is empty")
        if not isinstance(self.class_name, str) or not self.class_name.strip():
            raise ValueError(f"instance {self.id!r}: class_name must be a non-empty string")


@dataclass
class Background:
    """A background image: ``id`` and ``(H, W, 3)`` uint8 ``image``."""

    id: str
    image: np.ndarray

    def validate(self) -> None:
        """Raises ``ValueError``/``TypeError`` for a non-RGB or non-uint8 image."""
        img = self.image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
            raise TypeError(f"background {self.id!r}: image must be a uint8 numpy array")
        if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
            raise ValueError(f"background {self.id!r}: image must be HxWx3, got {img.shape}")


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def testbed_instances(
    n_per_class: int = 2,
    *,
    size: int = 64,
    seed: int = 0,
    classes: list[str] | None = None,
    radius_range: tuple[float, float] = (20 / 64, 30 / 64),
) -> list[Instance]:
    """Pattern discs of the shapes testbed, centred, with their exact masks.

    Args:
        n_per_class: Instances per class (colours, radius, pattern phase drawn from ``seed``).
        size: Image side (the testbed models take 64).
        seed: Random seed.
        classes: Subset of :data:`captum_clip.testbed.shapes.CLASS_NAMES` (default: all).
        radius_range: Disc radius as a fraction of ``size`` (the models' training range).

    Returns:
        ``len(classes) * n_per_class`` instances with ids ``"<class>-<k>"``.
    """
    from captum_clip.testbed import shapes

    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive int, got {n_per_class!r}")
    classes = list(shapes.CLASS_NAMES) if classes is None else list(classes)
    unknown = [c for c in classes if c not in shapes.CLASS_NAMES]
    if unknown or not classes:
        raise ValueError(
            f"classes must be a non-empty subset of {shapes.CLASS_NAMES}, got {classes}"
        )
    n = len(classes) * n_per_class
    f = shapes.sample_factors(n, seed=seed, rho=0.0, size=size, radius_range=radius_range)
    f["class"] = torch.tensor(
        [shapes.CLASS_NAMES.index(c) for c in classes for _ in range(n_per_class)]
    )
    f["cx"] = torch.full((n,), size / 2.0)
    f["cy"] = torch.full((n,), size / 2.0)
    images, masks = shapes.render(f, size)
    pix = _to_uint8(images)
    out = []
    for i in range(n):
        name = shapes.CLASS_NAMES[int(f["class"][i])]
        out.append(
            Instance(
                f"{name.replace(' ', '-')}-{i % n_per_class:03d}",
                name,
                pix[i],
                masks[i].numpy().astype(bool),
            )
        )
    return out


def testbed_backgrounds(n: int = 8, *, size: int = 64, seed: int = 0) -> list[Background]:
    """Testbed backgrounds: kind ``i % 8`` of :data:`~captum_clip.testbed.shapes.BACKGROUND_NAMES`
    with a seeded crop / noise pattern; ids ``"<kind>-<k>"``."""
    from captum_clip.testbed import shapes

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    g = torch.Generator().manual_seed(int(seed) + 7919)
    kinds = torch.arange(n) % len(shapes.BACKGROUND_NAMES)
    seeds = torch.randint(0, 2**30, (n,), generator=g)
    pix = _to_uint8(shapes.render_backgrounds(kinds, seeds, size))
    names = shapes.BACKGROUND_NAMES
    return [
        Background(f"{names[int(k)]}-{i // len(names):02d}", pix[i]) for i, k in enumerate(kinds)
    ]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def folder_instances(root: str | os.PathLike) -> list[Instance]:
    """Reads cut-outs from ``root/<class>/`` (see the module docstring for the layout).

    Raises:
        FileNotFoundError: ``root`` is missing.
        ValueError: No instances, or an image without a mask (neither ``.mask.png`` nor
            an alpha channel), or a mask of another size.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"instances folder not found: {str(root)!r}")
    out = []
    for cls_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = _images_in(cls_dir)
        for path in files:
            if path.name.endswith(".mask.png"):
                continue
            mask_path = path.with_name(path.stem + ".mask.png")
            pil = read_image(path, None)
            if mask_path.is_file():
                mask = np.asarray(read_image(mask_path, "L")) > 0
            elif pil.mode in ("RGBA", "LA", "PA"):
                mask = np.asarray(pil.convert("RGBA"))[..., 3] > 0
            else:
                raise ValueError(
                    f"{str(path)!r} has no mask: add {mask_path.name} or save an RGBA PNG"
                )
            inst = Instance(path.stem, cls_dir.name, np.asarray(pil.convert("RGB")), mask)
            inst.validate()
            out.append(inst)
    if not out:
        raise ValueError(f"no instances found under {str(root)!r} (expected <class>/<image>)")
    return out


def folder_backgrounds(root: str | os.PathLike) -> list[Background]:
    """Reads every image in ``root`` as a background (id = file stem)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"backgrounds folder not found: {str(root)!r}")
    out = [Background(p.stem, np.asarray(read_image(p))) for p in _images_in(root)]
    if not out:
        raise ValueError(f"no background images in {str(root)!r}")
    return out
