"""Retrieval recall@k under deletion/insertion over an image-text gallery (MS-COCO protocol).

Every gallery image is perturbed by the same fraction at each step (its own attribution
decides which pixels), re-encoded, and recall@k is computed over the whole gallery against
fixed text embeddings. With ``direction="image"`` (IR@k, the number Grad-ECLIP and CCI
report for MS-COCO) each caption queries the perturbed images and is a hit when its own
image ranks in the top k; with ``direction="text"`` (TR@k) each image queries the captions.
Deletion recall should drop fast for a faithful map (lower AUC is better), insertion recall
should rise fast (higher is better). AUCs are normalised as in ``faithfulness``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from captum_clip.metrics._common import check_inputs, run_batched
from captum_clip.metrics.faithfulness import curve_auc, perturbation_plan


def recall_at_k(
    image_embeddings: Tensor,
    text_embeddings: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5),
    direction: str = "image",
    tie_tolerance: float = 1e-6,
) -> dict[int, Tensor]:
    """Recall@k of one gallery (cosine similarity), ties counted as a random order would.

    A query whose correct item shares its similarity with other items gets the expected
    hit of a uniformly random order among the tied items (so a gallery of identical
    images gives recall k/N, not 1). Similarities within ``tie_tolerance`` of each other
    are ties: a float32 encoder gives identical images embeddings that differ by ~1e-7
    depending on their position in a batch, which would otherwise decide the order.

    Args:
        image_embeddings: ``(N, D)``.
        text_embeddings: ``(T, D)``.
        text_to_image: ``(T,)`` integer index in ``[0, N)`` of the image each text describes.
        ks: Cut-offs (positive ints; a ``k`` above the gallery size gives recall 1).
        direction: ``"image"`` (text queries retrieve images, IR@k) or ``"text"`` (image
            queries retrieve texts, TR@k; a hit when any of the image's texts is in the top
            k; images without texts do not count).
        tie_tolerance: Cosines closer than this are tied (``0``: exact equality only).

    Returns:
        ``{k: scalar tensor}``.

    Raises:
        ValueError: Shapes that do not fit, NaN or infinite embeddings, indices outside
            ``[0, N)``, an unknown ``direction``, or ``ks`` that are not positive ints.
        TypeError: Non-tensor inputs, floating ``text_to_image``.
    """
    if not isinstance(image_embeddings, Tensor) or image_embeddings.ndim != 2:
        raise ValueError(
            f"image_embeddings must be an (N, D) tensor, got {_shape_or_type(image_embeddings)}"
        )
    if image_embeddings.shape[0] == 0:
        raise ValueError("image_embeddings is empty (N = 0): a gallery needs images")
    _check_finite(image_embeddings, "image_embeddings")
    _check_gallery(image_embeddings.shape[0], text_embeddings, text_to_image, ks, direction)
    if not isinstance(tie_tolerance, (int, float)) or not 0 <= tie_tolerance < 1:
        raise ValueError(f"tie_tolerance must be a float in [0, 1), got {tie_tolerance!r}")
    if text_embeddings.shape[1] != image_embeddings.shape[1]:
        raise ValueError(
            f"text_embeddings have D={text_embeddings.shape[1]} but image_embeddings "
            f"D={image_embeddings.shape[1]}"
        )
    img = torch.nn.functional.normalize(image_embeddings.float(), dim=-1)
    txt = torch.nn.functional.normalize(text_embeddings.float().to(img.device), dim=-1)
    gt = text_to_image.to(img.device).long()
    greater, equal = [], []
    for start in range(0, txt.shape[0], 1024):  # bounded (1024, N) / (1024, T) blocks
        t, g = txt[start : start + 1024], gt[start : start + 1024]
        if direction == "image":
            other = t @ img.T
            pos = other.gather(1, g[:, None])  # similarity of each caption to its image
        else:
            other = img[g] @ txt.T
            pos = other.gather(1, torch.arange(start, start + len(g), device=img.device)[:, None])
        greater.append((other > pos + tie_tolerance).sum(1))
        equal.append(((other - pos).abs() <= tie_tolerance).sum(1))  # includes the item itself
    above, tied = torch.cat(greater), torch.cat(equal)
    n_correct = torch.ones_like(above)
    if direction == "text":  # per image: its best caption(s)
        n = img.shape[0]
        best = torch.full((n,), txt.shape[0], device=img.device, dtype=above.dtype)
        best = best.scatter_reduce(0, gt, above, reduce="amin")
        at_best = above == best[gt]
        n_correct = torch.zeros_like(best).scatter_add(0, gt, at_best.to(best.dtype))
        tied = torch.zeros_like(best).scatter_reduce(0, gt, tied * at_best, reduce="amax")
        keep = torch.bincount(gt, minlength=n) > 0
        above, tied, n_correct = best[keep], tied[keep], n_correct[keep]
    return {k: _expected_hit(above, tied, n_correct, k).mean() for k in ks}


def _shape_or_type(x: Any) -> Any:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _check_finite(embeddings: Tensor, name: str) -> None:
    """NaN/inf embeddings have no cosine order: a recall computed from them would be noise."""
    bad = ~torch.isfinite(embeddings).all(dim=-1)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"{name} must be finite, got NaN or infinite values in {len(rows)} row(s) "
            f"(first: {rows[:5]}); check the encoder's dtype (float16 overflow?) and weights"
        )


def _expected_hit(above: Tensor, tied: Tensor, n_correct: Tensor, k: int) -> Tensor:
    """P(one of ``n_correct`` correct items among ``tied`` equal ones lands in the top ``k``)."""
    slots = (k - above).clamp(min=0)
    miss = torch.ones(above.shape, dtype=torch.float64, device=above.device)
    for i in range(k):  # P(the first `slots` tied positions hold no correct item)
        frac = (tied - n_correct - i).clamp(min=0).double() / (tied - i).clamp(min=1).double()
        miss = torch.where(i < slots, miss * frac, miss)
    return (1 - miss).float()


def _check_gallery(
    n_images: int, text_embeddings: Any, text_to_image: Any, ks: Any, direction: Any
) -> None:
    """One validator of a gallery's texts, cut-offs and direction (``recall_at_k`` and curves)."""
    if not isinstance(text_embeddings, Tensor) or text_embeddings.ndim != 2:
        raise ValueError(
            f"text_embeddings must be a (T, D) tensor, got {_shape_or_type(text_embeddings)}"
        )
    if text_embeddings.shape[0] == 0:
        raise ValueError("text_embeddings is empty (T = 0): a gallery needs texts")
    _check_finite(text_embeddings, "text_embeddings")
    t = text_embeddings.shape[0]
    if not isinstance(text_to_image, Tensor) or text_to_image.shape != (t,):
        raise ValueError(
            f"text_to_image must be a tensor of {t} image indices (one per text), got "
            f"{_shape_or_type(text_to_image)}"
        )
    if (
        text_to_image.is_floating_point()
        or text_to_image.is_complex()
        or (text_to_image.dtype == torch.bool)
    ):
        raise TypeError(f"text_to_image must hold integers, got dtype {text_to_image.dtype}")
    lo, hi = int(text_to_image.min()), int(text_to_image.max())
    if lo < 0 or hi >= n_images:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"text_to_image values must lie in [0, {n_images - 1}] (the gallery has "
            f"{n_images} images), got {bad}"
        )
    if direction not in ("image", "text"):
        raise ValueError(
            f"direction must be 'image' (text queries, IR@k) or 'text' (image queries, "
            f"TR@k), got {direction!r}"
        )
    if (
        isinstance(ks, (str, bytes))
        or not isinstance(ks, Sequence)
        or not ks
        or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks)
    ):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")


