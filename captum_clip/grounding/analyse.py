"""Run integrated interactions over many pairs and measure their grounding rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from captum_clip._validate import check_batch_size
from captum_clip.grounding.table import measure, normalise_roles

__all__ = ["analyse", "prepare_pil"]


def analyse(
    ii: Any,
    images: Tensor,
    captions: Sequence[str],
    masks: Any,
    roles: Sequence[Mapping[str, Any]],
    meta: Sequence[Mapping[str, Any]] | None = None,
    batch_size: int = 16,
    show_progress: bool = False,
    keep: int = 0,
    **interaction_kwargs: Any,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Grounding rows of many image-caption pairs, computed in batches.

    Args:
        ii: An :class:`~captum_clip.attr.IntegratedInteractions`.
        images: ``(N, 3, H, W)`` model inputs (preprocessed).
        captions: ``N`` captions.
        masks: ``N`` object masks (see :func:`~captum_clip.grounding.patch_weights`).
        roles: ``N`` word-role mappings (see :func:`~captum_clip.grounding.measure`).
        meta: ``N`` mappings of extra columns.
        batch_size: Pairs per :meth:`~captum_clip.attr.IntegratedInteractions.explain` call.
        show_progress: A tqdm bar over the pairs.
        keep: Return the :class:`~captum_clip.attr.InteractionResult` of the first ``keep``
            batches too (for figures).
        **interaction_kwargs: Passed to ``explain`` (``n_steps``, layers, baselines...).

    Returns:
        ``(rows, results)``; a row's ``pair`` is its index in ``images``.
    """
    n = len(captions)
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[0] != n:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (N={n}, 3, H, W) tensor, got {got}")
    check_batch_size(batch_size, "batch_size", allow_none=False)
    if isinstance(masks, Tensor):
        masks = list(masks)
    for name, seq in (("masks", masks), ("roles", roles), ("meta", meta)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"need one entry of {name} per caption ({n}), got {len(seq)}")
    for r in roles:  # fail on a bad role before any interaction is computed
        normalise_roles(r)
    rows: list[dict[str, Any]] = []
    kept = []
    bar = tqdm(total=n, desc="grounding", disable=not show_progress, leave=False)
    try:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            result = ii.explain(
                images[start:stop], list(captions[start:stop]), **interaction_kwargs
            )
            part = measure(
                result,
                masks[start:stop],
                roles[start:stop],
                None if meta is None else meta[start:stop],
            )
            for row in part:
                row["pair"] += start
            rows.extend(part)
            if len(kept) < keep:
                kept.append(result)
            bar.update(stop - start)
    finally:
        bar.close()
    return rows, kept


def prepare_pil(
    preprocess: Callable[[Any], Tensor], image: Any, mask: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """A PIL picture and its PIL mask taken through an image ``preprocess`` together.

    The mask is drawn as a white-on-black RGB image and preprocessed like the picture; a
    black and a white image of the same size give the two levels every pixel maps to, so
    any preprocess made of geometric steps (resize, crop) and a per-channel affine
    normalisation maps the mask exactly as it maps the picture.

    Args:
        preprocess: The model's image preprocess (PIL image -> ``(3, H, W)`` tensor).
        image: PIL image.
        mask: PIL image of the same size (non-zero = object).

    Returns:
        ``(model input (3, H, W), displayable picture (3, H, W) in [0, 1], mask (H, W) in
        [0, 1])``.
    """
    from PIL import Image

    if mask.size != image.size:
        raise ValueError(f"mask has size {mask.size}, but its image has size {image.size}")
    grey = mask.convert("L").point(lambda v: 255 if v > 0 else 0)
    lo = preprocess(Image.new("RGB", image.size, (0, 0, 0)))
    span = (preprocess(Image.new("RGB", image.size, (255, 255, 255))) - lo).clamp(min=1e-6)
    x = preprocess(image.convert("RGB"))
    display = ((x - lo) / span).clamp(0, 1)
    m = preprocess(Image.merge("RGB", (grey, grey, grey)))
    return x, display, ((m - lo) / span).mean(0).clamp(0, 1)
