"""Plot deletion/insertion (or recall) curves of several attribution methods."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from captum_clip.metrics.faithfulness import curve_auc


def plot_curves(
    curves: Mapping[str, tuple[Tensor, Tensor]],
    *,
    ax: Axes | None = None,
    title: str | None = None,
    xlabel: str = "fraction of pixels perturbed",
    ylabel: str = "score",
    max_fraction: float | None = None,
    show_std: bool = True,
) -> Figure:
    """Plot the mean curve (and +-1 std band) of each method, with its AUC in the legend.

    Uses ``matplotlib.figure.Figure`` directly (no pyplot state), so it works with the Agg
    backend and in headless jobs; save with ``fig.savefig(path)``.

    Args:
        curves: ``{method name: (fractions (S,), scores (B, S) or (S,))}``, e.g. the outputs
            of ``deletion_curve`` for several attribution methods.
        ax: Axes to draw into; a new figure is created when ``None``.
        title: Axes title.
        xlabel: x-axis label.
        ylabel: y-axis label.
        max_fraction: AUC normaliser (defaults to each curve's last fraction).
        show_std: Shade +-1 standard deviation across examples.

    Returns:
        The ``Figure`` holding the axes.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty mapping {name: (fractions, scores)}")
    if ax is None:
        fig = Figure(figsize=(5, 3.5), layout="constrained")
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    for name, curve in curves.items():
        if not isinstance(curve, (tuple, list)) or len(curve) != 2:
            raise ValueError(f"curves[{name!r}] must be a (fractions, scores) pair")
        fractions, scores = (torch.as_tensor(v).detach().cpu().double() for v in curve)
        scores = scores[None] if scores.ndim == 1 else scores
        if fractions.ndim != 1 or scores.ndim != 2 or scores.shape[1] != fractions.shape[0]:
            raise ValueError(
                f"curves[{name!r}]: expected fractions (S,) and scores (B, S), got "
                f"{tuple(fractions.shape)} and {tuple(scores.shape)}"
            )
        auc = curve_auc(fractions, scores, max_fraction).mean().item()
        mean = scores.mean(0)
        (line,) = ax.plot(fractions.numpy(), mean.numpy(), label=f"{name} (AUC {auc:.3f})")
        if show_std and scores.shape[0] > 1:
            std = scores.std(0)
            ax.fill_between(
                fractions.numpy(),
                (mean - std).numpy(),
                (mean + std).numpy(),
                color=line.get_color(),
                alpha=0.2,
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return fig
