"""The files of a grounding analysis: CSV table, Markdown summary and figures."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from captum_clip.grounding import plots
from captum_clip.grounding.summary import (
    correlated_contexts,
    coverage,
    markdown,
    summarise,
    unusual_scenes,
    write_csv,
)
from captum_clip.viz.marks import mark_random_weights

__all__ = ["summary_markdown", "write_report"]

STAT_COLUMNS = (
    "n", "area_share", "object_share", "caption_share", "pointing", "total", "misplaced",
)  # fmt: skip


def _columns(*keys: str) -> list[str]:
    return [*keys, *STAT_COLUMNS]


def summary_markdown(
    rows: Sequence[dict[str, Any]], mode: str, spread: str | None, settings: Mapping[str, Any]
) -> str:
    """The Markdown summary of a grounding analysis (see ``docs/grounding.md``)."""
    spread_text = (
        "mean ± standard deviation over the seeds' means"
        if spread
        else "mean ± standard deviation over the images"
    )
    has_unusual = all("unusual" in r for r in rows)
    parts = [
        "# Caption grounding",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".",
        "",
        f"Numbers: {spread_text}. `object_share`: share of the word's positive interaction "
        "mass on the object; `area_share`: the object's share of the image (chance level); "
        "`caption_share`: the same share for the whole caption's map (where the image's "
        "interaction mass lies anyway); `pointing`: the word map's maximum lies on the object; `total`: the word's "
        "interaction with the whole image; `misplaced`: object word grounded below chance "
        "on the object, or context word above chance on it (definitions in "
        "`docs/grounding.md`).",
        "",
        "## Per class",
        "",
        markdown(
            summarise(rows, ("model", "class", "role"), spread), _columns("model", "class", "role")
        ),  # fmt: skip
        "",
        "## Coverage (object word per object-area bin)",
        "",
        markdown(
            coverage(rows, by=("model",), spread_over=spread), _columns("model", "area_bin")
        ),  # fmt: skip
        "",
    ]
    if mode == "testbed":
        parts += [
            "## Conditions (aligned / conflicting / neutral = unusual backgrounds)",
            "",
            markdown(
                summarise(rows, ("model", "condition", "role"), spread),
                _columns("model", "condition", "role") + ["background_share"],
            ),  # fmt: skip
            "",
        ]
    if has_unusual:
        parts += [
            "## Unusual scenes (object word)",
            "",
            markdown(unusual_scenes(rows, ("model",), spread), _columns("model", "unusual")),
            "",
        ]
    parts += [
        "## Correlated contexts (misplaced rate per role)",
        "",
        markdown(
            correlated_contexts(rows, ("model",), spread),
            _columns("model", "role") + ["background_share"],
        ),  # fmt: skip
        "",
    ]
    return "\n".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


def write_report(
    rows: Sequence[dict[str, Any]],
    examples: Mapping[str, tuple],
    out: str | os.PathLike,
    mode: str,
    spread: str | None,
    settings: Mapping[str, Any],
    random_weights: Sequence[str] = (),
) -> list[str]:
    """Write ``grounding.csv``, ``grounding.md`` and the figures into ``out``.

    Args:
        rows: Grounding rows with ``model`` and ``class`` columns.
        examples: Per model ``(result, displayable images, masks, roles, captions)`` for
            the example figure (``result`` None: no figure).
        out: Output folder.
        mode: ``"testbed"`` (condition figure) or ``"folder"``.
        spread: Column the spread is taken over (``"seed"``) or None (over images).
        settings: Shown in the summary's first line.
        random_weights: Models with random weights: their figures get the RANDOM WEIGHTS
            mark (the summary figures when any model has random weights).

    Returns:
        The paths written.
    """
    written = []

    def path(name: str) -> str:
        p = os.path.join(os.fspath(out), name)
        written.append(p)
        return p

    write_csv(rows, path("grounding.csv"))
    with open(path("grounding.md"), "w") as fh:
        fh.write(summary_markdown(rows, mode, spread, settings))
    figures = {
        "classes.png": plots.plot_classes(summarise(rows, ("model", "class", "role"), spread)),
        "coverage.png": plots.plot_coverage(coverage(rows, by=("model",), spread_over=spread)),
    }
    if mode == "testbed":
        figures["conditions.png"] = plots.plot_groups(
            summarise(rows, ("model", "condition", "role"), spread), "condition",
            title="grounding by background condition (neutral = unusual)",
        )  # fmt: skip
    elif all("unusual" in r for r in rows):
        figures["unusual.png"] = plots.plot_groups(
            summarise(rows, ("model", "unusual", "role"), spread), "unusual",
            title="grounding on usual vs unusual scenes",
        )  # fmt: skip
    marked = set(figures) if random_weights else set()
    for model, (result, images, masks, roles, captions) in examples.items():
        if result is not None and len(captions):
            name = f"examples_{_slug(model)}.png"
            figures[name] = plots.plot_examples(result, list(images), list(masks), roles, captions)
            if model in random_weights:
                marked.add(name)
    for name, fig in figures.items():
        if name in marked:
            mark_random_weights(fig)
        fig.savefig(path(name), dpi=110)
    return written
