"""The per-batch step of the diagnosis: predict, attribute (or ablate regions), measure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from captum_clip.diagnosis.region_ablation import region_effects
from captum_clip.metrics import mask_iou, mask_share

__all__ = ["METHODS", "PAPER_CCI", "REGION_ABLATION", "measure_batch", "resolve_method"]

REGION_ABLATION = "region_ablation"
"""``method=`` value of the region-ablation mode (hide object / background, no map); the
default of :func:`~captum_clip.diagnosis.diagnose`."""
PAPER_CCI = "cci"
"""``method=`` value of the paper's CCI map
(:meth:`CCI.default_for(forward_func) <captum_clip.attr.cci.CCI.default_for>`)."""
METHODS: tuple[str, ...] = (REGION_ABLATION, PAPER_CCI)
"""The ``method=`` strings :func:`~captum_clip.diagnosis.diagnose` accepts (default first)."""


def _check_masks(masks: Any, n: int, size: tuple[int, int], where: str) -> Tensor:
    if not isinstance(masks, Tensor):
        raise TypeError(f"{where} must be a (B, H, W) tensor, got {type(masks).__name__}")
    m = masks[:, 0] if masks.ndim == 4 and masks.shape[1] == 1 else masks
    if m.ndim != 3 or m.shape[0] != n or tuple(m.shape[1:]) != size:
        raise ValueError(
            f"{where} must have shape ({n}, {size[0]}, {size[1]}) like the images, "
            f"got {tuple(masks.shape)}"
        )
    if m.dtype != torch.bool:
        if m.is_complex() or not ((m == 0) | (m == 1)).all():
            raise ValueError(f"{where} must be boolean or contain only 0 and 1")
        m = m != 0
    return m


def resolve_method(
    forward_func: Callable, method: Any = None, attributions: Tensor | None = None
) -> Any:
    """What the diagnosis runs for ``method=`` (see :func:`~captum_clip.diagnosis.diagnose`).

    Returns:
        :data:`REGION_ABLATION` (``method=None`` without ``attributions``, or that string);
        ``None`` for precomputed ``attributions`` without a method (attribution mode);
        :meth:`CCI.default_for(forward_func) <captum_clip.attr.cci.CCI.default_for>` for
        :data:`PAPER_CCI`; an attribution object or callable as given.
    """
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(
                f"method must be one of {METHODS}, an attribution object or a callable, "
                f"got {method!r}"
            )
        if attributions is not None:
            what = "computes no map" if method == REGION_ABLATION else "computes its own map"
            raise ValueError(f"method={method!r} {what}: drop attributions= (or method=)")
        if method == PAPER_CCI:
            from captum_clip.attr.cci import CCI

            return CCI.default_for(forward_func)
        return REGION_ABLATION
    if method is None:
        return REGION_ABLATION if attributions is None else None
    if not (hasattr(method, "attribute") or callable(method)):
        raise TypeError(
            "method must have .attribute(inputs, target=...), be callable or one of "
            f"{METHODS}, got {type(method).__name__}"
        )
    return method


def _attribute(method: Any, x: Tensor, target: Tensor) -> Tensor:
    if hasattr(method, "attribute"):
        return method.attribute(x, target=target)
    return method(x, target)


def _forward(forward_func: Callable, x: Tensor) -> Tensor:
    with torch.no_grad():
        out = forward_func(x)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"forward_func must return (B, n_classes) scores, got {got}")
    return out


def measure_batch(
    forward_func: Callable[[Tensor], Tensor],
    images: Tensor,
    masks: Tensor | Callable,
    target: str | Tensor = "pred",
    *,
    method: Any = None,
    attributions: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    mask_classes: Tensor | None = None,
    outputs: Tensor | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """The per-batch step of :func:`~captum_clip.diagnosis.diagnose`: predict, attribute, measure against the masks.

    Args:
        forward_func, method: As in :func:`~captum_clip.diagnosis.diagnose` (resolved by
            :func:`resolve_method`: ``None`` without ``attributions`` and
            ``"region_ablation"`` measure region effects, ``"cci"`` the paper's CCI map).
        images: One batch ``(b, 3, H, W)``.
        masks: ``(b, H, W)`` bool masks, or a MaskProvider (called with the names of
            ``mask_classes``, or of the predicted classes when that is None).
        target: ``"pred"`` or class indices ``(b,)``.
        attributions: Precomputed attributions of the batch.
        class_names: Class names (for a MaskProvider).
        mask_classes: Classes ``(b,)`` whose object the MaskProvider segments.
        outputs: ``forward_func(images)`` when already computed.
        seed: Index of the batch's first image (seeds the IoU's tie-breaking, so the
            result does not depend on the batch split).

    Returns:
        CPU tensors ``(b,)``: ``pred``, ``target``, ``fg_share``, ``iou``, ``mask_area``
        and ``known`` (False where the driver cannot be decided: an empty mask; there
        ``fg_share`` and ``iou`` are NaN), plus ``fg_effect`` / ``bg_effect`` in
        region-ablation mode, and with a :class:`~captum_clip.masks.ConceptMasks` provider
        ``concept_fallback`` (no region was named as the class) and, when its ``evidence``
        is on, ``shortcut_share``
        (:func:`~captum_clip.concepts.shortcut_evidence`).
    """
    out = _measure(forward_func, images, masks, target, method, attributions, class_names,
                   mask_classes, outputs, seed)  # fmt: skip
    if not isinstance(masks, Tensor):
        fallback = getattr(masks, "last_fallback", None)
        if isinstance(fallback, Tensor):
            out["concept_fallback"] = fallback.cpu()
        if getattr(masks, "evidence", False) and callable(
            getattr(masks, "shortcut_evidence", None)
        ):
            tgt = out["target"].to(images.device)
            out["shortcut_share"] = masks.shortcut_evidence(forward_func, images, tgt).cpu()
    return out


def _measure(
    forward_func: Callable[[Tensor], Tensor],
    images: Tensor,
    masks: Tensor | Callable,
    target: str | Tensor,
    method: Any,
    attributions: Tensor | None,
    class_names: Sequence[str] | None,
    mask_classes: Tensor | None,
    outputs: Tensor | None,
    seed: int,
) -> dict[str, Tensor]:
    """:func:`measure_batch` without the concept columns."""
    method = resolve_method(forward_func, method, attributions)
    out = _forward(forward_func, images) if outputs is None else outputs
    pred = out.detach().argmax(1).cpu()
    tgt = pred if isinstance(target, str) else target.cpu()
    size = tuple(images.shape[-2:])
    if isinstance(masks, Tensor):
        m = masks
    else:
        named = pred if mask_classes is None else mask_classes
        m = masks(images, [class_names[i] for i in named.tolist()])
        m = _check_masks(m, images.shape[0], size, "masks from the MaskProvider")
    nonempty = m.flatten(1).any(1).cpu()
    area = m.flatten(1).float().mean(1).cpu()
    iou = torch.full((images.shape[0],), float("nan"))
    if isinstance(method, str):  # REGION_ABLATION
        _, fg_eff, bg_eff = region_effects(forward_func, images, m, tgt, output=out)
        pos_fg, pos_bg = fg_eff.clamp_min(0), bg_eff.clamp_min(0)
        share = pos_fg / (pos_fg + pos_bg)  # NaN when neither hiding costs anything
        nonempty &= ~torch.isnan(fg_eff)
        share[~nonempty] = float("nan")
        return {"target": tgt, "pred": pred, "fg_share": share, "iou": iou,
                "mask_area": area, "known": nonempty, "fg_effect": fg_eff,
                "bg_effect": bg_eff}  # fmt: skip
    a = attributions
    if a is None:
        a = _attribute(method, images, tgt.to(images.device))
    m = m.to(a.device)
    share = mask_share(a, m).detach().float().cpu()
    for i in nonempty.nonzero().flatten().tolist():
        # one call per image, seeded by its global index: ties at the threshold are
        # broken the same way whatever the batch split
        iou[i] = float(mask_iou(a[i : i + 1], m[i : i + 1], seed=seed + i)[0])
    share[~nonempty] = float("nan")
    return {"target": tgt, "pred": pred, "fg_share": share, "iou": iou, "mask_area": area,
            "known": nonempty}  # fmt: skip
