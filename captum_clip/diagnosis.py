"""Foreground- or background-driven? Per-prediction diagnosis from attributions and masks.

For every image :func:`diagnose` computes the share of positive attribution mass inside the
object mask (:func:`captum_clip.metrics.mask_share`), the IoU of the top attribution region
with the mask (:func:`captum_clip.metrics.mask_iou`), calls the prediction
``"foreground"``-driven when the share is at least ``tau`` and ``"background"``-driven
otherwise, and sorts every misclassification into

* ``"BG-Er"`` — a background-driven error;
* ``"Fine-Er"`` — a foreground-driven error whose predicted class is a close relative of the
  true one (CLIP text-embedding cosine above ``fine_threshold``, or the same user group);
* ``"FG-Er"`` — any other foreground-driven error.

Example:
    >>> clf = ClipClassifier(model, tokenizer, class_names)          # doctest: +SKIP
    >>> d = diagnose(clf, images, masks, labels)                      # doctest: +SKIP
    >>> d.table[["pred_name", "fg_share", "driver", "category"]]      # doctest: +SKIP
    >>> d.summary()["bg_er_rate"]                                     # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from captum_clip._region_ablation import region_effects
from captum_clip._validate import check_batch_size, check_target
from captum_clip.metrics import mask_iou, mask_share
from captum_clip.metrics._common import check_inputs

__all__ = [
    "CATEGORIES",
    "REGION_ABLATION",
    "Diagnosis",
    "causal_agreement",
    "close_pairs",
    "diagnose",
    "summarise",
]

CATEGORIES: tuple[str, ...] = ("BG-Er", "Fine-Er", "FG-Er")
"""Error categories of misclassified images (``"correct"`` for the others)."""
REGION_ABLATION = "region_ablation"
"""``method=`` value of the region-ablation mode (hide object / background, no map)."""


@dataclass
class Diagnosis:
    """Result of :func:`diagnose`.

    Attributes:
        table: One row per image with the columns

            - ``target``: class whose attribution was analysed;
            - ``pred`` / ``pred_name``: predicted class (arg-max of the forward output);
            - ``label`` / ``label_name``: true class (``<NA>`` without labels);
            - ``correct``: ``pred == label`` (``<NA>`` without labels);
            - ``fg_share``: positive attribution mass inside the mask / total positive mass
              (``NaN`` for an empty mask);
            - ``iou``: IoU of the top attribution region (as many pixels as the mask) with the
              mask (``NaN`` for an empty mask);
            - ``mask_area``: fraction of the image the mask covers;
            - ``driver``: ``"foreground"`` (``fg_share >= tau``), ``"background"``, or
              ``None`` for an empty mask;
            - ``similarity``: cosine of the text embeddings of ``pred`` and ``label``
              (``NaN`` when unknown);
            - ``close``: predicted and true class are close relatives (``<NA>`` when not
              decided);
            - ``category``: ``"correct"``, ``"BG-Er"``, ``"Fine-Er"``, ``"FG-Er"``,
              ``"unknown"`` (misclassified, empty mask) or ``None`` without labels.
        tau: Threshold used for ``driver`` (attribution mode).
        fine_threshold: Cosine threshold used for ``close`` (when embeddings decided it).
        class_names: Class names (index = class).
        mode: ``"attribution"`` (``fg_share`` of an attribution map decides the driver)
            or ``"region_ablation"`` (the larger of ``fg_effect`` and ``bg_effect``).
    """

    table: pd.DataFrame
    tau: float
    fine_threshold: float
    class_names: list[str] | None = None
    mode: str = "attribution"

    def __len__(self) -> int:
        return len(self.table)

    def summary(self, by: str | Sequence[str] | None = None) -> dict[str, Any] | pd.DataFrame:
        """Counts and rates; see :func:`summarise`.

        Args:
            by: Column(s) of :attr:`table` to group by (e.g. ``"group"`` after adding it);
                ``None`` summarises all images.

        Returns:
            A dict for ``by=None``, else a DataFrame with one row per group.
        """
        if by is None:
            return {"mode": self.mode, **summarise(self.table)}
        keys = [by] if isinstance(by, str) else list(by)
        missing = [k for k in keys if k not in self.table.columns]
        if missing:
            raise ValueError(f"by={by!r}: no column {missing} in the table")
        grouped = self.table.groupby(keys if len(keys) > 1 else keys[0], sort=True)
        rows = {name: summarise(part) for name, part in grouped}
        out = pd.DataFrame.from_dict(rows, orient="index")
        if len(keys) > 1:
            out.index = pd.MultiIndex.from_tuples(out.index, names=keys)
        else:
            out.index.name = keys[0]
        out.insert(0, "mode", self.mode)
        return out


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


def causal_agreement(fg_share: Any, causal: Any, tau: float = 0.5) -> dict[str, float]:
    """How well ``fg_share`` predicts a causal foreground/background label.

    Only images whose causal label is ``"foreground"`` or ``"background"`` count (see
    :func:`captum_clip.testbed.causal.causal_labels`).

    Args:
        fg_share: ``(B,)`` shares (array, tensor, Series) or a :class:`Diagnosis` (its
            ``fg_share``; in region-ablation mode its ``fg_effect - bg_effect``, with the
            accuracy of its ``driver``).
        causal: ``B`` label strings, or a ``CausalLabels`` (its ``labels``).
        tau: Threshold of the diagnosis.

    Returns:
        ``n``, ``n_foreground``, ``n_background``, ``accuracy`` (``fg_share >= tau`` vs the
        label), ``majority`` (accuracy of always answering the larger class) and ``auroc``
        (``fg_share`` as a score for "foreground"; ``NaN`` with only one class present).
    """
    from sklearn.metrics import roc_auc_score

    threshold = _check_tau(tau)
    if isinstance(fg_share, Diagnosis):
        if fg_share.mode == REGION_ABLATION:  # driver: fg_effect - bg_effect >= 0
            threshold = 0.0
            fg_share = fg_share.table["fg_effect"] - fg_share.table["bg_effect"]
        else:
            fg_share = fg_share.table["fg_share"]
    share = np.asarray(torch.as_tensor(np.asarray(fg_share, dtype=np.float64)), dtype=np.float64)
    labels = np.asarray(getattr(causal, "labels", causal), dtype=object)
    if share.ndim != 1 or labels.shape != share.shape:
        raise ValueError(
            f"fg_share and causal labels must be 1-D of equal length, got {share.shape} and "
            f"{labels.shape}"
        )
    keep = np.isin(labels, ["foreground", "background"]) & ~np.isnan(share)
    is_fg = labels[keep] == "foreground"
    s = share[keep]
    n, n_fg = int(keep.sum()), int(is_fg.sum())
    both = 0 < n_fg < n
    return {
        "n": n,
        "n_foreground": n_fg,
        "n_background": n - n_fg,
        "accuracy": float(((s >= threshold) == is_fg).mean()) if n else float("nan"),
        "majority": max(n_fg, n - n_fg) / n if n else float("nan"),
        "auroc": float(roc_auc_score(is_fg, s)) if both else float("nan"),
    }


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


# ----------------------------------------------------------------------- inputs
def _check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be a number in [0, 1], got {tau!r}")
    return float(tau)


def _class_vector(value: Any, n: int, n_classes: int, name: str) -> Tensor:
    return check_target(value, n, n_classes, name=name)


def _check_masks(masks: Any, n: int, size: tuple[int, int], where: str) -> Tensor:
    if not isinstance(masks, Tensor):
        raise TypeError(f"{where} must be a (B, H, W) tensor, got {type(masks).__name__}")
    m = masks[:, 0] if masks.ndim == 4 and masks.shape[1] == 1 else masks
    if m.ndim != 3 or m.shape[0] != n or tuple(m.shape[1:]) != size:
        raise ValueError(
            f"{where} must have shape ({n}, {size[0]}, {size[1]}) like the images, "
            f"got {tuple(masks.shape)}"
        )
    if m.dtype != torch.bool:
        if m.is_complex() or not ((m == 0) | (m == 1)).all():
            raise ValueError(f"{where} must be boolean or contain only 0 and 1")
        m = m != 0
    return m


def _attribute(method: Any, x: Tensor, target: Tensor) -> Tensor:
    if hasattr(method, "attribute"):
        return method.attribute(x, target=target)
    return method(x, target)


def _default_method(forward_func: Callable) -> Any:
    from captum_clip.attr.cci import CCI

    return CCI.default_for(forward_func)


# ----------------------------------------------------------------------- main entry
def diagnose(
    forward_func: Callable[[Tensor], Tensor],
    images: Tensor,
    masks: Tensor | Callable,
    labels: Any = None,
    *,
    class_names: Sequence[str] | None = None,
    attributions: Tensor | None = None,
    method: Any = None,
    target: str | int | Tensor = "pred",
    tau: float = 0.5,
    fine_groups: Sequence[Any] | Mapping[Any, Any] | None = None,
    fine_threshold: float = 0.8,
    text_embeddings: Tensor | None = None,
    internal_batch_size: int | None = None,
    show_progress: bool = False,
) -> Diagnosis:
    """Diagnoses each prediction as foreground- or background-driven, and each error.

    Args:
        forward_func: Images ``(B, 3, H, W)`` -> ``(B, n_classes)`` scores, e.g. a
            :class:`~captum_clip.models.ClipClassifier`. Its ``class_names`` and
            ``text_embeddings`` are used when not given.
        images: ``(B, 3, H, W)`` model inputs (preprocessed).
        masks: Object masks ``(B, H, W)`` (bool or 0/1) at the images' size, or a
            :class:`~captum_clip.masks.MaskProvider` called per batch with the true class
            names (the predicted ones without labels).
        labels: True classes ``(B,)`` (optional); needed for correctness and error categories.
        class_names: Class names (default ``forward_func.class_names``).
        attributions: Precomputed attributions for the ``target`` classes, ``(B, C, H, W)``,
            ``(B, 1, H, W)`` or ``(B, H, W)``. If ``None`` they are computed with ``method``.
        method: A Captum attribution object (``.attribute(x, target=t)``) or a callable
            ``(x, target) -> attributions``; default
            :meth:`CCI.default_for(forward_func) <captum_clip.attr.cci.CCI.default_for>`. Or
            ``"region_ablation"``: no attribution map; the object and, separately, the
            background are hidden (two extra rows per image, attention masking at patch
            resolution for ViTs, mean-colour pixels otherwise), the table gains
            ``fg_effect`` / ``bg_effect`` (target-logit drops) and the driver is the
            region whose hiding costs more (``tau`` unused; ``fg_share`` becomes the
            positive-effect share ``fg+ / (fg+ + bg+)``, ``iou`` is NaN).
        target: Class to analyse: ``"pred"`` (predicted class, default), ``"label"``, or
            class indices (int or ``(B,)``).
        tau: Foreground threshold on ``fg_share`` in ``[0, 1]``.
        fine_groups: User-defined closeness: a list of groups of class names/indices, or a
            ``class -> parent`` hierarchy (see :func:`close_pairs`). Takes precedence over
            embeddings; ``[]`` disables Fine-Er.
        fine_threshold: Text-embedding cosine above which two classes are close.
        text_embeddings: ``(n_classes, D)`` class text embeddings (default
            ``forward_func.text_embeddings``).
        internal_batch_size: Images per forward/attribution/mask batch (``None`` = all).
        show_progress: Show a tqdm progress bar over the batches.

    Returns:
        :class:`Diagnosis` (``.table`` DataFrame, ``.summary()``), on the CPU.
    """
    if not callable(forward_func):
        raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
    check_inputs(images)
    tau = _check_tau(tau)
    n, size = images.shape[0], (images.shape[-2], images.shape[-1])
    internal_batch_size = check_batch_size(internal_batch_size) or n
    if isinstance(target, str) and target not in ("pred", "label"):
        raise ValueError(f"target must be 'pred', 'label' or class indices, got {target!r}")
    if class_names is None:
        class_names = getattr(forward_func, "class_names", None)
    class_names = None if class_names is None else [str(c) for c in class_names]
    provider = None
    if isinstance(masks, Tensor):
        masks = _check_masks(masks, n, size, "masks")
    elif hasattr(masks, "masks") and isinstance(masks.masks, Tensor):  # GroundTruthMasks
        masks = _check_masks(masks.masks, n, size, "masks")
    elif callable(masks):
        provider = masks
        if class_names is None:
            raise ValueError("a MaskProvider needs class_names (or forward_func.class_names)")
    else:
        raise TypeError(
            f"masks must be a (B, H, W) tensor or a MaskProvider, got {type(masks).__name__}"
        )
    ablation = isinstance(method, str)
    if ablation and method != REGION_ABLATION:
        raise ValueError(
            f"method must be an attribution object, a callable or {REGION_ABLATION!r}, "
            f"got {method!r}"
        )
    if ablation and attributions is not None:
        raise ValueError(f"method={REGION_ABLATION!r} computes no map: drop attributions=")
    if attributions is not None:
        if not isinstance(attributions, Tensor):
            raise TypeError(f"attributions must be a tensor, got {type(attributions).__name__}")
        if attributions.shape[0] != n:
            raise ValueError(
                f"attributions must have {n} rows like images, got {tuple(attributions.shape)}"
            )
    elif method is None:
        method = _default_method(forward_func)
    elif not (ablation or hasattr(method, "attribute") or callable(method)):
        raise TypeError("method must have .attribute(inputs, target=...) or be callable")

    preds, targets, shares, ious, areas, effects, known = [], [], [], [], [], [], []
    label_t = None
    n_classes = None
    starts = range(0, n, internal_batch_size)
    for s in tqdm(starts, desc="diagnose", disable=not show_progress):
        sl = slice(s, min(s + internal_batch_size, n))
        x = images[sl]
        with torch.no_grad():
            out = forward_func(x)
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"forward_func must return (B, n_classes) scores, got {got}")
        if n_classes is None:
            n_classes = out.shape[1]
            if class_names is not None and len(class_names) != n_classes:
                raise ValueError(
                    f"class_names has {len(class_names)} names but forward_func returns "
                    f"{n_classes} classes"
                )
            if labels is not None:
                label_t = _class_vector(labels, n, n_classes, "labels")
            if not isinstance(target, str):
                target = _class_vector(target, n, n_classes, "target")
            elif target == "label" and label_t is None:
                raise ValueError("target='label' needs labels=")
        pred = out.detach().argmax(1).cpu()
        if isinstance(target, Tensor):
            tgt = target[sl]
        else:
            tgt = pred if target == "pred" else label_t[sl]
        if provider is not None:
            named = label_t[sl] if label_t is not None else pred
            m = provider(x, [class_names[i] for i in named.tolist()])
            m = _check_masks(m, x.shape[0], size, "masks from the MaskProvider")
        else:
            m = masks[sl]
        nonempty = m.flatten(1).any(1).cpu()
        iou = torch.full((x.shape[0],), float("nan"))
        if ablation:
            _, fg_eff, bg_eff = region_effects(forward_func, x, m, tgt, output=out)
            effects.append(torch.stack([fg_eff, bg_eff], 1))
            pos_fg, pos_bg = fg_eff.clamp_min(0), bg_eff.clamp_min(0)
            share = pos_fg / (pos_fg + pos_bg)  # NaN when neither hiding costs anything
            nonempty &= ~torch.isnan(fg_eff)
            a = None
        elif attributions is not None:
            a = attributions[sl]
        else:
            a = _attribute(method, x, tgt.to(x.device))
        if a is not None:
            m = m.to(a.device)
            share = mask_share(a, m).detach().float().cpu()
        for i in nonempty.nonzero().flatten().tolist() if a is not None else []:
            # one call per image, seeded by its global index: ties at the threshold are
            # broken the same way whatever the batch split
            iou[i] = float(mask_iou(a[i : i + 1], m[i : i + 1], seed=s + i)[0])
        share[~nonempty] = float("nan")
        known.append(nonempty)
        preds.append(pred)
        targets.append(tgt.cpu())
        shares.append(share)
        ious.append(iou)
        areas.append(m.flatten(1).float().mean(1).cpu())

    pred = torch.cat(preds)
    share = torch.cat(shares)
    n_unknown = int((~torch.cat(known)).sum())
    if n_unknown:
        what = (
            "an empty object mask" if not ablation else "an object mask covering no or every patch"
        )
        warnings.warn(
            f"{n_unknown} image(s) have {what}; their driver and error category are left unknown",
            stacklevel=2,
        )
    table = pd.DataFrame(
        {
            "target": torch.cat(targets).numpy(),
            "pred": pred.numpy(),
            "fg_share": share.numpy(),
            "iou": torch.cat(ious).numpy(),
            "mask_area": torch.cat(areas).numpy(),
        }
    )
    if ablation:
        eff = torch.cat(effects).numpy()
        table.insert(table.columns.get_loc("fg_share"), "fg_effect", eff[:, 0])
        table.insert(table.columns.get_loc("fg_share"), "bg_effect", eff[:, 1])
        unknown, is_fg = np.isnan(eff[:, 0]), eff[:, 0] >= eff[:, 1]
    else:
        unknown, is_fg = np.isnan(share.numpy()), share.numpy() >= tau
    table["driver"] = np.where(unknown, None, np.where(is_fg, "foreground", "background"))
    if class_names is not None:
        table.insert(2, "pred_name", [class_names[i] for i in pred.tolist()])
    _add_label_columns(
        table,
        label_t,
        class_names,
        n_classes,
        fine_groups,
        text_embeddings,
        fine_threshold,
        forward_func,
    )
    mode = REGION_ABLATION if ablation else "attribution"
    return Diagnosis(table, tau, float(fine_threshold), class_names, mode)


def _add_label_columns(
    table: pd.DataFrame,
    label_t: Tensor | None,
    class_names: list[str] | None,
    n_classes: int,
    fine_groups: Any,
    text_embeddings: Tensor | None,
    fine_threshold: float,
    forward_func: Callable,
) -> None:
    n = len(table)
    if label_t is None:
        table["label"] = pd.array([pd.NA] * n, dtype="Int64")
        table["correct"] = pd.array([pd.NA] * n, dtype="boolean")
        table["similarity"] = np.nan
        table["close"] = pd.array([pd.NA] * n, dtype="boolean")
        table["category"] = None
        return
    if text_embeddings is None:
        text_embeddings = getattr(forward_func, "text_embeddings", None)
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
