"""The summary table of ``covar eval``: per model x subset counts and rates of the results."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

__all__ = ["summarise_results"]


def summarise_results(results: pd.DataFrame, subsets: Sequence[str] | None = None) -> pd.DataFrame:
    """Per model x subset (transform, plus ``"all"``) counts and rates.

    Columns: ``model``, ``diagnosis`` (when ``results`` has it), ``subset, family, n,
    accuracy, n_errors, bg_er, fine_er, fg_er, unknown_er`` (counts; ``unknown_er``: errors
    whose driver is undecided), ``bg_er_rate, fine_er_rate, fg_er_rate`` (shares of the
    errors, as :func:`captum_clip.diagnosis.summarise`; with no unknown error they sum to
    1), ``unknown`` (images whose driver is undecided), ``foreground_rate`` (among the
    decided ones), ``mean_fg_share`` and ``bg_er_of_all`` (BG-Er / all images).
    """
    from captum_clip.diagnosis import summarise

    if subsets is None:
        subsets = list(dict.fromkeys(results["transform"]))
    keep = ("n", "accuracy", "n_errors", "bg_er", "fine_er", "fg_er", "unknown_er",
            "bg_er_rate", "fine_er_rate", "fg_er_rate", "unknown", "foreground_rate",
            "mean_fg_share")  # fmt: skip
    rows = []
    for model in sorted(results["model"].unique()):
        r = results[results["model"] == model]
        for subset in [*subsets, "all"]:
            part = r if subset == "all" else r[r["transform"] == subset]
            if part.empty:
                continue
            s = summarise(part)
            family = "all" if subset == "all" else str(part["family"].iloc[0])
            row = {"model": model}
            if "diagnosis" in part:
                row["diagnosis"] = ", ".join(sorted(set(part["diagnosis"].astype(str))))
            row.update(subset=subset, family=family)
            row.update({k: s[k] for k in keep})
            row["bg_er_of_all"] = s["bg_er"] / s["n"]
            rows.append(row)
    return pd.DataFrame(rows)
