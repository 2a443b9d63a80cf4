"""Aggregates of grounding rows: per class, and the three failure categories.

Every aggregate is a list of dicts (one per group) with ``n`` and, for each statistic
``s`` of :data:`STATS`, its mean ``s`` and spread ``s_sd``. Without ``spread_over`` the
spread is the standard deviation over the rows of the group; with ``spread_over="seed"``
the statistic is first averaged per seed, and ``s`` / ``s_sd`` are the mean and standard
deviation of those per-seed values (``n_seeds`` of them).

Failure categories (definitions; each is a plain selection of the rows):

* **coverage** -- grounding of the ``object`` words as a function of the object's area:
  rows binned by ``area_share``; per bin the mean ``object_share`` against the mean
  ``area_share`` (the chance level) and the rate of *misplaced* object words (object
  share below the area share).
* **unusual scenes** -- the ``object`` words on scenes flagged ``unusual`` (a column the
  caller supplies: e.g. backgrounds never seen with the class in training) against the
  others.
* **correlated contexts** -- the rate of misplaced rows per role: the object word
  grounded on the background (object share below area share) or the context word grounded
  on the object (object share above area share).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

from captum_clip.storage import atomic_write

__all__ = [
    "DEFAULT_BINS",
    "STATS",
    "by_class",
    "correlated_contexts",
    "coverage",
    "markdown",
    "summarise",
    "unusual_scenes",
    "write_csv",
]

STATS = (
    "area_share",
    "object_share",
    "background_share",
    "lift",
    "caption_share",
    "pointing",
    "total",
    "misplaced",
)
DEFAULT_BINS = (0.0, 0.1, 0.2, 0.3, 0.45, 1.0)


def _value(row: dict[str, Any], stat: str) -> float:
    if stat == "background_share":
        return 1.0 - float(row["object_share"])
    v = row.get(stat)
    if v is None or v == "":
        return math.nan
    return float(v)


def _mean_sd(values: Iterable[float]) -> tuple[float, float, int]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, 0
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, math.nan, len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var), len(vals)


def _groups(rows: Sequence[dict], by: Sequence[str]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for row in rows:
        missing = [k for k in by if k not in row]
        if missing:
            raise ValueError(f"rows have no column {missing[0]!r}; columns: {sorted(row)}")
        out.setdefault(tuple(row[k] for k in by), []).append(row)
    return dict(sorted(out.items(), key=lambda kv: tuple(str(k) for k in kv[0])))


def summarise(
    rows: Sequence[dict[str, Any]], by: Sequence[str] = (), spread_over: str | None = None
) -> list[dict[str, Any]]:
    """Mean and spread of :data:`STATS` per group of rows (see the module docstring).

    Args:
        rows: Rows of :func:`~captum_clip.grounding.measure`.
        by: Columns to group by (e.g. ``("class", "role")``); ``()`` = one group.
        spread_over: A column (e.g. ``"seed"``) whose per-value means give the spread.
    """
    by = tuple(by)
    out = []
    for key, group in _groups(rows, by).items():
        res: dict[str, Any] = dict(zip(by, key))
        res["n"] = len(group)
        if spread_over is None:
            for stat in STATS:
                res[stat], res[stat + "_sd"], _ = _mean_sd(_value(r, stat) for r in group)
        else:
            per = _groups(group, (spread_over,))
            res["n_seeds"] = len(per)
            for stat in STATS:
                means = [_mean_sd(_value(r, stat) for r in g)[0] for g in per.values()]
                res[stat], res[stat + "_sd"], _ = _mean_sd(means)
        out.append(res)
    return out


def by_class(
    rows: Sequence[dict[str, Any]], spread_over: str | None = None
) -> list[dict[str, Any]]:
    """Per-class, per-role aggregates (rows need a ``class`` column)."""
    return summarise(rows, ("class", "role"), spread_over)


def _bin_label(value: float, edges: Sequence[float]) -> str:
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo <= value < hi or (hi == edges[-1] and value == hi):
            return f"{lo:.2f}-{hi:.2f}"
    raise ValueError(f"area share {value:.3f} is outside the bins {list(edges)}")


def coverage(
    rows: Sequence[dict[str, Any]],
    bins: Sequence[float] = DEFAULT_BINS,
    by: Sequence[str] = (),
    spread_over: str | None = None,
) -> list[dict[str, Any]]:
    """The coverage curve: ``object`` rows per object-area bin (column ``area_bin``).

    Args:
        rows: Grounding rows.
        bins: Increasing bin edges on the area share, covering every row.
        by: Further grouping columns (e.g. ``("model",)``).
        spread_over: See :func:`summarise`.
    """
    edges = [float(b) for b in bins]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:])):
        raise ValueError(f"bins must be at least two increasing edges, got {list(bins)}")
    sel = [
        dict(r, area_bin=_bin_label(r["area_share"], edges)) for r in rows if r["role"] == "object"
    ]
    return summarise(sel, (*by, "area_bin"), spread_over)


def unusual_scenes(
    rows: Sequence[dict[str, Any]], by: Sequence[str] = (), spread_over: str | None = None
) -> list[dict[str, Any]]:
    """``object`` rows on usual vs unusual scenes (rows need an ``unusual`` column)."""
    sel = [r for r in rows if r["role"] == "object"]
    return summarise(sel, (*by, "unusual"), spread_over)


def correlated_contexts(
    rows: Sequence[dict[str, Any]], by: Sequence[str] = (), spread_over: str | None = None
) -> list[dict[str, Any]]:
    """``object`` and ``context`` rows: their ``misplaced`` rate is the failure rate."""
    sel = [r for r in rows if r["role"] in ("object", "context")]
    return summarise(sel, (*by, "role"), spread_over)


def _fmt(value: Any, sd: Any = None, digits: int = 3) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        text = f"{value:.{digits}f}"
        if isinstance(sd, float) and not math.isnan(sd):
            text += f" ± {sd:.{digits}f}"
        return text
    return "" if value is None else str(value)


def markdown(
    summary: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, digits: int = 3
) -> str:
    """A Markdown table; a statistic with a ``_sd`` column shows as ``mean ± sd``."""
    if not summary:
        return "(no rows)"
    if columns is None:
        columns = [c for c in summary[0] if not c.endswith("_sd")]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in summary:
        cells = [_fmt(row.get(c), row.get(c + "_sd"), digits) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write rows (the union of their columns, in first-seen order) to a CSV file.

    Atomically (:func:`captum_clip.storage.atomic_write`): a reader or a second run never
    sees a half-written table."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)

    def save(tmp: Any) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})

    atomic_write(path, save)
