"""Named regions: outlines on the image, each region labelled with its best name, tinted by
its share of the decision (with a signed colour bar) -- or, for regions not from CCI, by
area."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from captum_clip.viz.maps import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, to_display
from captum_clip.viz.marks import SIGN_CMAP

__all__ = ["plot_named_regions"]


def plot_named_regions(
    named: Any,
    images: Any = None,
    index: int | Sequence[int] = 0,
    *,
    mean: Sequence[float] | None = OPENAI_DATASET_MEAN,
    std: Sequence[float] | None = OPENAI_DATASET_STD,
    title: str | None = None,
    size: float = 3.6,
) -> Figure:
    """One panel per image: region outlines, ``"name (share)"`` labels, share tints.

    Args:
        named: A :class:`~captum_clip.concepts.NamedRegions`.
        images: ``(B, 3, H, W)`` the images that were named (normalised unless
            ``mean=None``); None draws the regions on grey.
        index: Image index, or several.
        mean, std: See :func:`captum_clip.viz.to_display`.
        title: Figure title (default: what the tint and labels mean).
        size: Inches per panel.
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from scipy.ndimage import distance_transform_edt
    from skimage.segmentation import find_boundaries

    indices = [index] if isinstance(index, int) else list(index)
    n = len(named.labels)
    bad = [i for i in indices if not isinstance(i, int) or not 0 <= i < n]
    if not indices or bad:
        raise ValueError(f"index must be image indices in [0, {n}), got {index!r}")
    fig, axes = plt.subplots(1, len(indices), figsize=(size * len(indices) + 1.0, size + 0.6))
    axes = np.atleast_1d(axes)
    has_share = not bool(np.isnan(named.share.numpy()).all())
    for ax, i in zip(axes, indices):
        lab = named.labels[i].numpy()
        if images is None:
            img = np.full((*lab.shape, 3), 0.5)
        else:
            img = to_display(images[i], mean, std)
        share = np.nan_to_num(named.share[i].numpy())
        scale = np.abs(share).max() or 1.0
        ax.imshow(img)
        if has_share:
            ax.imshow(share[lab] / scale, cmap=SIGN_CMAP, vmin=-1, vmax=1, alpha=0.4)
        edges = np.ma.masked_where(~find_boundaries(lab, mode="inner"), np.ones_like(lab))
        ax.imshow(edges, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for r, name in enumerate(named.best[i]):
            if name is None or not (lab == r).any():
                continue
            inside = np.pad(lab == r, 1)
            depth = distance_transform_edt(inside)[1:-1, 1:-1]
            y, x = np.unravel_index(np.argmax(depth), depth.shape)
            value = f"{share[r]:+.0%}" if has_share else f"{float(named.area[i, r]):.0%} area"
            ax.text(x, y, f"{name}\n{value}", ha="center", va="center", fontsize=7,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", alpha=0.75, lw=0))  # fmt: skip
        ax.set_title(f"image {i}", fontsize=9)
        ax.axis("off")
    if has_share:
        bar = fig.colorbar(ScalarMappable(Normalize(-1, 1), SIGN_CMAP), ax=list(axes), shrink=0.8)
        bar.set_ticks([-1, 0, 1], labels=["−max opposes", "0", "+max supports"])
        bar.set_label("region's share of the decision", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(
        title or "regions named by the namer: best name and share of the decision", fontsize=9
    )
    return fig
