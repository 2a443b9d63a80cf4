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

Layout: :mod:`~captum_clip.diagnosis.core` (:func:`diagnose`, :class:`Diagnosis`,
:func:`causal_agreement`; the default attribution method is picked in
``core._default_method``), :mod:`~captum_clip.diagnosis.batch` (the per-batch step,
:func:`measure_batch`), :mod:`~captum_clip.diagnosis.table` (the table step, its summary
and :func:`close_pairs`), :mod:`~captum_clip.diagnosis.region_ablation` (``method=
REGION_ABLATION``: the score with object / background hidden).
"""

from captum_clip.diagnosis.batch import REGION_ABLATION, measure_batch
from captum_clip.diagnosis.core import CATEGORIES, Diagnosis, causal_agreement, diagnose
from captum_clip.diagnosis.table import close_pairs, summarise

__all__ = [
    "CATEGORIES",
    "REGION_ABLATION",
    "Diagnosis",
    "causal_agreement",
    "close_pairs",
    "diagnose",
    "measure_batch",
    "summarise",
]
