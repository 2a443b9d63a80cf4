"""Object masks without a segmenter: the regions a namer names as the class.

:class:`ConceptMasks` clusters the namer's own patch features with k-means (CCI's
clustering, :func:`captum_clip.attr.cluster_grid`; each image on its own), names every
region with the vocabulary plus the image's class name (or all ``classes``;
:mod:`captum_clip.concepts`), and returns the union of the regions whose best name is the
requested class as the object mask. Masks do not depend on the batch split. With a reference
namer (another CLIP) the mask does not depend on the explained model at all, as with
GroundedSAM.

**Empty masks.** When no region is named as the class, ``empty="closest"`` (default) takes
the region whose class score is closest to its best score (the region the namer finds most
like the class); ``empty="keep"`` returns the empty mask (the diagnosis reports the image
as unknown). Either way :attr:`ConceptMasks.last_fallback` tells which images it was, and
the diagnosis table gets a ``concept_fallback`` column.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor

from captum_clip.attr import cluster_grid
from captum_clip.concepts import (
    EVIDENCE_K,
    GENERAL,
    as_namer,
    check_vocabulary,
    name_with,
    resolve_vocabulary,
    shortcut_evidence,
)
from captum_clip.masks._common import _check_images, _check_names
from captum_clip.models.conv import grid_tower

__all__ = ["EMPTY_POLICIES", "ConceptMasks"]

EMPTY_POLICIES = ("closest", "keep")
DEFAULT_MASK_K = 8
"""K of :class:`ConceptMasks`' clustering (``docs/concepts.md``: measured with K=4..8)."""


