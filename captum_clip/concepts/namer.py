"""The namer: a CLIP that embeds image regions and vocabulary words in one space.

A :class:`Namer` wraps any CLIP that :func:`captum_clip.load_clip` loads (the explained model
itself, or a reference model, as GroundedSAM is a separate model). A region's embedding is

* ``"isolated"``: the whole vision tower run on the region alone -- on a ViT every other
  patch is dropped (or hidden from every attention layer where the tower cannot drop
  patches), so it equals ``encode_image`` with every other patch hidden; on other towers
  every other pixel is replaced by the mean colour (0 in normalised space);
* ``"context"`` (default, chosen by measurement, ``docs/concepts.md``): the mean of the
  normalised ``"isolated"`` embedding and the one of the region grown by a ring of
  ``ring`` patches (grid cells on other towers) -- alone, a uniformly coloured object
  reads like a background texture; the ring shows its outline;
* ``"dense"``: MaskCLIP's per-patch embeddings (the last block's value path,
  :func:`captum_clip.attr.maskclip.value_path_embeddings`), normalised and averaged over
  the region's patches (ViTs only; one forward per image).

Words are embedded with a template ensemble (mean of the normalised embeddings of every
template, renormalised), as :class:`~captum_clip.models.ClipClassifier` embeds class names.

**Another input size, grid or normalisation.** Regions reach the namer as pixel masks at
the images' resolution. The images are the explained model's normalised inputs: the namer
undoes that normalisation (``input_mean`` / ``input_std``, open_clip's by default, as the
SAM mask providers do), resizes the ``[0, 1]`` images bilinearly to its own input size and
normalises them with its own mean and std (read from its ``preprocess``). The masks are
resized with nearest neighbours and each of the namer's patches joins the region that
covers most of its pixels. With the same size and normalisation the images pass unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor, nn

from captum_clip._hooks import preserve_model_state
from captum_clip._validate import check_images
from captum_clip.attr import patch_partition, variant_scores
from captum_clip.concepts.vocabulary import check_vocabulary, encodable
from captum_clip.models.adapter import ClipAdapter
from captum_clip.models.heads import tokenize

__all__ = ["DEFAULT_TEMPLATES", "EMBEDDINGS", "Namer", "as_namer"]

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of {}.", "a picture of {}.", "an image of {}.")
"""Templates of the word embeddings, ensembled, unless the tokenizer names its own
(``tokenizer.concept_templates``: the testbed's ``("a photo of {}", "{} pattern")``);
``docs/concepts.md`` has the measurements."""
EMBEDDINGS = ("context", "isolated", "dense")
CALL_ROWS = 8
"""Forward-call overhead in full rows, for the drop-or-mask choice of the region rows."""


def _normalisation(preprocess: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of a preprocess transform: its torchvision ``Normalize``, its own
    ``mean``/``std`` attributes, or open_clip's defaults (the testbed's)."""
    for t in getattr(preprocess, "transforms", ()) or ():
        if type(t).__name__ == "Normalize":
            return tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
    if hasattr(preprocess, "mean") and hasattr(preprocess, "std"):
        return tuple(preprocess.mean), tuple(preprocess.std)
    return tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)


