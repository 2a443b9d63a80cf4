"""Markdown tables and curve plots of faithfulness-benchmark results."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from captum_clip.benchmark.faithfulness import FaithfulnessResult

__all__ = [
    "markdown_report",
    "reference_comparison",
    "reference_method",
    "save_curve_plots",
    "slug",
]

REFERENCE = "CCI"
COLUMNS = (  # (column, header, lower is better)
    ("deletion_prob", "del. AUC prob ↓", True),
    ("deletion_top1", "del. AUC top-1 ↓", True),
    ("deletion_prob_patch", "del. prob, patches ↓", True),
    ("deletion_prob_blur", "del. prob, blur ↓", True),
    ("insertion_prob", "ins. AUC prob ↑", False),
    ("insertion_top1", "ins. AUC top-1 ↑", False),
    ("road", "ROAD ↑", False),
    ("pointing", "pointing ↑", False),
    ("mask_share", "mask share ↑", False),
    ("causal_auroc", "fg/bg AUROC ↑", False),
)


def slug(name: str) -> str:
    """File-name friendly version of a model name (``testbed:default`` -> ``testbed-default``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def _fmt(v: float, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "---:") -> str:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + f" {align} |" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def reference_method(results: Sequence[FaithfulnessResult]) -> str:
    """The method every other is compared with: CCI when every result has it, else the
    first method of the run (the order of ``--methods`` / ``evaluate(methods=...)``) that
    every result has, else the first result's first method."""
    summaries = [r.summary() for r in results]
    methods = list(dict.fromkeys(m for s in summaries for m in s.index))
    common = [m for m in methods if all(m in s.index for s in summaries)]
    if REFERENCE in common:
        return REFERENCE
    return common[0] if common else methods[0]


def reference_comparison(
    result: FaithfulnessResult, column: str = "deletion_prob", reference: str = REFERENCE
) -> pd.DataFrame:
    """Per method: mean ``column``, the reference's mean, and the share of images where the
    reference is better (ties count half).

    For deletion columns lower is better; for the others higher is better.

    Args:
        result: One model's benchmark result.
        column: A per-image column of ``result.table``.
        reference: The method compared with (default CCI; see :func:`reference_method`).

    Returns:
        One row per method: ``mean``, ``reference_mean``, ``reference_better_share``.
    """
    t = result.table.pivot(index="image", columns="method", values=column)
    if reference not in t.columns:
        raise ValueError(f"the result has no {reference!r} rows; its methods: {list(t.columns)}")
    lower = column.startswith("deletion")
    ref = t[reference]
    rows = {}
    for m in t.columns:
        better = (ref < t[m]) if lower else (ref > t[m])
        tie = ref == t[m]
        rows[m] = {
            "mean": t[m].mean(),
            "reference_mean": ref.mean(),
            "reference_better_share": float(better.mean() + 0.5 * tie.mean()),
        }
    return pd.DataFrame(rows).T


def _versus_table(results, summaries, methods, column: str, title: str, ref: str) -> list[str]:
    lines = [
        f"## Deletion AUC (probability, lower is better): {ref} vs every method -- {title}",
        "",
        f"Mean over images; in brackets the share of images on which {ref}'s AUC is lower "
        "than the method's (ties count half). Only the best value per model is bold.",
        "",
    ]
    rows = []
    cmps = [reference_comparison(r, column, ref) for r in results]
    for m in methods:
        cells = [m]
        for s, cmp in zip(summaries, cmps):
            if m not in s.index:
                cells.append("–")
                continue
            v = _fmt(s.loc[m, column])
            v = f"**{v}**" if s.loc[m, column] == s[column].min() else v
            if m != ref:
                v += f" ({100 * cmp.loc[m, 'reference_better_share']:.0f} %)"
            cells.append(v)
        rows.append(cells)
    ranks = [str(int(s[column].rank(method="min")[ref])) + f" of {len(s)}" for s in summaries]
    rows.append([f"{ref} rank"] + ranks)
    models = [r.model for r in results]
    return lines + [_table(["method"] + models, rows), ""]


def _model_section(r: FaithfulnessResult, plots: dict[str, str], ref: str) -> list[str]:
    s = r.summary()
    ref = ref if ref in s.index else s.index[0]
    cmp = reference_comparison(r, reference=ref)
    ref_sec = s.loc[ref, "seconds_per_image"]
    header = ["method"] + [h for c, h, _ in COLUMNS if c in s.columns]
    header += ["s / image", "fwd / image", "autograd fwd / image", f"time ÷ {ref}"]
    header.append(f"{ref} del. better")
    best = {}
    for c, _, low in COLUMNS:
        if c in s.columns and s[c].notna().any():
            best[c] = s[c].min() if low else s[c].max()
    rows = []
    for m, row in s.iterrows():
        cells = [m]
        for c, _, _ in COLUMNS:
            if c in s.columns:
                txt = _fmt(row[c])
                cells.append(f"**{txt}**" if c in best and row[c] == best[c] else txt)
        cells += [
            _fmt(row["seconds_per_image"], 4),
            _fmt(row["forwards_per_image"], 1),
            _fmt(row["autograd_forwards_per_image"], 1),
            _fmt(row["seconds_per_image"] / ref_sec, 2),
            "–" if m == ref else f"{100 * cmp.loc[m, 'reference_better_share']:.0f} %",
        ]
        rows.append(cells)
    out = [f"## {r.model} ({r.n_images} images)", "", _table(header, rows), ""]
    if r.causal is not None:
        c = r.causal.iloc[0]
        out += [
            f"Causal labels (for fg/bg AUROC): {int(c['n_foreground'])} foreground-driven, "
            f"{int(c['n_background'])} background-driven images (the others are 'both' or "
            "'neither' and do not count); AUROC of the mask share as a score for "
            "'foreground'.",
            "",
        ]
    if r.skipped:
        out += ["Skipped: " + "; ".join(f"{k}: {v}" for k, v in r.skipped.items()), ""]
    if r.model in plots:
        out += [f"![deletion and insertion curves, {r.model}]({plots[r.model]})", ""]
    return out


def markdown_report(
    results: Sequence[FaithfulnessResult],
    command: str,
    settings: Sequence[str],
    plots: dict[str, str] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The results file: command and settings on top, cross-model summaries, per-model tables.

    Every method is compared with one reference (:func:`reference_method`): CCI when every
    model ran it, else the first method of the run.

    Args:
        results: One result per model.
        command: The command line that made the results.
        settings: Lines describing the settings (one bullet each).
        plots: ``{model: relative path of its curve PNG}``.
        notes: Extra paragraphs placed after the summaries.
    """
    if not results:
        raise ValueError("results must hold at least one FaithfulnessResult")
    plots = plots or {}
    lines = ["# Faithfulness benchmark", "", f"Command: `{command}`", "", "Settings:", ""]
    lines += [f"- {s}" for s in settings] + [""]
    models = [r.model for r in results]
    summaries = [r.summary() for r in results]
    methods = list(dict.fromkeys(m for s in summaries for m in s.index))
    ref = reference_method(results)
    if all(ref in s.index for s in summaries):
        for column, title in (
            ("deletion_prob", "pixels replaced by the mean colour ('zeros') -- the headline"),
            ("deletion_prob_patch", "whole ViT patches replaced by the mean colour"),
            ("deletion_prob_blur", "pixels replaced by a blurred copy"),
        ):
            if all(column in s.columns for s in summaries):
                lines += _versus_table(results, summaries, methods, column, title, ref)
        lines += [
            f"## Seconds per image relative to {ref} (same run, same chunks)",
            "",
            "Methods ran chunk by chunk in a rotating order, so load changes on the shared "
            f"machine hit all of them alike. > 1: slower than {ref}.",
            "",
        ]
        rows = []
        for m in methods:
            cells = [m]
            for s in summaries:
                if m not in s.index:
                    cells.append("–")
                    continue
                ratio = s.loc[m, "seconds_per_image"] / s.loc[ref, "seconds_per_image"]
                cells.append(_fmt(ratio, 2))
            rows.append(cells)
        lines += [_table(["method"] + models, rows), ""]
    lines += list(notes)
    if notes:
        lines.append("")
    for r in results:
        lines += _model_section(r, plots, ref)
    return "\n".join(lines).rstrip() + "\n"


def save_curve_plots(
    result: FaithfulnessResult, path: str | Path, target: str = "predicted"
) -> Path:
    """Saves the mean deletion and insertion probability curves of every method as a PNG.

    Args:
        result: One model's benchmark result.
        path: The PNG to write.
        target: Which class the maps explain (``"predicted"`` or ``"true"``), for the title.
    """
    from matplotlib.figure import Figure

    from captum_clip.metrics import plot_curves
    from captum_clip.models.spec import has_random_weights
    from captum_clip.viz.marks import mark_random_weights

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(13, 5), layout="constrained")
    for i, mode in enumerate(("deletion", "insertion")):
        ax = fig.add_subplot(1, 2, i + 1)
        plot_curves(
            result.curves[mode],
            ax=ax,
            title=f"{result.model}: {mode} ({'lower' if i == 0 else 'higher'} AUC is better)",
            xlabel="fraction of pixels " + ("deleted" if i == 0 else "inserted"),
            ylabel="probability of the target class",
            show_std=False,
        )
        for line, style in zip(ax.get_lines(), ["-", "--", ":", "-."] * 4):
            line.set_linestyle(style)
        ax.legend(fontsize="x-small", ncol=2)
    fig.suptitle(
        f"{result.model}: mean curves over {result.n_images} images; the maps explain the "
        f"{target} class, the curves follow its probability"
    )
    if has_random_weights(result.model):
        mark_random_weights(fig)
    fig.savefig(path, dpi=90, bbox_inches="tight")  # keeps a mark above the title
    return path
