"""Plots of a ``covar eval`` summary: per-subset accuracy and BG-Er, per-model BG-Er."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from captum_clip.viz.marks import RANDOM_WEIGHTS, mark_random_weights

__all__ = ["plot_summary"]


def plot_summary(
    summary: pd.DataFrame, path: str | os.PathLike | None = None, title: str | None = None
):
    """Three panels: accuracy per subset, BG-Er (share of all images) per subset, and
    BG-Er / FG-Er / Fine-Er shares of the errors per model (all subsets).

    Args:
        summary: Output of :func:`~captum_clip.covar.summary.summarise_results`.
        path: Where to save the PNG (``None``: do not save).
        title: Figure title (default: what was evaluated). Models whose spec names an
            open_clip architecture without weights are marked ``RANDOM WEIGHTS``.

    Returns:
        The matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    from captum_clip.models.spec import has_random_weights

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
    random = [m for m in models if has_random_weights(m)]
    names = {m: f"{m} ({RANDOM_WEIGHTS})" if m in random else m for m in models}
    subsets = list(dict.fromkeys(per["subset"]))
    # a pyplot-free Figure: never switches the user's backend, nothing to close
    fig = Figure(figsize=(max(8, 0.7 * len(subsets) * max(1, len(models)) / 2), 11))
    axes = fig.subplots(3, 1)
    width = 0.8 / max(1, len(models))
    x = np.arange(len(subsets))
    panels = (
        ("accuracy", "accuracy", "zero-shot accuracy per subset (transform of the composites)"),
        ("bg_er_of_all", "BG-Er / all images",
         "background-driven errors (BG-Er) as a share of ALL images of the subset"),
    )  # fmt: skip
    for panel, (col, label, what) in enumerate(panels):
        ax = axes[panel]
        ax.set_title(what, fontsize=10)
        for i, m in enumerate(models):
            s = per[per["model"] == m].set_index("subset").reindex(subsets)
            ax.bar(
                x + (i - (len(models) - 1) / 2) * width,
                s[col].to_numpy(dtype=float),
                width,
                label=names[m],
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
    axes[2].set_xticks(xm, [names[m] for m in models], rotation=20, ha="right")
    axes[2].set_ylabel("share of errors (all subsets)")
    axes[2].set_title(
        "error types, shares of the errors: BG-Er background-driven, FG-Er foreground-driven, "
        "Fine-Er between close classes",
        fontsize=9,
    )
    axes[2].set_ylim(0, 1)
    axes[2].legend(fontsize="small")
    if title is None:
        title = (
            f"covar eval: {len(models)} model(s) x {len(subsets)} subset(s); "
            "driver = CCI attribution share on the exact object mask"
        )
    fig.suptitle(title)
    if random:
        mark_random_weights(fig, f"{', '.join(random)} untrained, their numbers meaningless")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps a mark above the title
    return fig
