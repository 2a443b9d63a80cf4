"""The diagnosis itself: :func:`diagnose`, its result :class:`Diagnosis`, and
:func:`causal_agreement` (package overview: :mod:`captum_clip.diagnosis`).

What ``method=`` runs (region ablation by default, ``"cci"`` the paper's CCI) is decided in
:func:`captum_clip.diagnosis.batch.resolve_method`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from captum_clip._validate import check_batch_size, check_target
from captum_clip.diagnosis.batch import (
    REGION_ABLATION,
    _check_masks,
    _forward,
    measure_batch,
    resolve_method,
)
from captum_clip.diagnosis.table import build_table, summarise
from captum_clip.metrics import check_inputs

__all__ = ["ATTRIBUTION", "CATEGORIES", "Diagnosis", "causal_agreement", "diagnose"]

CATEGORIES: tuple[str, ...] = ("BG-Er", "Fine-Er", "FG-Er")
"""Error categories of misclassified images (``"correct"`` for the others)."""
ATTRIBUTION = "attribution"
""":attr:`Diagnosis.mode` of a diagnosis from an attribution map (``method="cci"``, an
attribution method, or ``attributions=``); the other mode is ``"region_ablation"``."""


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
            In region-ablation mode (the default) ``fg_effect`` / ``bg_effect`` come in
            before ``fg_share``, which is then their positive-effect share, and ``iou`` is NaN
            (see :func:`diagnose`).
        tau: Threshold used for ``driver`` (attribution mode).
        fine_threshold: Cosine threshold used for ``close`` (when embeddings decided it).
        class_names: Class names (index = class).
        mode: How ``driver`` was decided: ``"region_ablation"`` (the larger of
            ``fg_effect`` and ``bg_effect``; ``method=None`` or ``"region_ablation"``) or
            ``"attribution"`` (``fg_share >= tau`` of an attribution map: ``method="cci"``,
            an attribution method, or ``attributions=``).
    """

    table: pd.DataFrame
    tau: float
    fine_threshold: float
    class_names: list[str] | None = None
    mode: str = ATTRIBUTION

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


# ----------------------------------------------------------------------- inputs
def _check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be a number in [0, 1], got {tau!r}")
    return float(tau)


def _class_vector(value: Any, n: int, n_classes: int, name: str) -> Tensor:
    return check_target(value, n, n_classes, name=name)


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
            ``(B, 1, H, W)`` or ``(B, H, W)``. Given without ``method``, they are diagnosed
            in attribution mode (``fg_share >= tau``); region ablation uses no map, so
            ``attributions=`` with a ``method`` string is a ``ValueError``.
        method: How the driver is decided (the strings are
            :data:`~captum_clip.diagnosis.METHODS`):

            - ``None`` (default): ``"region_ablation"``, or attribution mode on
              ``attributions=`` when they are given;
            - ``"region_ablation"``: no attribution map; the object and, separately, the
              background are hidden (two extra rows per image, attention masking at patch
              resolution for ViTs, mean-colour pixels otherwise), the table gains
              ``fg_effect`` / ``bg_effect`` (target-logit drops) and the driver is the
              region whose hiding costs more (``tau`` unused; ``fg_share`` becomes the
              positive-effect share ``fg+ / (fg+ + bg+)``, ``iou`` is NaN);
            - ``"cci"``: the paper's diagnosis, ``fg_share >= tau`` of the map of
              :meth:`CCI.default_for(forward_func) <captum_clip.attr.cci.CCI.default_for>`
              (K=7 regions, capped at the feature grid; K+1 masked rows per image);
            - a Captum attribution object (``.attribute(x, target=t)``) or a callable
              ``(x, target) -> attributions``: ``fg_share >= tau`` of its map.
        target: Class to analyse: ``"pred"`` (predicted class, default), ``"label"``, or
            class indices (int or ``(B,)``).
        tau: Foreground threshold on ``fg_share`` in ``[0, 1]`` (attribution mode).
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
    if isinstance(masks, Tensor):
        masks = _check_masks(masks, n, size, "masks")
    elif hasattr(masks, "masks") and isinstance(masks.masks, Tensor):  # GroundTruthMasks
        masks = _check_masks(masks.masks, n, size, "masks")
    elif not callable(masks):
        raise TypeError(
            f"masks must be a (B, H, W) tensor or a MaskProvider, got {type(masks).__name__}"
        )
    elif class_names is None:
        raise ValueError("a MaskProvider needs class_names (or forward_func.class_names)")
    if attributions is not None:
        if not isinstance(attributions, Tensor):
            raise TypeError(f"attributions must be a tensor, got {type(attributions).__name__}")
        if attributions.shape[0] != n:
            raise ValueError(
                f"attributions must have {n} rows like images, got {tuple(attributions.shape)}"
            )
    method = resolve_method(forward_func, method, attributions)
    ablation = isinstance(method, str)  # REGION_ABLATION, the only string it returns

    parts: list[dict[str, Tensor]] = []
    label_t = None
    n_classes = None
    starts = range(0, n, internal_batch_size)
    for s in tqdm(starts, desc="diagnose", disable=not show_progress):
        sl = slice(s, min(s + internal_batch_size, n))
        out = _forward(forward_func, images[sl])
        if n_classes is None:  # the first batch tells the number of classes
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
        if isinstance(target, Tensor):
            tgt: Tensor | str = target[sl]
        else:
            tgt = "pred" if target == "pred" else label_t[sl]
        parts.append(
            measure_batch(
                forward_func,
                images[sl],
                masks[sl] if isinstance(masks, Tensor) else masks,
                tgt,
                method=method,
                attributions=None if attributions is None else attributions[sl],
                class_names=class_names,
                mask_classes=None if label_t is None else label_t[sl],
                outputs=out,
                seed=s,
            )
        )
    measures = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    n_unknown = int((~measures.pop("known")).sum())
    if n_unknown:
        what = "an object mask covering no or every patch" if ablation else "an empty object mask"
        warnings.warn(
            f"{n_unknown} image(s) have {what}; their driver and error category are left unknown",
            stacklevel=2,
        )
    if text_embeddings is None:
        text_embeddings = getattr(forward_func, "text_embeddings", None)
    table = build_table(
        measures, tau, label_t, class_names, n_classes, fine_groups, text_embeddings,
        fine_threshold,
    )  # fmt: skip
    mode = REGION_ABLATION if ablation else ATTRIBUTION
    return Diagnosis(table, tau, float(fine_threshold), class_names, mode)
