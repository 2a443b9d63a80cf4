"""Figures of a grounding analysis (pyplot-free ``matplotlib.figure.Figure`` objects).

Each function takes aggregates from :mod:`captum_clip.grounding.summary` keyed by a
``model`` column (one series per model) and returns a ``Figure``; nothing switches the
user's matplotlib backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["plot_classes", "plot_coverage", "plot_examples", "plot_groups"]


def _models(summary: Sequence[dict[str, Any]]) -> list[Any]:
    return list(dict.fromkeys(r.get("model", "") for r in summary))


def _get(summary, model, role, key, value, stat) -> tuple[float, float]:
    for r in summary:
        if r.get("model", "") == model and r["role"] == role and r[key] == value:
            sd = r.get(stat + "_sd", math.nan)
            return float(r[stat]), (0.0 if math.isnan(sd) else float(sd))
    return math.nan, 0.0


def plot_groups(
    summary: Sequence[dict[str, Any]],
    key: str,
    panels: Sequence[tuple[str, str, str]] = (
        ("object", "object_share", "object word: share on the object"),
        ("context", "background_share", "context word: share on the background"),
    ),
    title: str | None = None,
):
    """Grouped bars of statistics per value of ``key`` (e.g. ``class`` or ``condition``).

    Args:
        summary: Rows of :func:`~captum_clip.grounding.summarise` grouped by
            ``("model", key, "role")`` (``model`` optional).
        key: The grouping column on the x axis.
        panels: ``(role, statistic, title)`` per panel; the chance level (the mean area
            share, or background share) is drawn as a black tick on every bar.
        title: Figure title.
    """
    from matplotlib.figure import Figure

    models = _models(summary)
    groups = list(dict.fromkeys(r[key] for r in summary))
    fig = Figure(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(models))), 3.4 * len(panels)))
    axes = np.atleast_1d(fig.subplots(len(panels), 1))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(groups))
    for ax, (role, stat, label) in zip(axes, panels):
        for i, model in enumerate(models):
            vals = [_get(summary, model, role, key, g, stat) for g in groups]
            area = [_get(summary, model, role, key, g, "area_share")[0] for g in groups]
            chance = [1 - a for a in area] if stat == "background_share" else area
            pos = x + (i - (len(models) - 1) / 2) * width
            ax.bar(pos, [v[0] for v in vals], width, yerr=[v[1] for v in vals], capsize=3,
                   label=str(model) or stat)  # fmt: skip
            ax.scatter(pos, chance, marker="_", s=300, color="black", zorder=3,
                       label="chance (uniform map)" if i == 0 else None)  # fmt: skip
        ax.set_xticks(x, [str(g) for g in groups], rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of positive interaction")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_classes(summary: Sequence[dict[str, Any]], title: str | None = None):
    """Per-class bars (rows of :func:`~captum_clip.grounding.by_class` plus ``model``)."""
    return plot_groups(summary, "class", title=title or "grounding per class")


def plot_coverage(curve: Sequence[dict[str, Any]], title: str | None = None):
    """The coverage curve: object share of the object word against the object's area.

    Args:
        curve: Rows of :func:`~captum_clip.grounding.coverage` (``by=("model",)`` for
            several series); x is each bin's mean area share, error bars its spread.
        title: Figure title.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    for model in _models(curve):
        rows = [r for r in curve if r.get("model", "") == model]
        rows.sort(key=lambda r: r["area_share"])
        xs = [r["area_share"] for r in rows]
        ys = [r["object_share"] for r in rows]
        sd = [0.0 if math.isnan(r.get("object_share_sd", math.nan)) else r["object_share_sd"]
              for r in rows]  # fmt: skip
        ax.errorbar(xs, ys, yerr=sd, marker="o", capsize=3, label=str(model) or "object word")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="chance (share = area)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("object area share (bin mean)")
    ax.set_ylabel("object word: positive interaction on the object")
    ax.set_title(title or "coverage: grounding vs object size", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_examples(
    result: Any,
    images: Sequence[Any],
    masks: Sequence[Any],
    roles: Sequence[dict[str, Any]],
    captions: Sequence[str],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cmap: str = "RdBu_r",
):
    """Example word maps: per pair the image with the object outline, then the map of
    each role word (object, context) over a pale greyscale copy of the image.

    Each row has its own symmetric colour scale (``±`` the largest ``|interaction|`` of
    that row's maps) and colour bar, so a row's peak is dark whatever the other rows
    hold; the largest positive value of each map is marked with a ring. The greyscale
    background keeps the saturated object and textured backgrounds from hiding the map.

    Args:
        result: The :class:`~captum_clip.attr.InteractionResult` of the pairs.
        images: Per pair a displayable image (see :func:`captum_clip.viz.maps.to_display`).
        masks: Per pair a pixel mask of the displayed image's size.
        roles: Word roles per pair.
        captions: Captions per pair.
        mean, std: Normalisation of tensor ``images`` (``None``: already in ``[0, 1]``).
        cmap: Diverging colour map.
    """
    from matplotlib.figure import Figure

    from captum_clip.viz.maps import to_display

    shown = ("object", "context")
    n = len(captions)
    fig = Figure(figsize=(2.6 * (1 + len(shown)) + 1.0, 2.7 * n + 0.3), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, 1 + len(shown)))
    for i in range(n):
        img = to_display(images[i], mean=mean, std=std)
        grey = img[..., :3].mean(-1) if img.ndim == 3 else img
        pale = 0.55 + 0.45 * (grey - grey.min()) / max(float(np.ptp(grey)), 1e-8)
        mask = np.asarray(masks[i], dtype=float)
        row = {}
        for role in shown:
            word = roles[i].get(role)
            if isinstance(word, str):
                m = result.image_map(word, pair=i, size=img.shape[:2]).detach().cpu().numpy()
                row[role] = (word, m)
        lim = max((float(np.abs(m).max()) for _, m in row.values()), default=0.0) or 1.0
        axes[i, 0].imshow(img)
        axes[i, 0].contour(mask, levels=[0.5], colors="yellow", linewidths=1)
        axes[i, 0].set_title(captions[i], fontsize=8)
        mappable = None
        for j, role in enumerate(shown, start=1):
            ax = axes[i, j]
            ax.imshow(pale, cmap="gray", vmin=0, vmax=1)
            if role in row:
                word, m = row[role]
                mappable = ax.imshow(m, cmap=cmap, vmin=-lim, vmax=lim, alpha=0.8)
                ax.contour(mask, levels=[0.5], colors="black", linewidths=0.8)
                y, x = np.unravel_index(int(np.argmax(m)), m.shape)
                ax.scatter([x], [y], s=90, facecolors="none", edgecolors="black", linewidths=1.5)
                ax.set_title(f"{role}: {word!r} (peak {m.max():+.1e})", fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
        if mappable is not None:
            fig.colorbar(mappable, ax=list(axes[i, 1:]), shrink=0.85, label="interaction")
    return fig
