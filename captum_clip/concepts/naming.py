"""Regions named in words: :func:`name_regions` and its result :class:`NamedRegions`.

Every region of every image (CCI's k-means regions, or the user's) is embedded by a namer
(:mod:`.namer`) and compared with the vocabulary's text embeddings; the result holds, per
image and region, the names best first with their cosines, the region's share of the
decision (from CCI, when the regions came from it) and its area, as a pandas table and as
a figure with the regions outlined and labelled.

Example:
    >>> attr, res = CCI(clf, n_clusters=8).attribute(x, target=t, return_clusters=True)
    >>> named = name_regions(x, res, ["grass", "sky", "dots"], namer=clf)
    >>> named.names[0][0]            # image 0, region 0: names, best first
    ['grass', 'sky', 'dots']
    >>> named.table()                # one row per image and region
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor

from captum_clip.attr import CCIResult, check_regions
from captum_clip.concepts.namer import Namer, as_namer
from captum_clip.concepts.vocabulary import resolve_vocabulary

__all__ = ["NamedRegions", "name_regions", "name_with", "pixel_regions"]


@dataclass
class NamedRegions:
    """What :func:`name_regions` returns (all tensors on the CPU).

    Attributes:
        vocabulary: The words that were compared (after dropping unencodable ones).
        scores: ``(B, R, V)`` cosine of each region's embedding with each word (NaN for a
            region that does not exist in that image or covers none of the namer's input).
        labels: ``(B, H, W)`` region index of every pixel at the images' resolution.
        area: ``(B, R)`` fraction of the image each region covers.
        share: ``(B, R)`` the region's share of the decision: CCI's normalised weight
            (``Δ / Σ|Δ|`` by default, ``docs/cci.md``); NaN for regions not from CCI.
        top_k: Names kept per region in :attr:`names`.
        logit_scale: The namer's logit scale (for :attr:`probs`).
    """

    vocabulary: list[str]
    scores: Tensor
    labels: Tensor
    area: Tensor
    share: Tensor
    top_k: int = 3
    logit_scale: float = 100.0
    _order: list[list[list[int]]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        words = self.vocabulary
        order: list[list[list[int]]] = []
        for img in self.scores.tolist():  # ties broken by the word: order-invariant
            order.append(
                [
                    []
                    if np.isnan(row[0])
                    else sorted(range(len(words)), key=lambda v, r=row: (-r[v], words[v]))
                    for row in img
                ]
            )
        self._order = order

    @property
    def n_regions(self) -> Tensor:
        """``(B,)`` regions of each image (padded rows of :attr:`scores` are NaN)."""
        return (~torch.isnan(self.scores[..., 0])).sum(1)

    @property
    def names(self) -> list[list[list[str]]]:
        """Per image, per region: the ``top_k`` names, best first (``[]`` for a padded
        region)."""
        return [[[self.vocabulary[v] for v in o[: self.top_k]] for o in img] for img in self._order]

    @property
    def best(self) -> list[list[str | None]]:
        """Per image, per region: the best name (None for a padded region)."""
        return [[self.vocabulary[o[0]] if o else None for o in img] for img in self._order]

    @property
    def probs(self) -> Tensor:
        """``(B, R, V)`` softmax over the vocabulary of ``logit_scale * scores``."""
        return (self.logit_scale * self.scores).softmax(-1)

    def score_of(self, words: Sequence[str]) -> Tensor:
        """``(B, R, len(words))`` cosines of the given vocabulary words."""
        idx = [self.vocabulary.index(w) for w in words]
        return self.scores[..., idx]

    def table(self) -> pd.DataFrame:
        """One row per image and existing region: ``image``, ``region``, ``name``,
        ``score`` (cosine), ``prob`` (softmax over the vocabulary), ``margin`` (best minus
        second cosine), ``names`` (the ``top_k``, best first), ``share``, ``area``."""
        rows = []
        probs = self.probs
        for i, img in enumerate(self._order):
            for r, order in enumerate(img):
                if not order:
                    continue
                s = self.scores[i, r]
                second = float(s[order[1]]) if len(order) > 1 else float("nan")
                rows.append(
                    {
                        "image": i,
                        "region": r,
                        "name": self.vocabulary[order[0]],
                        "score": float(s[order[0]]),
                        "prob": float(probs[i, r, order[0]]),
                        "margin": float(s[order[0]]) - second,
                        "names": ", ".join(self.vocabulary[v] for v in order[: self.top_k]),
                        "share": float(self.share[i, r]),
                        "area": float(self.area[i, r]),
                    }
                )
        return pd.DataFrame(rows)

    def plot(self, images: Tensor | None = None, index: int | Sequence[int] = 0, **kwargs: Any):
        """Figure: the regions outlined and labelled with their names; see
        :func:`captum_clip.viz.concepts.plot_named_regions`."""
        from captum_clip.viz.concepts import plot_named_regions

        return plot_named_regions(self, images, index, **kwargs)


def pixel_regions(regions: Any, images: Tensor) -> tuple[Tensor, Tensor | None]:
    """Regions as ``(B, H, W)`` pixel labels (and CCI's ``(B, R)`` weights, else None).

    Accepts a :class:`~captum_clip.attr.CCIResult` (its patch labels upsampled with nearest
    neighbours), the ``(attributions, result)`` pair of ``CCI.attribute(...,
    return_clusters=True)``, or user regions as CCI's ``regions=`` takes them (integer
    labels ``(B, H, W)`` / ``(H, W)``, a bool mask, a ``(B, R, H, W)`` bool stack), or
    ``(B, h, w)`` integer labels on a grid that divides the image.
    """
    if isinstance(regions, tuple) and len(regions) == 2 and isinstance(regions[1], CCIResult):
        regions = regions[1]
    if isinstance(regions, tuple) and regions and all(isinstance(r, CCIResult) for r in regions):
        raise ValueError(
            "name_regions names one set of regions; a multi-K CCI gives one CCIResult per K "
            "-- pass one of them"
        )
    weights = None
    if isinstance(regions, CCIResult):
        weights = regions.weights
        regions = regions.labels
    if not isinstance(regions, Tensor):
        raise TypeError(
            "regions must be a CCIResult, CCI's (attributions, result) pair or a tensor of "
            f"region labels, got {type(regions).__name__}"
        )
    b, size = images.shape[0], tuple(images.shape[-2:])
    r = regions
    grid_like = r.ndim == 3 and r.dtype != torch.bool and tuple(r.shape[1:]) != size
    if grid_like and not r.is_floating_point():
        h, w = r.shape[1:]
        if size[0] % h or size[1] % w:
            raise ValueError(
                f"region labels of shape {tuple(r.shape)} are neither at the images' size "
                f"{size} nor on a grid that divides it"
            )
        r = F.interpolate(r[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return check_regions(r, b, size), weights


def name_regions(
    images: Tensor,
    regions: Any,
    vocabulary: Any,
    namer: Any = None,
    *,
    forward_func: Any = None,
    top_k: int = 3,
    input_mean: Sequence[float] | None = OPENAI_DATASET_MEAN,
    input_std: Sequence[float] | None = OPENAI_DATASET_STD,
) -> NamedRegions:
    """Name every region of every image with the closest vocabulary words.

    Args:
        images: ``(B, 3, H, W)`` the explained model's (normalised) inputs.
        regions: See :func:`pixel_regions` (a ``CCIResult`` is the usual).
        vocabulary: A list of words, ``"general"`` (the bundled list,
            :func:`~captum_clip.concepts.general_vocabulary`) or a vocabulary file. Words
            the namer's tokenizer cannot encode are skipped with one warning.
        namer: Who names: what :func:`~captum_clip.load_clip` returns, a ``(model,
            preprocess, tokenizer)`` tuple, a ``ClipClassifier`` or a
            :class:`~captum_clip.concepts.Namer`. Default: the explained model
            (``forward_func``'s).
        forward_func: The explained ``ClipClassifier`` (only used as the default namer).
        top_k: Names kept per region in ``.names``.
        input_mean, input_std: The normalisation of ``images`` (open_clip's by default;
            ``None``: images in ``[0, 1]``), undone for a namer with another one.

    Returns:
        :class:`NamedRegions`.
    """
    if namer is None:
        if forward_func is None:
            raise ValueError(
                "name_regions needs a namer= (a CLIP) or the explained forward_func= "
                "(a ClipClassifier) whose model names its own regions"
            )
        namer = forward_func
    namer = as_namer(namer)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {got}")
    words = namer.encodable(resolve_vocabulary(vocabulary))
    labels, weights = pixel_regions(regions, images)
    return name_with(namer, images, labels, words, weights, top_k, input_mean, input_std)


@torch.no_grad()
def name_with(
    namer: Namer,
    images: Tensor,
    labels: Tensor,
    words: list[str],
    weights: Tensor | None,
    top_k: int,
    input_mean: Any,
    input_std: Any,
) -> NamedRegions:
    """Name the regions ``labels`` ``(B, H, W)`` with ``words`` (already checked and
    encodable): the core of :func:`name_regions`, the mask provider and the evidence."""
    n_regions = int(labels.max()) + 1
    x = namer.to_namer_space(images, input_mean, input_std)
    emb = namer.region_embeddings(x, namer.grid_labels(labels), n_regions)
    text = namer.text_embeddings(words).to(emb.device)
    scores = (emb @ text.T).float().cpu()
    b = labels.shape[0]
    ids = torch.arange(n_regions)
    area = (labels.reshape(b, 1, -1).cpu() == ids[None, :, None]).float().mean(-1)
    if weights is None:
        share = torch.full((b, n_regions), float("nan"))
    else:
        share = torch.full((b, n_regions), float("nan"))
        k = min(n_regions, weights.shape[1])
        share[:, :k] = weights[:, :k].float().cpu()
    scores[area == 0] = float("nan")
    return NamedRegions(words, scores, labels.cpu(), area, share, top_k, namer.logit_scale)
