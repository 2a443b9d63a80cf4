"""Cross-modal region x word games: game-theoretic caption-image interactions.

The players are image regions (CCI's k-means clusters of the patch features, or regions
the user gives) and caption words; the value of a coalition is the cosine similarity of
the pair with both sides masked -- regions outside the coalition hidden from every
attention layer of the vision tower (``tower.hide_patches``, CCI's attention mode), words
outside it replaced by the tokenizer's pad token (the same reference text as
:class:`~captum_clip.attr.IntegratedInteractions`: ``[SOT, PAD..., EOT]``, the
end-of-text token stays in place so the pooled position does not move). Replacing by pad
rather than an attention mask keeps every text tower on its own forward (open_clip's
causal towers have no padding mask to extend).

Interactions of the cross pairs (region, word) are exact Banzhaf or Shapley interaction
indices for small games and FIxLIP's p-weighted Banzhaf interactions (Baniecki et al.,
NeurIPS 2025), sampled, for larger ones -- all from one batched forward per side, see
:mod:`captum_clip.attr._cross_values`. The result is an
:class:`~captum_clip.attr.InteractionResult` like the one of ``IntegratedInteractions``:
each (word, region) interaction is spread evenly over the word's token and the region's
patches, so ``image_map(word)`` sums to the word's interactions and the grounding
analysis (:func:`captum_clip.grounding.analyse`) takes either method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip._hooks import preserve_model_state
from captum_clip._validate import check_batch_size, check_images
from captum_clip.attr import _cross_values as cv
from captum_clip.attr._interaction_result import InteractionResult
from captum_clip.attr._interaction_text import ClipTextEncoder
from captum_clip.attr._kmeans import batched_kmeans

__all__ = ["INDICES", "MAX_EXACT_PLAYERS", "CrossModalInteractions"]

INDICES = ("banzhaf", "shapley", "weighted_banzhaf")
#: Largest side (regions or words) enumerated exactly (2^10 coalitions per side).
MAX_EXACT_PLAYERS = 10


class CrossModalInteractions:
    """Region x word interactions of a CLIP-style dual encoder (module docstring).

    Args:
        model: An open_clip ``CLIP`` / ``CustomTextCLIP`` or a transformers CLIP / SigLIP
            with a ViT vision tower (regions are hidden in attention).
        tokenizer: Turns captions into ids (needed when ``texts`` are strings).

    Example:
        >>> cmi = CrossModalInteractions(model, tokenizer)
        >>> res = cmi.explain(images, ["a red dots on grass"], n_regions=6)
        >>> res.image_map("dots")         # the word's interactions on the patch grid
    """

    def __init__(self, model: nn.Module, tokenizer: Callable | None = None) -> None:
        from captum_clip.models.adapter import ClipAdapter

        self.model = model
        self.adapter = ClipAdapter(model)
        self.vision = self.adapter.vision
        if not self.vision.is_vit:
            raise ValueError(
                "cross-modal games hide regions in attention and need a ViT vision tower; "
                f"{type(self.vision.module).__name__} is not one (IntegratedInteractions "
                "works on any tower)"
            )
        self.text = ClipTextEncoder(self.adapter.text, tokenizer)

    # ------------------------------------------------------------------ sides
    def _regions(
        self, images: Tensor, regions: Any, n_regions: int, layer: int, seed: int
    ) -> tuple[Tensor, Tensor]:
        """``(B, P)`` consecutive region labels and ``(B,)`` regions per image."""
        if regions is not None:
            from captum_clip.attr._region_games import user_partition

            return user_partition(regions, images, tuple(self.vision.grid_size))
        if isinstance(n_regions, bool) or not isinstance(n_regions, int) or n_regions < 1:
            raise ValueError(f"n_regions must be a positive int, got {n_regions!r}")
        feats = self.vision.patch_features(images, layer)
        b, h, w, d = feats.shape
        out = batched_kmeans(feats.reshape(b, h * w, d), min(n_regions, h * w), seed=seed)
        return out.labels, out.n_found

    def _image_embeddings(self, images: Tensor, hidden: Tensor, chunk: int) -> Tensor:
        """Normalised embeddings ``(N, D)`` of ``images`` ``(N, ...)`` with ``hidden``
        ``(N, P)`` patches hidden, ``chunk`` rows per forward."""
        out = []
        for x, h in zip(images.split(chunk), hidden.split(chunk)):
            with self.vision.hide_patches(h):
                out.append(F.normalize(self.adapter.encode_image(x).float(), dim=-1))
        return torch.cat(out)

    def _text_embeddings(self, ids: Tensor, chunk: int) -> Tensor:
        out = [F.normalize(self.adapter.encode_text(c).float(), dim=-1) for c in ids.split(chunk)]
        return torch.cat(out)

    def _plans(self, n: int, index: str, budget: int | None, p: float, g: torch.Generator):
        if index != "weighted_banzhaf" and n > MAX_EXACT_PLAYERS:
            raise ValueError(
                f"exact {index} interactions enumerate 2^n coalitions per side; a side has "
                f"{n} players (max {MAX_EXACT_PLAYERS}); use index='weighted_banzhaf' with "
                "a budget"
            )
        if index == "weighted_banzhaf" and budget is not None:
            return cv.sample_coalitions(n, budget, p, g)
        return cv.all_coalitions(n)

    def _side_values(self, coal: Tensor, values: Tensor, index: str, sampled: bool, p: float):
        values = values.double()
        if index == "shapley":
            return cv.size_marginals(coal.to(values.device), values)
        if sampled:
            return cv.msr_values(coal.to(values.device), values)
        q = 0.5 if index == "banzhaf" else p
        return cv.banzhaf_weights(coal, q).to(values.device) @ values

    # ------------------------------------------------------------------ API
    def explain(
        self,
        images: Tensor,
        texts: Sequence[str] | Tensor,
        n_regions: int = 6,
        regions: Any = None,
        index: str = "banzhaf",
        budget: int | None = None,
        p: float = 0.5,
        layer: int = -1,
        seed: int = 0,
        internal_batch_size: int = 256,
        **_: Any,
    ) -> InteractionResult:
        """Interactions ``A`` ``(B, S, n_prefix + P)`` of ``B`` image-caption pairs.

        Args:
            images: ``(B, 3, H, W)`` preprocessed images.
            texts: ``B`` captions, or a ``(B, S)`` id tensor.
            n_regions: K of the k-means regions (CCI's clusters of block ``layer``).
            regions: User regions instead (see
                :func:`captum_clip.attr._region_games.check_regions`).
            index: ``"banzhaf"`` / ``"shapley"`` (exact, at most
                :data:`MAX_EXACT_PLAYERS` players per side) or ``"weighted_banzhaf"``
                (FIxLIP; exact without ``budget``, sampled with it).
            budget: Sampled coalitions per side (``"weighted_banzhaf"`` only); image
                forwards per pair = ``budget + 2``.
            p: Inclusion probability of the weighted Banzhaf index (0.5 = Banzhaf).
            layer: Block whose patch features are clustered.
            seed: Seed of the k-means and of the sampled coalitions.
            internal_batch_size: Rows per forward on each side.
            **_: Ignored (keyword arguments of ``IntegratedInteractions.explain`` such as
                ``n_steps``, so the grounding analysis can pass them unchanged).

        Returns:
            An :class:`~captum_clip.attr.InteractionResult`; ``score`` is ``v(all, all)``,
            ``reference_scores`` ``v(all regions, no word)``, ``v(no region, all
            words)``, ``v(none, none)``; ``delta`` = ``sum A`` minus the four-term
            difference (not 0: these indices are not efficient).
        """
        if index not in INDICES:
            raise ValueError(f"index must be one of {INDICES}, got {index!r}")
        if not 0.0 < float(p) < 1.0:
            raise ValueError(f"p must be in (0, 1), got {p!r}")
        if budget is not None and (index != "weighted_banzhaf" or int(budget) < 2):
            raise ValueError(
                f"budget (>= 2 sampled coalitions per side) is for index='weighted_banzhaf'; "
                f"got budget={budget!r} with index={index!r}"
            )
        chunk = check_batch_size(internal_batch_size, "internal_batch_size", allow_none=False)
        images = check_images(images, self.vision.image_size, dtype=self.vision.dtype)
        ids = self.text.prepare(texts)
        if ids.shape[0] != images.shape[0]:
            raise ValueError(
                f"images and texts must be pairs of the same batch size, got "
                f"{images.shape[0]} images and {ids.shape[0]} texts"
            )
        with preserve_model_state(self.model), torch.no_grad():
            self.model.eval()
            return self._explain(images, ids, n_regions, regions, index, budget, p, layer,
                                 seed, chunk)  # fmt: skip

    def _explain(self, images, ids, n_regions, regions, index, budget, p, layer, seed, chunk):
        gen = torch.Generator().manual_seed(int(seed))
        labels, n_found = self._regions(images, regions, n_regions, layer, seed)
        ends = self.text._text_end(ids).tolist()
        pad = self.text.pad_id()
        sampled = budget is not None
        img_rows, img_plans, txt_rows, txt_plans = [], [], [], []
        for b in range(images.shape[0]):
            k = int(n_found[b])
            coal = self._plans(k, index, budget, p, gen)
            img_plans.append(coal)
            img_rows.append(~coal.to(labels.device)[:, labels[b]])  # (R, P) hidden patches
            words = list(range(1, max(ends[b], 1)))
            tc = self._plans(len(words), index, budget, p, gen)
            txt_plans.append((words, tc))
            rows = ids[b].expand(tc.shape[0], -1).clone()
            for w, pos in enumerate(words):
                rows[~tc[:, w].to(rows.device), pos] = pad
            txt_rows.append(rows)
        counts = [r.shape[0] for r in img_rows]
        reps = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        g_all = self._image_embeddings(images[reps.to(images.device)], torch.cat(img_rows), chunk)
        f_all = self._text_embeddings(torch.cat(txt_rows), chunk)
        g_parts = g_all.split(counts)
        f_parts = f_all.split([r.shape[0] for r in txt_rows])
        n_prefix, n_p = self.vision.n_prefix, self.vision.n_patches
        a = torch.zeros(len(counts), ids.shape[1], n_prefix + n_p, dtype=torch.float64)
        scores, refs = [], []
        for b, (coal, g) in enumerate(zip(img_plans, g_parts)):
            (words, tc), f = txt_plans[b], f_parts[b]
            full_i, empty_i = _row(coal, True), _row(coal, False)
            full_t, empty_t = _row(tc, True), _row(tc, False)
            gd, fd = g.double(), f.double()
            scores.append(gd[full_i] @ fd[full_t])
            refs.append(torch.stack([gd[full_i] @ fd[empty_t], gd[empty_i] @ fd[full_t],
                                     gd[empty_i] @ fd[empty_t]]))  # fmt: skip
            if not words or coal.shape[1] == 0:
                continue
            gv = self._side_values(coal, g, index, sampled, p)
            fv = self._side_values(tc, f, index, sampled, p)
            if index == "shapley":
                inter = cv.shapley_interactions(gv, fv)
            else:
                inter = gv @ fv.T  # (K, M)
            lab = labels[b].to(inter.device)
            sizes = torch.bincount(lab, minlength=coal.shape[1]).clamp_min(1).double()
            per_patch = (inter / sizes[:, None])[lab]  # (P, M)
            a[b, words, n_prefix:] = per_patch.T.cpu()
        score, ref = torch.stack(scores).float().cpu(), torch.stack(refs).float().cpu()
        attributions = a.float()
        delta = attributions.sum((1, 2)) - (score - ref[:, 0] - ref[:, 1] + ref[:, 2])
        return InteractionResult(
            attributions, self.text.labels(ids), tuple(self.vision.grid_size), score, delta,
            ref, tuple(self.vision.image_size), n_prefix=n_prefix,
        )  # fmt: skip

    def attribute(self, images: Tensor, texts: Sequence[str] | Tensor, **kwargs: Any) -> Tensor:
        """``A`` of :meth:`explain` (same arguments)."""
        return self.explain(images, texts, **kwargs).attributions


def _row(coalitions: Tensor, full: bool) -> int:
    """Index of the full (or empty) coalition among the rows."""
    target = coalitions.all(1) if full else ~coalitions.any(1)
    return int(target.nonzero()[0, 0])
