"""Shortcut evidence from names: regions the explained model names as its prediction while
a reference model names them as context.

For every image, CCI splits the explained model's decision into regions (their shares of
the decision, ``docs/cci.md``); the explained model names each region itself, and the
reference names the same regions. A region that the explained model calls its predicted
class but the reference calls a context word (anything that is not a class name) is the
shortcut made visible -- the shortcut model of the testbed calls grass "dots". The
evidence of an image is the positive share of the decision those regions carry, with the
explained model's naming taken softly (its softmax probability of the predicted class
over the vocabulary, at its logit scale):
``share = Σ_r max(w_r, 0) P_self(pred | r) [reference(r) ∉ classes] / Σ_r max(w_r, 0)``;
``hard_share`` counts a region only when the explained model's *best* name is the
prediction (measured: the soft form separates background-driven predictions far better,
``docs/concepts.md``).

Example:
    >>> ev = shortcut_evidence(clf, x, reference=load_clip("ViT-B-32", pretrained="openai"),
    ...                        vocabulary=["grass", "sky", "water"])
    >>> ev.share            # (B,) in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor

from captum_clip._validate import check_target
from captum_clip.concepts.namer import as_namer
from captum_clip.concepts.naming import NamedRegions, name_with, pixel_regions
from captum_clip.concepts.vocabulary import resolve_vocabulary

__all__ = ["ShortcutEvidence", "shortcut_evidence"]

EVIDENCE_K = 8
"""K of the CCI regions behind the evidence (``docs/concepts.md``)."""


@dataclass
class ShortcutEvidence:
    """What :func:`shortcut_evidence` returns.

    Attributes:
        share: ``(B,)`` positive share of the decision carried by shortcut regions (soft).
        hard_share: ``(B,)`` the same counting only regions whose own best name is the
            prediction.
        shortcut: ``(B, R)`` bool, the regions ``hard_share`` counts.
        target: ``(B,)`` the explained class of each image.
        own: The regions as the explained model names them.
        reference: The same regions as the reference names them.
    """

    share: Tensor
    hard_share: Tensor
    shortcut: Tensor
    target: Tensor
    own: NamedRegions
    reference: NamedRegions


def shortcut_evidence(
    forward_func: Any,
    images: Tensor,
    reference: Any,
    vocabulary: Any,
    *,
    target: Any = None,
    regions: Any = None,
    n_clusters: int = EVIDENCE_K,
    input_mean: Sequence[float] | None = OPENAI_DATASET_MEAN,
    input_std: Sequence[float] | None = OPENAI_DATASET_STD,
    random_state: int = 0,
    own_namer: Any = None,
) -> ShortcutEvidence:
    """Shortcut evidence per image (module docstring).

    Args:
        forward_func: The explained ``ClipClassifier`` (its ``class_names`` are the
            classes; its model names the regions itself).
        images: ``(B, 3, H, W)`` its inputs.
        reference: The reference namer (anything :func:`~captum_clip.concepts.name_regions`
            takes as ``namer``).
        vocabulary: Context words (the class names are added).
        target: Class per image (default: the prediction).
        regions: The ``(attributions, CCIResult)`` or ``CCIResult`` of ``CCI(...,
            return_clusters=True)`` on these images and targets; default ``CCI(forward_func,
            n_clusters=n_clusters)`` (sufficiency estimator).
        n_clusters: K of the default regions.
        input_mean, input_std: As in :func:`~captum_clip.concepts.name_regions`.
        random_state: Seed of the default regions' k-means.
        own_namer: The explained model as a :class:`~captum_clip.concepts.Namer` (default:
            made from ``forward_func``); pass one to keep its word caches across calls.
    """
    from captum_clip.attr.cci import CCI

    classes = getattr(forward_func, "class_names", None)
    if classes is None:
        raise ValueError(
            "shortcut_evidence needs the explained ClipClassifier (with .class_names), got "
            f"{type(forward_func).__name__}"
        )
    classes = [str(c) for c in classes]
    if target is None:
        with torch.no_grad():
            tgt = forward_func(images).argmax(1)
    else:
        tgt = check_target(target, images.shape[0], len(classes))
    tgt = tgt.to(images.device)
    if regions is None:
        cci = CCI(forward_func, n_clusters=n_clusters, random_state=random_state)
        regions = cci.attribute(images, target=tgt, return_clusters=True)
    labels, weights = pixel_regions(regions, images)
    if weights is None:
        raise ValueError("shortcut_evidence needs CCI regions (their shares of the decision)")
    words = resolve_vocabulary(vocabulary, classes)
    own_namer = as_namer(forward_func if own_namer is None else own_namer)
    ref_namer = as_namer(reference)
    own = name_with(
        own_namer, images, labels, own_namer.encodable(words), weights, 3, input_mean, input_std
    )
    ref = name_with(
        ref_namer, images, labels, ref_namer.encodable(words), weights, 3, input_mean, input_std
    )
    names = [classes[i] for i in tgt.tolist()]
    lower = {c.lower() for c in classes}
    b, r = own.share.shape
    context = torch.tensor(
        [[z is not None and z.lower() not in lower for z in row] for row in ref.best]
    ).reshape(b, r)
    reads_pred = torch.tensor([[a == n for a in row] for row, n in zip(own.best, names)])
    flag = reads_pred.reshape(b, r) & context
    idx = torch.tensor([own.vocabulary.index(c) for c in names]).view(b, 1, 1)
    p_pred = torch.nan_to_num(own.probs, nan=0.0).gather(2, idx.expand(b, r, 1))[..., 0]
    pos = torch.nan_to_num(own.share, nan=0.0).clamp_min(0)
    total = pos.sum(1).clamp_min(1e-12)
    soft = (pos * p_pred * context).sum(1) / total
    hard = (pos * flag).sum(1) / total
    return ShortcutEvidence(soft, hard, flag, tgt.cpu(), own, ref)