def retrieval_curve(
    image_encoder: Callable,
    images: Tensor,
    attributions: Tensor,
    text_embeddings: Tensor,
    text_to_image: Tensor,
    *,
    mode: str = "deletion",
    direction: str = "image",
    ks: Sequence[int] = (1, 5),
    max_examples_per_batch: int | None = None,
    show_progress: bool = False,
    **plan_kwargs: Any,
) -> tuple[Tensor, dict[int, Tensor]]:
    """Recall@k of the gallery while every image is progressively deleted / inserted.

    Args:
        image_encoder: Callable ``images (n, C, H, W) -> (n, D)`` embeddings (e.g.
            ``model.encode_image``).
        images: Gallery images ``(N, C, H, W)``.
        attributions: One map per image (shapes as in ``deletion_curve``), e.g. explaining
            each image's similarity to its own caption.
        text_embeddings: ``(T, D)`` caption embeddings (fixed).
        text_to_image: ``(T,)`` index of the image each caption belongs to.
        mode: ``"deletion"`` or ``"insertion"``.
        direction: ``"image"`` (IR@k) or ``"text"`` (TR@k).
        ks: Recall cut-offs.
        max_examples_per_batch: Perturbed images per encoder call.
        show_progress: tqdm bar over the encoder calls.
        **plan_kwargs: ``baselines``, ``n_steps``, ``max_fraction``, ``unit``, ``patch_size``,
            ``protocol``, ``mean``, ``std``, ``blur_kernel_size``, ``blur_sigma``, ``seed`` as
            in ``deletion_curve``.

    Returns:
        ``(fractions (S,), {k: recall (S,)})`` on the images' device.
    """
    check_inputs(images)
    _check_gallery(images.shape[0], text_embeddings, text_to_image, ks, direction)
    fractions, emb = perturbed_embeddings(
        image_encoder,
        images,
        attributions,
        mode=mode,
        max_examples_per_batch=max_examples_per_batch,
        show_progress=show_progress,
        **plan_kwargs,
    )
    recalls = gallery_recall(emb, text_embeddings, text_to_image, ks, direction)
    return fractions, {k: r.to(images.device) for k, r in recalls.items()}


