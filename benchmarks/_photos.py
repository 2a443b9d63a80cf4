"""The photo batch of the speed and memory benchmarks (scikit-image photos, offline)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from skimage import data

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "grass", "gravel", "brick", "camera")


def photo_batch(preprocess, n: int) -> torch.Tensor:
    """``n`` preprocessed images: the 8 photos, then their flipped copies (left-right,
    up-down, both), repeated as needed."""
    base = []
    for name in PHOTOS:
        a = getattr(data, name)()
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        base.append(preprocess(Image.fromarray(a[..., :3])))
    x = torch.stack(base)
    flips = [x, x.flip(-1), x.flip(-2), x.flip(-1, -2)]
    return torch.cat(flips * (n // (4 * len(x)) + 1))[:n]
