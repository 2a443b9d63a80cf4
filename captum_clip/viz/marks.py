"""What every figure of the CLI carries: a signed colour bar, the target, failure marks.

Attribution maps drawn with :func:`captum_clip.viz.maps.overlay` use Captum's red-white-
green colour map scaled so that ±1 is the 98th percentile of ``|attribution|``;
:func:`signed_colorbar` draws the matching bar. :func:`target_title` words the explained
class, :func:`mark_random_weights` and :func:`mark_failure` put a red line on the figure.
"""

from __future__ import annotations

from typing import Any

from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize

__all__ = [
    "RANDOM_WEIGHTS",
    "SIGN_CMAP",
    "figure_texts",
    "mark_failure",
    "mark_random_weights",
    "signed_colorbar",
    "target_title",
]

RANDOM_WEIGHTS = "RANDOM WEIGHTS"
#: Captum's colour map for signed maps (``visualize_image_attr(sign="all")``).
SIGN_CMAP = LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"])


def signed_colorbar(
    fig: Any, axes: Any, label: str = "attribution (±1 = 98th pct of |attr|)", **kw: Any
) -> Any:
    """A colour bar for red (opposes the target) – white – green (supports it) maps."""
    bar = fig.colorbar(
        ScalarMappable(Normalize(-1, 1), SIGN_CMAP), ax=axes, shrink=kw.pop("shrink", 0.8), **kw
    )
    bar.set_ticks([-1, 0, 1], labels=["−1 opposes", "0", "+1 supports"])
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


def target_title(name: str, prob: float, kind: str) -> str:
    """``"explains predicted 'cat' (p=0.87)"``; ``kind`` is ``"predicted"``, ``"true"``..."""
    return f"explains {kind} {name!r} (p={prob:.2f})"


def mark_random_weights(
    fig: Any, detail: str = "this model is untrained, the maps are meaningless"
) -> None:
    """A red line at the top of ``fig``: ``"RANDOM WEIGHTS: <detail>"``."""
    fig.text(
        0.5, 1.0, f"{RANDOM_WEIGHTS}: {detail}",
        color="red", ha="center", va="bottom", fontsize=10, fontweight="bold",
    )  # fmt: skip


def mark_failure(ax: Any, text: str) -> None:
    """A red note under an axes (misclassified row, top region off the object...)."""
    ax.text(
        0.5, -0.02, text, transform=ax.transAxes, color="red", ha="center", va="top",
        fontsize=8, fontweight="bold",
    )  # fmt: skip


def figure_texts(fig: Any) -> list[str]:
    """Every text of a figure: suptitle, figure texts, axes titles/labels/texts, legends."""
    out = [t.get_text() for t in fig.texts]
    if getattr(fig, "_suptitle", None) is not None:
        out.append(fig._suptitle.get_text())
    for ax in fig.axes:
        out += [ax.get_title(loc) for loc in ("left", "center", "right")]
        out += [ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.texts]
        legend = ax.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
    return [t for t in out if t]
