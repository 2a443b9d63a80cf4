"""Figures for :class:`~captum_clip.attr.interactions.InteractionResult`.

:func:`plot_interactions` draws the image, one interaction heat map per caption word (the
word's row of ``A`` on the patch grid, upsampled to the image) and a bar chart of every
token's interaction with a chosen image region.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from captum_clip.viz.maps import to_display

__all__ = ["caption_positions", "plot_interactions"]


def caption_positions(tokens: Sequence[str]) -> list[int]:
    """Positions of the caption's words: between the start token and the end-of-text token."""
    last = max((i for i, t in enumerate(tokens) if t), default=-1)
    return list(range(1, last))


def plot_interactions(
    result: Any,
    image: Any,
    words: Sequence[Any] | None = None,
    region: Tensor | None = None,
    pair: int = 0,
    cmap: str = "RdBu_r",
    alpha: float = 0.6,
    title: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
):
    """Image, one heat map per word, and a token bar chart for a region.

    Args:
        result: An :class:`~captum_clip.attr.interactions.InteractionResult`.
        image: The picture to draw under the maps: a PIL image, an ``HxWx3`` array, or a
            ``(3, H, W)`` tensor in ``[0, 1]`` (pass ``mean``/``std`` for a normalised one);
            see :func:`captum_clip.viz.maps.to_display`.
        words: Token spans to map (ints, words, slices or lists of positions); default:
            every caption word (start/end tokens excluded).
        region: Patch-grid ``(h, w)`` or pixel ``(H, W)`` mask for the bar chart (default:
            the whole image, i.e. the first-order text attributions without the CLS column).
        pair: Which pair of the batch.
        cmap: Diverging colour map (shared, symmetric limits over all maps).
        alpha: Opacity of the heat maps.
        title: Figure title (default: score and convergence delta).
        mean: Normalisation mean of a normalised tensor ``image`` (e.g. open_clip's
            ``OPENAI_DATASET_MEAN``); ``None``: the image is already displayable.
        std: Normalisation std matching ``mean``.

    Returns:
        A ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    if not 0 <= pair < result.attributions.shape[0]:
        raise ValueError(f"pair must be in [0, {result.attributions.shape[0] - 1}], got {pair}")
    tokens = result.tokens[pair]
    spans = list(words) if words is not None else caption_positions(tokens)
    if not spans:
        raise ValueError("no words to plot: the caption has no tokens between start and end")
    img = to_display(image, mean=mean, std=std)
    size = img.shape[:2]
    maps = [result.image_map(s, pair=pair, size=size).cpu().numpy() for s in spans]
    sums = [float(result.image_map(s, pair=pair).sum()) for s in spans]
    labels = [" ".join(tokens[i] for i in result.token_indices(s, pair)) for s in spans]
    lim = max(float(np.abs(m).max()) for m in maps) or 1.0
    n = len(spans) + 1
    fig = Figure(figsize=(2.4 * n, 5.2), layout="constrained")  # pyplot-free
    grid = fig.add_gridspec(2, n, height_ratios=[1.0, 0.8])
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(img)
    ax.set_title("image")
    ax.axis("off")
    mappable = None
    for j, (m, label, total) in enumerate(zip(maps, labels, sums), start=1):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(img)
        mappable = ax.imshow(m, cmap=cmap, vmin=-lim, vmax=lim, alpha=alpha)
        ax.set_title(f"{label}\n(patch sum {total:.3g})", fontsize=9)
        ax.axis("off")
    fig.colorbar(mappable, ax=fig.axes[1:], shrink=0.8, label="interaction (red raises the score)")
    bar = fig.add_subplot(grid[1, :])
    scores = result.token_scores(region, pair=pair).detach().cpu().numpy()
    last = max((i for i, t in enumerate(tokens) if t), default=len(tokens) - 1)
    shown = np.arange(last + 1)
    colours = ["tab:red" if v > 0 else "tab:blue" for v in scores[shown]]
    bar.bar(shown, scores[shown], color=colours)
    bar.set_xticks(shown, [tokens[i] for i in shown], rotation=45, ha="right", fontsize=8)
    bar.axhline(0, color="black", linewidth=0.5)
    bar.set_ylabel(
        "interaction with the region" if region is not None else "interaction with all patches",
        fontsize=8,
    )
    bar.set_title(
        "each token's interaction summed over "
        + ("the region's patches" if region is not None else "all image patches")
        + " (the image's CLS token excluded"
        + ("" if region is not None else "; each word map above sums to its bar")
        + ")",
        fontsize=8,
    )
    if title is None:
        title = (
            f"score {float(result.score[pair]):.4f}; the interactions sum to the four-term "
            f"difference {float(result.score_difference[pair]):.4f} "
            f"(delta {float(result.delta[pair]):.1e})"
        )
    fig.suptitle(title, fontsize=10)
    return fig
