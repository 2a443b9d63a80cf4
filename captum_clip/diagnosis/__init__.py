"""Foreground- or background-driven? Per-prediction diagnosis with object masks.

For every image :func:`diagnose` decides whether the prediction is ``"foreground"``- or
``"background"``-driven. By default (``method="region_ablation"``) it hides the object and,
separately, the background, and calls the region whose hiding costs the predicted class
more the driver (two extra rows per image). With ``method="cci"`` (the paper's diagnosis),
another attribution method or precomputed ``attributions=``, it computes the share of
positive attribution mass inside the object mask (:func:`captum_clip.metrics.mask_share`)
and the IoU of the top attribution region with the mask
(:func:`captum_clip.metrics.mask_iou`), and the driver is ``"foreground"`` when the share is
at least ``tau``. It sorts every misclassification into

* ``"BG-Er"`` — a background-driven error;
* ``"Fine-Er"`` — a foreground-driven error whose predicted class is a close relative of the
  true one (CLIP text-embedding cosine above ``fine_threshold``, or the same user group);
* ``"FG-Er"`` — any other foreground-driven error.

Example:
    >>> clf = ClipClassifier(model, tokenizer, class_names)          # doctest: +SKIP
    >>> d = diagnose(clf, images, masks, labels)                      # doctest: +SKIP
    >>> d.table[["pred_name", "fg_share", "driver", "category"]]      # doctest: +SKIP
    >>> d.summary()["bg_er_rate"]                                     # doctest: +SKIP

Layout: :mod:`~captum_clip.diagnosis.core` (:func:`diagnose`, :class:`Diagnosis`,
:func:`causal_agreement`), :mod:`~captum_clip.diagnosis.batch` (the per-batch step,
:func:`measure_batch`; the ``method=`` strings :data:`METHODS` and what each runs,
``batch.resolve_method``), :mod:`~captum_clip.diagnosis.table` (the table step, its summary
and :func:`close_pairs`), :mod:`~captum_clip.diagnosis.region_ablation` (``method=
REGION_ABLATION``: the score with object / background hidden).
"""

from captum_clip.diagnosis.batch import METHODS, PAPER_CCI, REGION_ABLATION, measure_batch
from captum_clip.diagnosis.core import (
    ATTRIBUTION,
    CATEGORIES,
    Diagnosis,
    causal_agreement,
    diagnose,
)
from captum_clip.diagnosis.table import close_pairs, summarise

__all__ = [
    "ATTRIBUTION",
    "CATEGORIES",
    "METHODS",
    "PAPER_CCI",
    "REGION_ABLATION",
    "Diagnosis",
    "causal_agreement",
    "close_pairs",
    "diagnose",
    "measure_batch",
    "summarise",
]
