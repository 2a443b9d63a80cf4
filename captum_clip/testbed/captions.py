"""A COCO-format caption gallery written from testbed scenes (for retrieval tests and demos).

Each scene gets several captions in the testbed's training forms
(:data:`~captum_clip.testbed.shapes.CAPTION_TEMPLATES`: class only, colour + class +
background, class + background, two colours + class), so every caption uses the testbed
vocabulary and fits its context length.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from captum_clip.testbed import shapes

__all__ = ["write_caption_gallery"]


def write_caption_gallery(
    out_dir: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    rho: float = 0.5,
    size: int = 64,
    captions_per_image: int = 3,
) -> tuple[Path, Path]:
    """Renders ``n`` scenes as PNGs and writes their captions as a COCO captions file.

    Args:
        out_dir: Output folder (created): ``images/<id>.png`` and ``captions.json``.
        n: Number of scenes.
        seed: Scene seed.
        rho: Shortcut strength of the scenes (share on the class's own background).
        size: Image side in pixels.
        captions_per_image: 1 to 4 captions per scene, the first forms of
            :data:`~captum_clip.testbed.shapes.CAPTION_TEMPLATES`.

    Returns:
        ``(images_dir, captions_file)``.
    """
    from PIL import Image

    forms = len(shapes.CAPTION_TEMPLATES)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(captions_per_image, int) or not 1 <= captions_per_image <= forms:
        raise ValueError(
            f"captions_per_image must be an int in [1, {forms}], got {captions_per_image!r}"
        )
    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    scenes = shapes.generate_scenes(n, seed=seed, rho=rho, size=size)
    images, annotations = [], []
    for i in range(n):
        name = f"{i:06d}.png"
        pixels = (scenes.images[i].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round()
        Image.fromarray(pixels.astype(np.uint8)).save(images_dir / name)
        images.append({"id": i, "file_name": name})
        one = shapes.select(scenes.factors, slice(i, i + 1))
        for form in range(captions_per_image):
            one["caption_template"] = one["caption_template"].clone().fill_(form)
            annotations.append(
                {"id": len(annotations), "image_id": i, "caption": shapes.captions_for(one)[0]}
            )
    captions_file = out / "captions.json"
    captions_file.write_text(json.dumps({"images": images, "annotations": annotations}, indent=1))
    return images_dir, captions_file
