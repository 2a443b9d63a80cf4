"""Figures for image attributions: overlays, CCI cluster maps, side-by-side comparisons.

Images may be given as normalised tensors (``(3, H, W)`` or ``(1, 3, H, W)``, un-normalised
with ``mean``/``std``, CLIP's statistics by default), or as ``HxWx3`` arrays already in
``[0, 1]`` / uint8 (pass ``mean=None`` for ``[0, 1]`` tensors). Every function returns a
matplotlib ``Figure`` (created without pyplot, so it works headless; save it with
``fig.savefig``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from captum_clip.viz.marks import SIGN_CMAP, signed_colorbar

__all__ = ["compare_methods", "overlay", "plot_clusters", "to_display"]

OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


def to_display(
    image: Any,
    mean: Sequence[float] | None = OPENAI_DATASET_MEAN,
    std: Sequence[float] | None = OPENAI_DATASET_STD,
) -> np.ndarray:
    """An ``HxWx3`` float array in ``[0, 1]`` from a (normalised) tensor, an array or PIL image.

    Args:
        image: ``(3, H, W)`` / ``(1, 3, H, W)`` tensor (normalised unless ``mean=None``), an
            ``HxWx3`` numpy array (uint8, or floats in ``[0, 1]``; never un-normalised), or a
            PIL image.
        mean: Per-channel mean used for normalisation (None: the tensor is in ``[0, 1]``).
        std: Per-channel std used for normalisation.
    """
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL image
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, Tensor):
        x = image.detach().float().cpu()
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(
                f"image tensor must be (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}"
            )
        if mean is not None:
            if std is None or len(mean) != 3 or len(std) != 3:
                raise ValueError("mean and std must both have 3 entries")
            x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
        return x.clamp(0, 1).permute(1, 2, 0).numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image array must be HxWx3, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0, 1)


def _map2d(attribution: Any, shape: tuple[int, int]) -> np.ndarray:
    """Attribution → ``(H, W)`` (summed over channels), checked against the image size."""
    a = (
        attribution.detach().float().cpu().numpy()
        if isinstance(attribution, Tensor)
        else np.asarray(attribution, dtype=np.float32)
    )
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        a = a.sum(0) if a.shape[0] in (1, 3) else a.sum(-1)
    if a.shape != tuple(shape):
        raise ValueError(
            f"attribution must match the image ({shape[0]}x{shape[1]}), got shape "
            f"{tuple(np.shape(attribution))}"
        )
    if not np.isfinite(a).all():
        raise ValueError("attribution contains NaN or infinite values")
    return a


def _axes(ax: Axes | None, ncols: int = 1, size: float = 3.0) -> tuple[Figure, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=(size * ncols, size))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, (axes[0] if ncols == 1 else axes)


def overlay(
    image: Any,
    attribution: Any,
    *,
    method: str = "blended_heat_map",
    sign: str = "all",
    alpha: float = 0.5,
    title: str | None = None,
    ax: Axes | None = None,
    mean: Sequence[float] | None = OPENAI_DATASET_MEAN,
    std: Sequence[float] | None = OPENAI_DATASET_STD,
) -> Figure:
    """Heat map of ``attribution`` over ``image`` (Captum's ``visualize_image_attr``).

    Args:
        image: See :func:`to_display`.
        attribution: ``(3, H, W)``, ``(1, H, W)``, ``(H, W)`` (or with a batch of 1).
        method: ``visualize_image_attr`` method (``"blended_heat_map"``, ``"heat_map"``,
            ``"masked_image"``, ``"alpha_scaling"``...).
        sign: ``"all"``, ``"positive"``, ``"negative"`` or ``"absolute_value"``.
        alpha: Heat-map opacity for blended maps.
        title: Axes title.
        ax: Draw into this axes (default: a new figure).
        mean: See :func:`to_display`.
        std: See :func:`to_display`.
    """
    from captum.attr import visualization as viz

    img = to_display(image, mean, std)
    a = _map2d(attribution, img.shape[:2])
    fig, ax = _axes(ax)
    if not np.any(a):  # visualize_image_attr cannot normalise an all-zero map
        ax.imshow(img)
        ax.set_title(title or "")
        ax.axis("off")
        return fig
    viz.visualize_image_attr(
        a[:, :, None],
        img,
        method=method,
        sign=sign,
        plt_fig_axis=(fig, ax),
        use_pyplot=False,
        alpha_overlay=alpha,
        title=title,
    )
    return fig


def plot_clusters(
    image: Any,
    labels: Any,
    weights: Any,
    *,
    title: str | None = None,
    ax: Axes | None = None,
    mean: Sequence[float] | None = OPENAI_DATASET_MEAN,
    std: Sequence[float] | None = OPENAI_DATASET_STD,
    names: Sequence[str | None] | None = None,
) -> Figure:
    """CCI regions: cluster boundaries on the image, each region tinted and labelled by weight.

    Tints use the signed colour map of the heat maps (green = supports the target, red =
    opposes it; :data:`captum_clip.viz.marks.SIGN_CMAP`), scaled by the largest ``|weight|``;
    each label sits at the point deepest inside its region, so labels do not overlap.

    Args:
        image: See :func:`to_display`.
        labels: ``(h, w)`` cluster index per patch (``CCIResult.labels[i]``).
        weights: ``(K,)`` weight per cluster (``CCIResult.weights[i]``; NaN = empty).
        title: Axes title.
        ax: Draw into this axes (default: a new figure).
        mean: See :func:`to_display`.
        std: See :func:`to_display`.
        names: A name per cluster (``NamedRegions.best[i]``), written above its weight.
    """
    from scipy.ndimage import distance_transform_edt
    from skimage.segmentation import find_boundaries

    img = to_display(image, mean, std)
    lab = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).astype(np.int64)
    w = np.asarray(weights.cpu() if isinstance(weights, Tensor) else weights, dtype=np.float64)
    if lab.ndim != 2 or lab.min() < 0 or lab.max() >= len(w):
        raise ValueError(
            f"labels must be (h, w) ints in [0, {len(w)}) (one weight per cluster), got shape "
            f"{lab.shape} with values in [{lab.min()}, {lab.max()}]"
        )
    height, width = img.shape[:2]
    rows = (np.arange(height) * lab.shape[0]) // height
    cols = (np.arange(width) * lab.shape[1]) // width
    full = lab[rows[:, None], cols[None, :]]
    w = np.nan_to_num(w)
    scale = np.abs(w).max() or 1.0
    fig, ax = _axes(ax)
    ax.imshow(img)
    ax.imshow(w[full] / scale, cmap=SIGN_CMAP, vmin=-1, vmax=1, alpha=0.45)
    edges = np.ma.masked_where(~find_boundaries(full, mode="inner"), np.ones_like(full))
    ax.imshow(edges, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for k in np.unique(lab):
        inside = np.pad(full == k, 1)  # the image border counts as a boundary
        depth = distance_transform_edt(inside)[1:-1, 1:-1]
        y, x = np.unravel_index(np.argmax(depth), depth.shape)  # deepest point of the region
        label = f"{w[k]:+.2f}" if not names or names[k] is None else f"{names[k]}\n{w[k]:+.2f}"
        ax.text(x, y, label, ha="center", va="center", fontsize=7,
                bbox=dict(boxstyle="round,pad=0.1", fc="white", alpha=0.7, lw=0))  # fmt: skip
    ax.set_title(title or "CCI clusters")
    ax.axis("off")
    return fig


def compare_methods(
    image: Any,
    attributions: Mapping[str, Any],
    mask: Any = None,
    *,
    sign: str = "all",
    mean: Sequence[float] | None = OPENAI_DATASET_MEAN,
    std: Sequence[float] | None = OPENAI_DATASET_STD,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Side by side: the image (with the object mask outlined), then one heat map per method.

    Args:
        image: See :func:`to_display`.
        attributions: ``{method name: attribution}`` (shapes as in :func:`overlay`).
        mask: Optional ``(H, W)`` bool object mask (outlined on the image, shown as a panel).
        sign: ``visualize_image_attr`` sign for every heat map.
        mean: See :func:`to_display`.
        std: See :func:`to_display`.
        axes: Draw into these axes (``1 + [mask] + len(attributions)`` of them); without
            them a new figure is made, with a colour bar for ``sign="all"`` (green supports
            the target, red opposes it).
    """
    if not isinstance(attributions, Mapping) or not attributions:
        raise ValueError("attributions must be a non-empty {name: attribution} mapping")
    img = to_display(image, mean, std)
    n = 1 + (mask is not None) + len(attributions)
    own = axes is None
    if axes is None:
        fig, axes = _axes(None, n)
    elif len(axes) != n:
        raise ValueError(f"need {n} axes, got {len(axes)}")
    else:
        fig = axes[0].figure
    axes[0].imshow(img)
    axes[0].set_title("image")
    axes[0].axis("off")
    start = 1
    if mask is not None:
        m = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask).astype(bool)
        if m.shape != img.shape[:2]:
            raise ValueError(f"mask must be {img.shape[0]}x{img.shape[1]}, got {m.shape}")
        axes[0].contour(m, levels=[0.5], colors="yellow", linewidths=1)
        axes[1].imshow(m, cmap="gray")
        axes[1].set_title("object mask")
        axes[1].axis("off")
        start = 2
    for ax, (name, attr) in zip(axes[start:], attributions.items()):
        overlay(img, attr, sign=sign, title=name, ax=ax, mean=None)
    if own and sign == "all":  # a figure of its own gets the signed colour bar
        signed_colorbar(fig, list(axes[start:]), fraction=0.03)
    return fig
