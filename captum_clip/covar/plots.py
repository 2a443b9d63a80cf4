"""Plots of a ``covar eval`` summary: per-subset accuracy and BG-Er, per-model BG-Er."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["plot_summary"]


def plot_summary(
    summary: pd.DataFrame, path: str | os.PathLike | None = None, title: str | None = None
):
    """Three panels: accuracy per subset, BG-Er (share of all images) per subset, and
    BG-Er / FG-Er / Fine-Er shares of the errors per model (all subsets).

    Args:
        summary: Output of :func:`~captum_clip.covar.evaluate.summarise_results`.
        path: Where to save the PNG (``None``: do not save).
        title: Figure title.

    Returns:
        The matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    needed = {
        "model",
        "subset",
        "accuracy",
        "bg_er_of_all",
        "bg_er_rate",
        "fg_er_rate",
        "fine_er_rate",
    }
    missing = needed - set(summary.columns)
    if missing:
        raise ValueError(f"summary lacks columns {sorted(missing)}")
    per = summary[summary["subset"] != "all"]
    models = list(dict.fromkeys(summary["model"]))
    subsets = list(dict.fromkeys(per["subset"]))
    # a pyplot-free Figure: never switches the user's backend, nothing to close
    fig = Figure(figsize=(max(8, 0.7 * len(subsets) * max(1, len(models)) / 2), 11))
    axes = fig.subplots(3, 1)
    width = 0.8 / max(1, len(models))
    x = np.arange(len(subsets))
    for panel, (col, label) in enumerate(
        (("accuracy", "accuracy"), ("bg_er_of_all", "BG-Er / all images"))
    ):
        ax = axes[panel]
        for i, m in enumerate(models):
            s = per[per["model"] == m].set_index("subset").reindex(subsets)
            ax.bar(
                x + (i - (len(models) - 1) / 2) * width,
                s[col].to_numpy(dtype=float),
                width,
                label=m,
            )
        ax.set_xticks(x, subsets, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small", ncols=min(4, len(models)))
    allrows = summary[summary["subset"] == "all"].set_index("model").reindex(models)
    bottom = np.zeros(len(models))
    xm = np.arange(len(models))
    for col, label in (
        ("bg_er_rate", "BG-Er"),
        ("fg_er_rate", "FG-Er"),
        ("fine_er_rate", "Fine-Er"),
    ):
        v = np.nan_to_num(allrows[col].to_numpy(dtype=float))
        axes[2].bar(xm, v, 0.6, bottom=bottom, label=label)
        bottom += v
    axes[2].set_xticks(xm, models, rotation=20, ha="right")
    axes[2].set_ylabel("share of errors (all subsets)")
    axes[2].set_ylim(0, 1)
    axes[2].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig
