"""The table step of the diagnosis: per-image measures -> the diagnosis table, its
summary, and the closeness of classes that decides ``Fine-Er``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["build_table", "close_pairs", "summarise"]


def summarise(table: pd.DataFrame) -> dict[str, Any]:
    """Counts and rates of a diagnosis table (or any subset of its rows).

    Keys: ``n``; ``n_correct``, ``accuracy``, ``n_errors`` (labels needed, else ``NaN``);
    ``foreground``, ``background``, ``unknown`` (driver counts; ``unknown`` = empty mask),
    ``foreground_rate`` (among images with a known driver); ``mean_fg_share``,
    ``mean_iou``; ``bg_er``, ``fine_er``, ``fg_er``, ``unknown_er`` (error counts) and
    ``bg_er_rate``, ``fine_er_rate``, ``fg_er_rate`` (each a share of the errors, so with
    no unknown errors they sum to 1; ``NaN`` without errors).
    """
    n = len(table)
    driver = table["driver"]
    fg = int((driver == "foreground").sum())
    bg = int((driver == "background").sum())
    out: dict[str, Any] = {"n": n}
    has_labels = "correct" in table and table["correct"].notna().any()
    if has_labels:
        n_correct = int(table["correct"].fillna(False).astype(bool).sum())
        out.update(n_correct=n_correct, accuracy=n_correct / n if n else float("nan"))
        out["n_errors"] = n - n_correct
    else:
        out.update(n_correct=float("nan"), accuracy=float("nan"), n_errors=float("nan"))
    out.update(
        foreground=fg,
        background=bg,
        unknown=n - fg - bg,
        foreground_rate=fg / (fg + bg) if fg + bg else float("nan"),
        mean_fg_share=float(table["fg_share"].mean()) if n else float("nan"),
        mean_iou=float(table["iou"].mean()) if n else float("nan"),
    )
    cat = table["category"]
    n_err = out["n_errors"] if has_labels else 0
    for key, name in (("bg_er", "BG-Er"), ("fine_er", "Fine-Er"), ("fg_er", "FG-Er")):
        count = int((cat == name).sum())
        out[key] = count if has_labels else float("nan")
        out[f"{key}_rate"] = count / n_err if n_err else float("nan")
    out["unknown_er"] = int((cat == "unknown").sum()) if has_labels else float("nan")
    return out


# ----------------------------------------------------------------------- closeness
def _class_index(item: Any, class_names: Sequence[str] | None, n_classes: int) -> int:
    if isinstance(item, str):
        if class_names is None or item not in class_names:
            raise ValueError(f"fine_groups names unknown class {item!r}; known: {class_names}")
        return list(class_names).index(item)
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        if not 0 <= int(item) < n_classes:
            raise ValueError(f"fine_groups class index {item} not in [0, {n_classes})")
        return int(item)
    raise TypeError(f"fine_groups entries must be class names or indices, got {item!r}")


def close_pairs(
    n_classes: int,
    class_names: Sequence[str] | None = None,
    fine_groups: Sequence[Any] | Mapping[Any, Any] | None = None,
    text_embeddings: Tensor | None = None,
    fine_threshold: float = 0.8,
) -> tuple[Tensor, Tensor]:
    """Which class pairs count as close relatives (for ``Fine-Er``).

    Args:
        n_classes: Number of classes.
        class_names: Names, to resolve names in ``fine_groups``.
        fine_groups: Either a sequence of groups (each a set/list of class names or indices;
            two classes are close when one group holds both) or a hierarchy mapping
            ``class -> parent`` (close when they share the parent). Decides when given.
        text_embeddings: ``(n_classes, D)`` class text embeddings; close when their cosine
            is above ``fine_threshold``. Used when ``fine_groups`` is ``None``.
        fine_threshold: Cosine threshold in ``[-1, 1]``.

    Returns:
        ``(close, similarity)``: ``(n_classes, n_classes)`` bool and float (cosines; ``NaN``
        without embeddings). The diagonal of ``close`` is False.
    """
    if not -1.0 <= float(fine_threshold) <= 1.0:
        raise ValueError(f"fine_threshold must be a cosine in [-1, 1], got {fine_threshold!r}")
    sim = torch.full((n_classes, n_classes), float("nan"))
    if text_embeddings is not None:
        emb = torch.as_tensor(text_embeddings).detach().float().cpu()
        if emb.ndim != 2 or emb.shape[0] != n_classes:
            raise ValueError(
                f"text_embeddings must have shape ({n_classes}, D), got {tuple(emb.shape)}"
            )
        if not torch.isfinite(emb).all():
            raise ValueError("text_embeddings contain NaN or infinite values")
        emb = F.normalize(emb, dim=-1)
        sim = emb @ emb.T
    if fine_groups is not None:
        close = torch.zeros(n_classes, n_classes, dtype=torch.bool)
        if isinstance(fine_groups, Mapping):
            parent = {_class_index(k, class_names, n_classes): v for k, v in fine_groups.items()}
            for i, pi in parent.items():
                for j, pj in parent.items():
                    close[i, j] = pi == pj
        elif isinstance(fine_groups, (str, bytes)) or not isinstance(fine_groups, Sequence):
            raise TypeError(
                "fine_groups must be a list of groups (sets of class names or indices) or a "
                f"dict class -> parent, got {type(fine_groups).__name__}"
            )
        else:
            for group in fine_groups:
                if isinstance(group, (str, bytes)) or not hasattr(group, "__iter__"):
                    raise TypeError(f"each fine group must be a set or list, got {group!r}")
                idx = torch.tensor([_class_index(g, class_names, n_classes) for g in group])
                if idx.numel():
                    close[idx[:, None], idx[None, :]] = True
    elif text_embeddings is not None:
        close = sim > float(fine_threshold)
    else:
        raise ValueError(
            "deciding Fine-Er needs class closeness: pass text_embeddings= (n_classes, D) "
            "(a ClipClassifier provides them), fine_groups= (groups or a hierarchy), or "
            "fine_groups=[] to count no pair as close"
        )
    close.fill_diagonal_(False)
    return close, sim


# ----------------------------------------------------------------------- table
def build_table(
    measures: dict[str, Tensor],
    tau: float,
    labels: Tensor | None,
    class_names: list[str] | None,
    n_classes: int,
    fine_groups: Any,
    text_embeddings: Tensor | None,
    fine_threshold: float,
) -> pd.DataFrame:
    """The diagnosis table (columns: see :class:`captum_clip.diagnosis.Diagnosis`).

    Args:
        measures: Per-image ``target``, ``pred``, ``fg_share``, ``iou``, ``mask_area``
            (and ``fg_effect`` / ``bg_effect`` in region-ablation mode): CPU tensors of one
            length, as :func:`captum_clip.diagnosis.measure_batch` gives them, concatenated.
        tau: Foreground threshold on ``fg_share`` (attribution mode).
        labels: True classes ``(B,)`` or None.
        class_names, n_classes, fine_groups, text_embeddings, fine_threshold: As in
            :func:`captum_clip.diagnosis.diagnose`.
    """
    share = measures["fg_share"].numpy()
    table = pd.DataFrame(
        {key: measures[key].numpy() for key in ("target", "pred", "fg_share", "iou", "mask_area")}
    )
    if "fg_effect" in measures:  # region ablation: the region whose hiding costs more
        fg, bg = measures["fg_effect"].numpy(), measures["bg_effect"].numpy()
        table.insert(table.columns.get_loc("fg_share"), "fg_effect", fg)
        table.insert(table.columns.get_loc("fg_share"), "bg_effect", bg)
        unknown, is_fg = np.isnan(fg), fg >= bg
    else:
        unknown, is_fg = np.isnan(share), share >= tau
    table["driver"] = np.where(unknown, None, np.where(is_fg, "foreground", "background"))
    for key in ("concept_fallback", "shortcut_share"):  # ConceptMasks' columns
        if key in measures:
            table[key] = measures[key].numpy()
    if class_names is not None:
        table.insert(2, "pred_name", [class_names[i] for i in measures["pred"].tolist()])
    _add_label_columns(
        table, labels, class_names, n_classes, fine_groups, text_embeddings, fine_threshold
    )
    return table


def _add_label_columns(
    table: pd.DataFrame,
    label_t: Tensor | None,
    class_names: list[str] | None,
    n_classes: int,
    fine_groups: Any,
    text_embeddings: Tensor | None,
    fine_threshold: float,
) -> None:
    n = len(table)
    if label_t is None:
        table["label"] = pd.array([pd.NA] * n, dtype="Int64")
        table["correct"] = pd.array([pd.NA] * n, dtype="boolean")
        table["similarity"] = np.nan
        table["close"] = pd.array([pd.NA] * n, dtype="boolean")
        table["category"] = None
        return
    pred = torch.as_tensor(table["pred"].to_numpy().copy())
    correct = pred == label_t
    table["label"] = pd.array(label_t.numpy(), dtype="Int64")
    if class_names is not None:
        table.insert(
            table.columns.get_loc("label") + 1,
            "label_name",
            [class_names[i] for i in label_t.tolist()],
        )
    table["correct"] = pd.array(correct.numpy(), dtype="boolean")
    if (~correct).any():
        close, sim = close_pairs(
            n_classes, class_names, fine_groups, text_embeddings, fine_threshold
        )
    elif text_embeddings is not None:
        _, sim = close_pairs(n_classes, class_names, [], text_embeddings, fine_threshold)
        close = torch.zeros(n_classes, n_classes, dtype=torch.bool)
    else:
        sim = torch.full((n_classes, n_classes), float("nan"))
        close = torch.zeros(n_classes, n_classes, dtype=torch.bool)
    table["similarity"] = sim[pred, label_t].numpy()
    table["close"] = pd.array(close[pred, label_t].numpy(), dtype="boolean")
    driver = table["driver"].to_numpy()
    cat = np.where(
        correct.numpy(),
        "correct",
        np.where(
            driver == "background",
            "BG-Er",
            np.where(close[pred, label_t].numpy(), "Fine-Er", "FG-Er"),
        ),
    ).astype(object)
    cat[(~correct.numpy()) & pd.isna(driver)] = "unknown"
    table["category"] = cat
