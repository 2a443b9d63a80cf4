"""Markdown table and curve plots of a retrieval-faithfulness run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captum_clip.benchmark.retrieval import RetrievalResult

__all__ = ["retrieval_markdown", "save_retrieval_plots"]

NAMES = {"image": "IR", "text": "TR"}


def _fmt(v: float, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def retrieval_table(result: RetrievalResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the AUC table: one row per method, best per column in bold."""
    s = result.summary
    ks = sorted(s["k"].unique())
    cols = [
        (mode, d, k) for mode in ("deletion", "insertion") for d in ("image", "text") for k in ks
    ]
    header = ["method"] + [
        f"{'del.' if m == 'deletion' else 'ins.'} {NAMES[d]}@{k} {'↓' if m == 'deletion' else '↑'}"
        for m, d, k in cols
    ]
    pivot = s.pivot_table(index="method", columns=["mode", "direction", "k"], values="auc")
    methods = list(dict.fromkeys(s["method"]))
    rows = []
    for m in methods:
        cells = [m]
        for c in cols:
            v = float(pivot.loc[m, c])
            best = pivot[c].min() if c[0] == "deletion" else pivot[c].max()
            cells.append(f"**{_fmt(v)}**" if v == best and len(methods) > 1 else _fmt(v))
        rows.append(cells)
    return header, rows


def _md(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def retrieval_markdown(
    result: RetrievalResult,
    command: str,
    settings: Sequence[str],
    plot: str | None = None,
    title: str = "Retrieval faithfulness",
) -> str:
    """The results file: command, settings, AUC table, clean recall, cost, plot link."""
    lines = [f"# {title}", "", f"Command: `{command}`", "", "Settings:", ""]
    lines += [f"- {s}" for s in settings] + [""]
    lines += [
        f"## AUC of recall@k under deletion (lower is better) and insertion (higher is "
        f"better) -- {result.n_images} images, {result.n_captions} captions",
        "",
        "IR@k: each caption queries the perturbed images (a hit when its image is in the "
        "top k); TR@k: each perturbed image queries the captions (a hit when one of its own "
        "captions is in the top k). AUC = trapezoid over the fraction of pixels changed, "
        "divided by the range (the mean recall over the curve). Best per column in bold.",
        "",
        _md(*retrieval_table(result)),
        "",
    ]
    clean = result.clean
    cells = [
        f"{NAMES[d]}@{k} = {_fmt(float(r))}"
        for d, k, r in clean[["direction", "k", "recall"]].itertuples(index=False)
    ]
    lines += [
        "Unperturbed gallery (every deletion curve starts here): " + ", ".join(cells) + ".",
        "",
    ]
    cost = result.cost
    rows = [
        [m, _fmt(r["seconds_per_image"], 4), _fmt(r["forwards_per_image"], 1),
         _fmt(r["autograd_forwards_per_image"], 1)]
        for m, r in cost.iterrows()
    ]  # fmt: skip
    lines += [
        "## Cost of the attributions",
        "",
        _md(["method", "s / image", "fwd / image", "autograd fwd / image"], rows),
        "",
    ]
    if result.skipped:
        lines += ["Skipped: " + "; ".join(f"{k}: {v}" for k, v in result.skipped.items()), ""]
    if plot:
        lines += [f"![recall curves under deletion and insertion]({plot})", ""]
    return "\n".join(lines).rstrip() + "\n"


def save_retrieval_plots(
    result: RetrievalResult, path: str | Path, k: int | None = None, title_prefix: str = ""
) -> Path:
    """Recall curves of every method: deletion/insertion x IR/TR at cut-off ``k``.

    ``k`` defaults to 5 when it was computed (the paper's IR@5), else the smallest k;
    ``title_prefix`` (e.g. the model) starts every panel title.
    """
    from matplotlib.figure import Figure

    c = result.curves
    ks = sorted(c["k"].unique())
    k = k if k is not None else (5 if 5 in ks else ks[0])
    if k not in ks:
        raise ValueError(f"k={k} was not computed; available: {ks}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(12, 9), layout="constrained")
    clean = result.clean.set_index(["direction", "k"])["recall"]
    styles = ["-", "--", ":", "-."]
    for i, mode in enumerate(("deletion", "insertion")):
        for j, d in enumerate(("image", "text")):
            ax = fig.add_subplot(2, 2, 2 * i + j + 1)
            part = c[(c["mode"] == mode) & (c["direction"] == d) & (c["k"] == k)]
            for n, (method, g) in enumerate(part.groupby("method", sort=False)):
                ax.plot(g["fraction"], g["recall"], styles[n % 4], marker=".", label=method)
            ax.axhline(float(clean[(d, k)]), color="grey", lw=0.8, label="unperturbed")
            better = "lower" if mode == "deletion" else "higher"
            lead = f"{title_prefix}: " if title_prefix else ""
            ax.set_title(f"{lead}{mode}, {NAMES[d]}@{k} ({better} AUC is better)", fontsize=10)
            ax.set_xlabel(f"fraction of pixels {'deleted' if mode == 'deletion' else 'inserted'}")
            ax.set_ylabel(f"{NAMES[d]}@{k} over the gallery")
            ax.set_ylim(-0.02, 1.02)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6),
               fontsize="small", title="method")  # fmt: skip
    fig.savefig(path, dpi=90)
    return path
