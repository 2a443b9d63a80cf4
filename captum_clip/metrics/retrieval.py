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

from captum_clip.metrics._common import run_batched
from captum_clip.metrics.faithfulness import curve_auc, perturbation_plan


def recall_at_k(
    image_embeddings: Tensor,
    text_embeddings: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5),
    direction: str = "image",
) -> dict[int, Tensor]:
    """Recall@k of one gallery (cosine similarity), ties counted as a random order would.

    A query whose correct item shares its similarity with other items gets the expected
    hit of a uniformly random order among the tied items (so a gallery of identical
    images gives recall k/N, not 1).

    Args:
        image_embeddings: ``(N, D)``.
        text_embeddings: ``(T, D)``.
        text_to_image: ``(T,)`` index of the image each text describes.
        ks: Cut-offs.
        direction: ``"image"`` (text queries retrieve images, IR@k) or ``"text"`` (image
            queries retrieve texts, TR@k; a hit when any of the image's texts is in the top k).

    Returns:
        ``{k: scalar tensor}``.
    """
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
        greater.append((other > pos).sum(1))
        equal.append((other == pos).sum(1))  # includes the correct item itself
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


def _expected_hit(above: Tensor, tied: Tensor, n_correct: Tensor, k: int) -> Tensor:
    """P(one of ``n_correct`` correct items among ``tied`` equal ones lands in the top ``k``)."""
    slots = (k - above).clamp(min=0)
    miss = torch.ones(above.shape, dtype=torch.float64, device=above.device)
    for i in range(k):  # P(the first `slots` tied positions hold no correct item)
        frac = (tied - n_correct - i).clamp(min=0).double() / (tied - i).clamp(min=1).double()
        miss = torch.where(i < slots, miss * frac, miss)
    return (1 - miss).float()


def _check_gallery(
    images: Tensor, text_embeddings: Any, text_to_image: Any, ks: Any, direction: str
) -> None:
    if not isinstance(text_embeddings, Tensor) or text_embeddings.ndim != 2:
        raise ValueError(
            f"text_embeddings must be a (T, D) tensor, got {getattr(text_embeddings, 'shape', text_embeddings)}"
        )
    if not isinstance(text_to_image, Tensor) or text_to_image.shape != (text_embeddings.shape[0],):
        raise ValueError(
            f"text_to_image must be a tensor of {text_embeddings.shape[0]} image indices, got "
            f"{getattr(text_to_image, 'shape', text_to_image)}"
        )
    if text_to_image.is_floating_point() or text_to_image.dtype == torch.bool:
        raise TypeError(f"text_to_image must hold integers, got dtype {text_to_image.dtype}")
    if text_to_image.numel() and (
        text_to_image.min() < 0 or text_to_image.max() >= images.shape[0]
    ):
        raise ValueError(f"text_to_image values must lie in [0, {images.shape[0] - 1}]")
    if direction not in ("image", "text"):
        raise ValueError(f"direction must be 'image' (IR@k) or 'text' (TR@k), got {direction!r}")
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks!r}")


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
    plan = perturbation_plan(mode, images, attributions, **plan_kwargs)
    _check_gallery(images, text_embeddings, text_to_image, ks, direction)
    n, s = images.shape[0], len(plan.fractions)

    def embed(out: Tensor, _: Tensor) -> Tensor:
        if out.ndim != 2:
            raise ValueError(f"image_encoder must return (n, D), got shape {tuple(out.shape)}")
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
    )  # (N, S, D)
    per_step = [
        recall_at_k(emb[:, i], text_embeddings, text_to_image, ks, direction) for i in range(s)
    ]
    recalls = {k: torch.stack([r[k] for r in per_step]).to(images.device) for k in ks}
    return plan.fractions.float(), recalls


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
