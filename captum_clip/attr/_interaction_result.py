"""Result of :class:`~captum_clip.attr.interactions.IntegratedInteractions.explain`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_clip.attr._phrases import phrase_positions

__all__ = ["InteractionResult"]


@dataclass
class InteractionResult:
    """Interactions of ``B`` caption-image pairs, with the views a user needs.

    Attributes:
        attributions: ``A`` of shape ``(B, S, 1+P)``: text positions x ``[CLS, patches]``.
        tokens: Token strings per pair (length ``S``; ``""`` after the end-of-text token).
        patch_grid: ``(h, w)`` with ``h * w = P``.
        score: ``(B,)`` similarity ``sigma(a, b)`` of each pair.
        delta: ``(B,)`` convergence delta ``sum A - (four-term score difference)``.
        reference_scores: ``(B, 3)``: ``sigma(a0, b)``, ``sigma(a, b0)``, ``sigma(a0, b0)``.
        image_size: ``(H, W)`` of the input images (for upsampled maps), if known.
        n_prefix: Columns before the patches (1: the CLS token).
    """

    attributions: Tensor
    tokens: list[list[str]]
    patch_grid: tuple[int, int]
    score: Tensor
    delta: Tensor
    reference_scores: Tensor
    image_size: tuple[int, int] | None = None
    n_prefix: int = 1

    @property
    def text_attr(self) -> Tensor:
        """``(B, S)`` row sums: integrated gradients of ``sigma(., b) - sigma(., b0)``."""
        return self.attributions.sum(-1)

    @property
    def image_attr(self) -> Tensor:
        """``(B, 1+P)`` column sums: integrated gradients of ``sigma(a, .) - sigma(a0, .)``."""
        return self.attributions.sum(-2)

    @property
    def score_difference(self) -> Tensor:
        """``(B,)`` four-term difference ``sigma(a,b) - sigma(a0,b) - sigma(a,b0) + sigma(a0,b0)``."""
        r = self.reference_scores
        return self.score - r[:, 0] - r[:, 1] + r[:, 2]

    def token_indices(self, span: Any, pair: int = 0) -> list[int]:
        """Positions for ``span``: an int, a slice, a list of ints, or a word or phrase.

        A string selects every run of tokens that spells it (``"vertical stripes"``: both
        tokens; every occurrence; case and sub-word markers ignored -- the one rule of
        :func:`~captum_clip.attr._phrases.phrase_positions`).

        Raises:
            ValueError: No run of tokens spells the phrase (message lists the tokens), or
                positions outside ``[-S, S)``.
        """
        n = self.attributions.shape[1]
        if isinstance(span, str):
            return phrase_positions(self.tokens[pair], span)
        if isinstance(span, slice):
            return list(range(n))[span]
        items = [span] if isinstance(span, int) else list(span)
        for i in items:
            if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
                raise ValueError(f"token positions must be ints in [{-n}, {n - 1}], got {i!r}")
        return [i % n for i in items]

    def image_map(
        self, token_span: Any = None, pair: int = 0, size: tuple[int, int] | bool | None = None
    ) -> Tensor:
        """Patch map ``(h, w)`` of the rows in ``token_span`` (all tokens if None).

        Args:
            token_span: See :meth:`token_indices`; a phrase's map is the sum of its tokens'.
            pair: Which pair of the batch.
            size: ``(H, W)`` (or ``True`` for the input image size) to upsample bilinearly.
        """
        rows = slice(None) if token_span is None else self.token_indices(token_span, pair)
        a = self.attributions[pair][rows]
        h, w = self.patch_grid
        m = a.reshape(-1, a.shape[-1])[:, self.n_prefix :].sum(0).reshape(h, w)
        if size is None or size is False:
            return m
        if size is True:
            if self.image_size is None:
                raise ValueError("image size unknown; pass size=(H, W)")
            size = self.image_size
        return F.interpolate(m[None, None], size=tuple(size), mode="bilinear", align_corners=False)[
            0, 0
        ]

    def token_scores(
        self,
        region: Tensor | None = None,
        pair: int = 0,
        include_cls: bool = False,
        words: Sequence[Any] | None = None,
    ) -> Tensor:
        """Per-token sums ``(n,)`` of the columns inside ``region``, for the caption's tokens.

        ``n`` counts the tokens up to and including end-of-text (``tokens[pair][:n]``); the
        padding positions after it, whose interactions are zero, are left out.

        Args:
            region: Bool/float mask on the patch grid ``(h, w)`` or in pixels ``(H, W)``
                (reduced to patches by the fraction of each patch inside). None = all patches.
            pair: Which pair of the batch.
            include_cls: Also count the CLS column.
            words: Instead of every token, one score per entry: the sum over the positions
                :meth:`token_indices` gives for it (words, phrases, ints, slices, lists);
                the result is then ``(len(words),)``.
        """
        a = self.attributions[pair]
        h, w = self.patch_grid
        if region is None:
            weight = torch.ones(h * w, dtype=a.dtype, device=a.device)
        else:
            if not isinstance(region, Tensor) or region.ndim != 2:
                raise ValueError(
                    f"region must be a 2-D (h, w) or (H, W) mask tensor, got {region!r:.60}"
                )
            r = region.to(a.device, a.dtype)
            if tuple(r.shape) != (h, w):
                if r.shape[0] % h or r.shape[1] % w:
                    raise ValueError(
                        f"region must be {h}x{w} patches or a multiple in pixels, got {tuple(r.shape)}"
                    )
                r = F.adaptive_avg_pool2d(r[None, None], (h, w))[0, 0]
            weight = r.reshape(-1)
        out = a[:, self.n_prefix :] @ weight
        out = out + a[:, : self.n_prefix].sum(-1) if include_cls else out
        if words is not None:
            if isinstance(words, str):
                raise TypeError(f"words must be a sequence of words or spans, got {words!r}")
            return torch.stack([out[self.token_indices(w, pair)].sum() for w in words])
        n = 1 + max((i for i, t in enumerate(self.tokens[pair]) if t), default=len(out) - 1)
        return out[:n]