class Namer:
    """A CLIP that names regions (module docstring).

    Args:
        model: An open_clip CLIP or a ``transformers`` CLIP/SigLIP model.
        tokenizer: Its tokenizer.
        preprocess: Its image transform (only its normalisation is read); None: open_clip's.
        templates: Word templates with one ``{}`` each (ensembled); default the
            tokenizer's ``concept_templates`` where it has them, else
            :data:`DEFAULT_TEMPLATES`.
        embedding: ``"context"`` (default), ``"isolated"`` or ``"dense"`` (module docstring).
        ring: ``"context"`` only: the ring's width in patches (grid cells).
        batch_size: Region rows per forward.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable,
        preprocess: Any = None,
        *,
        templates: Sequence[str] | None = None,
        embedding: str = "context",
        ring: int = 1,
        batch_size: int = 256,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                "namer must be a CLIP: what load_clip(...) returns, a (model, preprocess, "
                f"tokenizer) tuple, a ClipClassifier or a Namer; got {type(model).__name__}"
            )
        try:
            self.adapter = ClipAdapter(model)
        except (TypeError, ValueError, AttributeError) as err:
            raise TypeError(
                f"namer must be a CLIP with image and text towers; {type(model).__name__} is "
                f"not one ({err})"
            ) from None
        if not callable(tokenizer):
            raise TypeError(
                f"the namer's tokenizer must be callable, got {type(tokenizer).__name__}"
            )
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        if embedding == "dense" and not self.vision.is_vit:
            raise ValueError(
                f"embedding='dense' reads a ViT's patch tokens; {type(self.vision.module).__name__}"
                " is not a ViT tower -- use embedding='isolated' (works on every tower)"
            )
        if templates is None:
            templates = getattr(tokenizer, "concept_templates", DEFAULT_TEMPLATES)
        templates = check_vocabulary(templates, "templates")
        for t in templates:
            if t.count("{}") != 1:
                raise ValueError(f"each template needs exactly one '{{}}', got {t!r}")
        for name, v in (("batch_size", batch_size), ("ring", ring)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.templates = list(templates)
        self.embedding = embedding
        self.ring = ring
        self.batch_size = batch_size
        self.mean, self.std = _normalisation(preprocess)
        self._text: dict[str, Tensor] = {}
        self._encodable: dict[str, bool] = {}

    # ------------------------------------------------------------------ towers
    @property
    def vision(self) -> Any:
        return self.adapter.vision

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def image_size(self) -> tuple[int, int] | None:
        try:
            return tuple(self.vision.image_size)
        except (NotImplementedError, AttributeError, ValueError):
            return None

    @property
    def logit_scale(self) -> float:
        return float(self.adapter.logit_scale)

    # ------------------------------------------------------------------ words
    def encodable(self, words: Sequence[str]) -> list[str]:
        """``words`` the tokenizer can encode in every template (others warned about, once
        per namer: the answers are kept)."""
        context = getattr(self.adapter.text, "context_length", None)
        return encodable(words, self.templates, self.tokenizer, context, self._encodable)

    @torch.no_grad()
    def text_embeddings(self, words: Sequence[str]) -> Tensor:
        """``(V, D)`` normalised template-ensembled embeddings of ``words`` (cached)."""
        missing = [w for w in words if w not in self._text]
        if missing:
            texts = [t.format(w) for w in missing for t in self.templates]
            ids = tokenize(self.tokenizer, texts, self.device)
            with preserve_model_state(self.model):
                self.model.eval()
                emb = torch.cat([self.adapter.encode_text(c).float() for c in ids.split(256)])
            emb = F.normalize(emb, dim=-1).reshape(len(missing), len(self.templates), -1)
            for w, e in zip(missing, F.normalize(emb.mean(1), dim=-1)):
                self._text[w] = e
        return torch.stack([self._text[w] for w in words])

    # ------------------------------------------------------------------ images
    def to_namer_space(
        self,
        images: Tensor,
        input_mean: Sequence[float] | None = OPENAI_DATASET_MEAN,
        input_std: Sequence[float] | None = OPENAI_DATASET_STD,
    ) -> Tensor:
        """The explained model's normalised ``images`` in this namer's preprocessing
        (unchanged when size and normalisation already match; ``input_mean=None``: the
        images are in ``[0, 1]``)."""
        size = self.image_size or tuple(images.shape[-2:])
        same_norm = input_mean is not None and (
            tuple(float(v) for v in input_mean) == tuple(self.mean)
            and tuple(float(v) for v in input_std) == tuple(self.std)
        )
        if same_norm and tuple(images.shape[-2:]) == tuple(size):
            return images.to(self.device, self.vision.dtype)
        if input_mean is None:
            unit = images.clamp(0, 1)
        else:
            m = torch.as_tensor(input_mean, dtype=images.dtype, device=images.device)
            s = torch.as_tensor(input_std, dtype=images.dtype, device=images.device)
            unit = (images * s.view(1, -1, 1, 1) + m.view(1, -1, 1, 1)).clamp(0, 1)
        if tuple(unit.shape[-2:]) != tuple(size):
            unit = F.interpolate(unit, size=size, mode="bilinear", align_corners=False)
        m = torch.as_tensor(self.mean, dtype=unit.dtype, device=unit.device).view(1, -1, 1, 1)
        s = torch.as_tensor(self.std, dtype=unit.dtype, device=unit.device).view(1, -1, 1, 1)
        return ((unit - m) / s).to(self.device, self.vision.dtype)

    def grid_labels(self, labels: Tensor) -> Tensor:
        """``(B, H, W)`` pixel region labels (``-1`` = no region) at any size -> ``(B, P)``
        labels on this namer's input (ViT: its patch grid, majority rule; other towers:
        its pixels). Region ids are kept; ``-1`` where the majority is no region."""
        size = self.image_size or tuple(labels.shape[-2:])
        lab = labels[:, None].float()
        if tuple(labels.shape[-2:]) != tuple(size):
            lab = F.interpolate(lab, size=size, mode="nearest")
        lab = lab[:, 0].long()
        if not self.vision.is_vit:
            return lab.reshape(lab.shape[0], -1)
        grid = tuple(self.vision.grid_size)
        shifted = patch_partition(lab + 1, grid)  # consecutive: map back to the ids
        b = lab.shape[0]
        out = torch.empty(b, grid[0] * grid[1], dtype=torch.long, device=lab.device)
        for i in range(b):
            ids = torch.unique(lab[i] + 1)
            out[i] = ids[shifted[i].reshape(-1)] - 1
        return out

    @torch.no_grad()
    def region_embeddings(self, images: Tensor, labels: Tensor, n_regions: int) -> Tensor:
        """``(B, R, D)`` normalised embeddings of regions ``0..R-1`` (NaN for a region that
        covers nothing of the namer's input).

        Args:
            images: ``(B, 3, H, W)`` in this namer's preprocessing (:meth:`to_namer_space`).
            labels: ``(B, P)`` region per patch / pixel (:meth:`grid_labels`), ``-1`` none.
            n_regions: ``R``.
        """
        images = check_images(images, self.image_size, dtype=self.vision.dtype)
        labels = labels.to(images.device)
        ids = torch.arange(n_regions, device=images.device)
        member = labels[:, None, :] == ids[None, :, None]  # (B, R, P)
        with preserve_model_state(self.model):
            self.model.eval()
            if self.embedding == "dense":
                dense = F.normalize(value_path(self.vision, images), dim=-1)  # (B, P, D)
                emb = torch.einsum("brp,bpd->brd", member.float(), dense)
            elif self.embedding == "isolated":
                emb = self._isolated(images, member)
            else:
                alone = F.normalize(self._isolated(images, member), dim=-1)
                grown = F.normalize(self._isolated(images, self._grow(member, images)), dim=-1)
                emb = alone + grown
        out = F.normalize(emb, dim=-1)
        out[~member.any(-1)] = float("nan")
        return out

    def _grow(self, member: Tensor, images: Tensor) -> Tensor:
        """``member`` ``(B, R, P)`` grown by :attr:`ring` patches (ViT) or grid cells."""
        b, r, p = member.shape
        if self.vision.is_vit:
            h, w = self.vision.grid_size
            width = self.ring
        else:
            h, w = images.shape[-2:]
            try:
                cell = h // self.vision.grid_size[0]
            except (NotImplementedError, AttributeError, ValueError):
                cell = max(1, h // 8)
            width = self.ring * cell
        m = member.reshape(b * r, 1, h, w).float()
        grown = F.max_pool2d(m, 2 * width + 1, stride=1, padding=width) > 0
        return grown.reshape(b, r, p) & member.any(-1, keepdim=True)

    def _drops(self, keep_rows: Tensor) -> bool:
        """Run the rows on their kept patches (grouped by count) rather than masked in one
        batch: where the tower can, and the tokens saved outweigh the extra calls (a call
        costs about as much as :data:`CALL_ROWS` full rows)."""
        if not self.vision.can_drop:
            return False
        counts = keep_rows.sum(1)
        n, p = keep_rows.shape
        chunks = -(-n // self.batch_size)
        groups = sum(-(-int(c) // self.batch_size) for c in torch.bincount(counts).tolist() if c)
        dropped = int(counts.sum()) + groups * CALL_ROWS * p
        return dropped < n * p + chunks * CALL_ROWS * p

    def _isolated(self, images: Tensor, member: Tensor) -> Tensor:
        """``(B, R, D)`` unnormalised embeddings of each region shown alone (NaN rows for
        absent regions): CCI's masked-variant machinery with the embedding as the score."""
        valid = member.any(-1)
        if not valid.any():  # no region anywhere: NaN rows of the embedding width
            dim = self.adapter.encode_image(images[:1]).shape[-1]
            return torch.full((*member.shape[:2], dim), float("nan"), device=images.device)

        def embed(x: Tensor, src: Tensor) -> Tensor:
            return self.adapter.encode_image(x).float()

        if self.vision.is_vit:
            drop = None if self._drops(member[valid]) else False
            kw: dict[str, Any] = {"vision": self.vision, "drop": drop}
        else:  # every other pixel at the mean colour (0 in normalised space)
            kw = {"fill": torch.zeros((), dtype=images.dtype), "grid": tuple(images.shape[-2:])}
        return variant_scores(
            embed, images, ~member, valid, internal_batch_size=self.batch_size, **kw
        )


def value_path(tower: Any, images: Tensor) -> Tensor:
    """MaskCLIP's dense patch embeddings (imported lazily: attr.maskclip is heavier)."""
    from captum_clip.attr.maskclip import value_path_embeddings

    return value_path_embeddings(tower, images)


def as_namer(namer: Any, **kwargs: Any) -> Namer:
    """A :class:`Namer` from what users hold: a Namer (returned as is when no ``kwargs``),
    what :func:`~captum_clip.load_clip` returns (or any ``(model, preprocess, tokenizer)``
    tuple), or a ``ClipClassifier`` / ``ClipSimilarity`` (its model and tokenizer)."""
    if isinstance(namer, Namer):
        if not kwargs:
            return namer
        kw = {"templates": namer.templates, "embedding": namer.embedding, "ring": namer.ring}
        kw.update({k: v for k, v in kwargs.items() if v is not None})
        out = Namer(namer.model, namer.tokenizer, None, **kw)
        out.mean, out.std = namer.mean, namer.std
        return out
    if isinstance(namer, tuple) or type(namer).__name__ == "LoadedClip":
        parts = tuple(namer)
        if len(parts) != 3:
            raise TypeError(
                "namer must be a CLIP; as a tuple it is (model, preprocess, tokenizer), got "
                f"{len(parts)} items"
            )
        model, preprocess, tokenizer = parts
        return Namer(model, tokenizer, preprocess, **kwargs)
    if isinstance(namer, nn.Module) and hasattr(namer, "tokenizer") and hasattr(namer, "model"):
        return Namer(namer.model, namer.tokenizer, None, **kwargs)
    raise TypeError(
        "namer must be a CLIP: what load_clip(...) returns, a (model, preprocess, tokenizer) "
        f"tuple, a ClipClassifier / ClipSimilarity or a Namer; got {type(namer).__name__}"
    )
