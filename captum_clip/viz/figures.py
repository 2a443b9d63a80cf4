"""The composed figures of ``captum-clip explain`` and ``captum-clip demo``.

Each follows the figure conventions of ``docs/cli.md``: a colour bar for the signed maps,
a title with the explained class (predicted or true, with its probability), and red marks
for a random-weights model and for failure cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure
from torch import Tensor

from captum_clip.viz.maps import overlay, plot_clusters, to_display
from captum_clip.viz.marks import (
    mark_failure,
    mark_random_weights,
    signed_colorbar,
    target_title,
)

__all__ = ["demo_figure", "explain_figure"]


def explain_figure(
    image: Tensor,
    attribution: Tensor,
    *,
    method: str,
    target_name: str,
    target_prob: float,
    target_kind: str,
    prediction: tuple[str, float],
    model_name: str,
    random_weights: bool = False,
    clusters: tuple[Tensor, Tensor] | None = None,
    region_names: Sequence[str | None] | None = None,
) -> Figure:
    """Image | attribution map (+ CCI regions) with a colour bar and the target in the title.

    Args:
        image: Normalised ``(3, H, W)`` input (CLIP statistics).
        attribution: ``(3, H, W)`` or ``(H, W)`` map of the explained class.
        method: Name shown over the map (``"CCI"``, ``"GradCAM"``).
        target_name: The explained class.
        target_prob: Its probability.
        target_kind: ``"predicted"`` or ``"given"``.
        prediction: ``(class, probability)`` of the model's prediction.
        model_name: The model spec, shown in the title.
        random_weights: Mark the figure as coming from an untrained model.
        clusters: CCI's ``(labels (h, w), weights (K,))`` for a regions panel.
        region_names: A name per region (``--concepts``): the panel labels each region.
    """
    n = 3 if clusters is not None else 2
    fig = Figure(figsize=(3.2 * n + 0.8, 3.6), layout="constrained")
    axes = fig.subplots(1, n)
    axes[0].imshow(to_display(image))
    axes[0].set_title("image", fontsize=9)
    axes[0].axis("off")
    overlay(image, attribution, title=f"{method} map", ax=axes[1])
    if clusters is not None:
        what = "CCI regions (name, weight)" if region_names else "CCI regions (weight)"
        plot_clusters(image, clusters[0], clusters[1], title=what, ax=axes[2], names=region_names)
    signed_colorbar(fig, list(axes[1:]), label="±1: 98th pct |map| / max |region weight|")
    title = f"{model_name}: {method} {target_title(target_name, target_prob, target_kind)}"
    if prediction[0] != target_name:
        title += f"; the model predicts {prediction[0]!r} (p={prediction[1]:.2f})"
    fig.suptitle(title, fontsize=10)
    if random_weights:
        mark_random_weights(fig)
    return fig


def demo_figure(
    images: Tensor,
    maps: Mapping[str, Tensor],
    masks: Tensor,
    class_names: Sequence[str],
    targets: Sequence[int],
    probs: Tensor,
    failures: Sequence[str],
    random_weights: bool = False,
) -> Figure:
    """Rows = scenes; columns = image (object outlined), object mask, one map per method.

    Args:
        images: Normalised ``(B, 3, H, W)`` scenes.
        maps: ``{method: (B, 3, H, W) attributions}`` of the true class.
        masks: ``(B, H, W)`` bool object masks.
        class_names: Class names.
        targets: True class per scene (the explained one).
        probs: ``(B, n_classes)`` probabilities.
        failures: One note per scene ("" = none), drawn in red under the scene.
        random_weights: Mark the figure as coming from an untrained model.
    """
    from captum_clip.viz.maps import compare_methods

    b = images.shape[0]
    fig = Figure(figsize=(2.1 * (2 + len(maps)) + 0.9, 2.3 * b + 0.6), layout="constrained")
    axes = fig.subplots(b, 2 + len(maps), squeeze=False)
    for i in range(b):
        compare_methods(images[i], {k: v[i] for k, v in maps.items()}, masks[i], axes=axes[i])
        t, pred = int(targets[i]), int(probs[i].argmax())
        axes[i][1].set_title("object mask", fontsize=8)
        axes[i][0].set_title(
            f"true {class_names[t]!r} (p={float(probs[i, t]):.2f})\n"
            f"predicted {class_names[pred]!r} (p={float(probs[i, pred]):.2f})",
            fontsize=8,
            color="black" if pred == t else "red",
        )
        if failures[i]:
            mark_failure(axes[i][2], failures[i])
        for ax in axes[i][2:]:
            ax.set_title(ax.get_title(), fontsize=8)
    signed_colorbar(fig, list(axes[:, 2:].ravel()), shrink=0.5)
    fig.suptitle("Maps explain the TRUE class of each scene (green supports it, red opposes)")
    if random_weights:
        mark_random_weights(fig)
    return fig