class ConceptMasks:
    """Mask provider: regions of the namer's own clustering named as the class.

    Args:
        namer: A CLIP -- what :func:`~captum_clip.load_clip` returns, a ``(model,
            preprocess, tokenizer)`` tuple, a ``ClipClassifier`` or a
            :class:`~captum_clip.concepts.Namer`.
        vocabulary: Context words (list, vocabulary file, or ``"general"``: the bundled
            list); the class names are added at every call. Words the namer's tokenizer
            cannot encode are skipped with one warning.
        n_clusters: K of the namer's k-means regions.
        layer: Block (stage) of the namer whose patch features are clustered.
        embedding, templates, ring: How regions and words are embedded (:class:`Namer`).
        classes: All class names: every region is named among the vocabulary and all of
            them (a region that reads as another class is not the object). Default: each
            image among the vocabulary and its own class only -- "is this region the class
            or context?", as a text-prompted segmenter asks.
        empty: ``"closest"`` or ``"keep"`` (module docstring).
        evidence: Also compute :meth:`shortcut_evidence` in the diagnosis (CCI on the
            explained model, named by it and by this namer: the table's ``shortcut_share``).
        input_mean, input_std: Normalisation of the images the provider receives (the
            explained model's; open_clip's by default, ``None`` for ``[0, 1]`` images).
        random_state: Seed of the k-means.
    """

    def __init__(
        self,
        namer: Any,
        vocabulary: Any = GENERAL,
        *,
        n_clusters: int = DEFAULT_MASK_K,
        layer: int = -1,
        embedding: str = "context",
        templates: Sequence[str] | None = None,
        ring: int = 1,
        classes: Sequence[str] | None = None,
        empty: str = "closest",
        evidence: bool = True,
        input_mean: Sequence[float] | None = OPENAI_DATASET_MEAN,
        input_std: Sequence[float] | None = OPENAI_DATASET_STD,
        random_state: int = 0,
    ) -> None:
        self.namer = as_namer(namer, embedding=embedding, templates=templates, ring=ring)
        self.vocabulary = resolve_vocabulary(vocabulary)
        self.classes = None if classes is None else check_vocabulary(classes, "classes")
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 2:
            raise ValueError(f"n_clusters must be an int >= 2, got {n_clusters!r}")
        if empty not in EMPTY_POLICIES:
            raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}")
        self.grid = grid_tower(self.namer.vision, None, False)
        self.grid.block_index(layer)  # validates
        self.n_clusters = n_clusters
        self.layer = layer
        self.empty = empty
        self.evidence = bool(evidence)
        self.input_mean, self.input_std = input_mean, input_std
        self.random_state = random_state
        self.last_fallback: Tensor | None = None
        self.last_named = None
        self._own: tuple[Any, Any] | None = None  # the explained model's Namer (evidence)

    def __repr__(self) -> str:
        return (
            f"ConceptMasks(namer={type(self.namer.model).__name__}, "
            f"vocabulary={len(self.vocabulary)} words, n_clusters={self.n_clusters})"
        )

    @torch.no_grad()
    def regions(self, images: Tensor) -> Tensor:
        """``(B, H, W)`` k-means region labels of the namer's patch features, at the
        images' resolution (each image clustered on its own: batch-split invariant)."""
        x = self.namer.to_namer_space(images, self.input_mean, self.input_std)
        feats = self.grid.patch_features(x, self.layer)
        k = min(self.n_clusters, feats.shape[1] * feats.shape[2])
        # one image at a time: k-means' seeding draws per batch row, so a batched call would
        # make an image's regions depend on its position in the batch
        labels = torch.cat([cluster_grid(f[None], k, None, self.random_state)[0] for f in feats])
        grid = labels.reshape(-1, 1, *feats.shape[1:3]).float()
        return F.interpolate(grid, size=images.shape[-2:], mode="nearest")[:, 0].long()

    def __call__(self, images: Tensor, class_names: Sequence[str] | None) -> Tensor:
        """``(B, H, W)`` bool object masks of ``class_names`` (one per image)."""
        images = _check_images(images)
        names = _check_names(class_names, images.shape[0], required=True)
        extra = sorted(set(names) | set(self.classes or ()))
        words = self.namer.encodable(resolve_vocabulary(self.vocabulary, extra))
        lost = sorted({c for c in names if c not in words})
        if lost:
            raise ValueError(
                f"the namer's tokenizer cannot encode the class name(s) {lost}, so no region "
                "can be named as them"
            )
        labels = self.regions(images)
        named = name_with(
            self.namer, images, labels, words, None, 1, self.input_mean, self.input_std
        )
        b = images.shape[0]
        idx = torch.tensor([words.index(c) for c in names])
        s = torch.nan_to_num(named.scores, nan=-torch.inf)
        if self.classes is None:  # each image: the context words and its own class only
            others = torch.tensor([w in set(names) for w in words])[None, :] & (
                torch.arange(len(words))[None, :] != idx[:, None]
            )
            s = s.masked_fill(others[:, None, :], -torch.inf)
        best = s.argmax(-1)  # (B, R)
        is_obj = best == idx[:, None]
        fallback = ~is_obj.any(1)
        if fallback.any() and self.empty == "closest":
            gap = s.gather(2, idx.view(b, 1, 1).expand(b, s.shape[1], 1))[..., 0] - s.max(-1).values
            pick = gap.argmax(1)
            is_obj[fallback, pick[fallback]] = True
        if fallback.any():
            what = "took the closest region" if self.empty == "closest" else "left them empty"
            warnings.warn(
                f"ConceptMasks: no region was named as the class in {int(fallback.sum())} of "
                f"{b} image(s); {what} (ConceptMasks.last_fallback)",
                UserWarning,
                stacklevel=2,
            )
        self.last_fallback = fallback
        self.last_named = named
        obj = is_obj.gather(1, labels.reshape(b, -1).cpu()).reshape(labels.shape)
        return obj.to(images.device)

    def shortcut_evidence(self, forward_func: Any, images: Tensor, target: Tensor) -> Tensor:
        """``(B,)`` :func:`~captum_clip.concepts.shortcut_evidence` of ``forward_func``'s
        decisions for ``target``, with this provider's namer as the reference."""
        if self._own is None or self._own[0] is not forward_func:  # one namer per model
            self._own = (forward_func, as_namer(forward_func))
        ev = shortcut_evidence(
            forward_func, images, self.namer, self.vocabulary, target=target,
            n_clusters=EVIDENCE_K, input_mean=self.input_mean, input_std=self.input_std,
            random_state=self.random_state, own_namer=self._own[1],
        )  # fmt: skip
        return ev.share