def perturbed_embeddings(
    image_encoder: Callable,
    images: Tensor,
    attributions: Tensor,
    *,
    mode: str = "deletion",
    max_examples_per_batch: int | None = None,
    show_progress: bool = False,
    **plan_kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """Normalised embeddings of every image at every deletion/insertion step.

    The per-image half of :func:`retrieval_curve`: a harness can compute it batch by batch
    (and resume), then score the whole gallery with :func:`gallery_recall`.

    Args:
        image_encoder, images, attributions, mode, max_examples_per_batch, show_progress,
            **plan_kwargs: As in :func:`retrieval_curve`.

    Returns:
        ``(fractions (S,), embeddings (N, S, D))``, embeddings L2-normalised, float32.
    """
    plan = perturbation_plan(mode, images, attributions, **plan_kwargs)
    n, s = images.shape[0], len(plan.fractions)

    def embed(out: Tensor, _: Tensor) -> Tensor:
        if not isinstance(out, Tensor) or out.ndim != 2:
            raise ValueError(
                f"image_encoder must return an (n, D) tensor, got {_shape_or_type(out)}"
            )
        return torch.nn.functional.normalize(out.float(), dim=-1)

    emb = run_batched(
        image_encoder,
        n,
        s,
        plan.build,
        embed,
        None,
        max_examples_per_batch,
        show_progress,
        desc=mode,
    )
    return plan.fractions.float(), emb


def gallery_recall(
    embeddings: Tensor,
    text_embeddings: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5),
    direction: str = "image",
) -> dict[int, Tensor]:
    """Recall@k of the gallery at every step: :func:`recall_at_k` of ``embeddings[:, i]``.

    Args:
        embeddings: ``(N, S, D)`` image embeddings per step (:func:`perturbed_embeddings`).
        text_embeddings, text_to_image, ks, direction: As in :func:`recall_at_k`.

    Returns:
        ``{k: recall (S,)}`` on the embeddings' device.
    """
    if not isinstance(embeddings, Tensor) or embeddings.ndim != 3:
        raise ValueError(
            f"embeddings must be an (N, S, D) tensor, got {_shape_or_type(embeddings)}"
        )
    per_step = [
        recall_at_k(embeddings[:, i], text_embeddings, text_to_image, ks, direction)
        for i in range(embeddings.shape[1])
    ]
    return {k: torch.stack([r[k] for r in per_step]) for k in ks}


def retrieval_auc(
    image_encoder: Callable,
    images: Tensor,
    attributions: Tensor,
    text_embeddings: Tensor,
    text_to_image: Tensor,
    **kwargs: Any,
) -> dict[int, Tensor]:
    """Normalised AUC of each recall@k curve (keyword arguments of ``retrieval_curve``).

    Deletion IR@k AUC: lower is better; insertion: higher is better.
    """
    fractions, recalls = retrieval_curve(
        image_encoder, images, attributions, text_embeddings, text_to_image, **kwargs
    )
    max_fraction = kwargs.get("max_fraction")
    if max_fraction is None:
        protocol = kwargs.get("protocol")
        max_fraction = protocol.max_fraction if protocol is not None else 1.0
    return {k: curve_auc(fractions, r, float(max_fraction)) for k, r in recalls.items()}
