"""Causal ground truth: is a prediction driven by the object or by the background?

For every scene two interventions are rendered from its factors
(:func:`captum_clip.testbed.shapes.render`):

* **background swap** — the same object (same pixels inside the mask) on another
  background;
* **object removal** — the background alone, object not drawn.

A prediction *survives* an intervention when the arg-max class after it is still the
target (by default the original prediction). The label is

=============== ============================ ==========================
label           survives background swap     survives object removal
=============== ============================ ==========================
``foreground``  yes                          no
``background``  no                           yes
``both``        no (needs both parts)        no
``neither``     yes (neither part needed)    yes
=============== ============================ ==========================

The continuous ``fg_score = drop_removed - drop_swap`` lies in ``[-1, 1]`` (relative
drops of the target's softmax probability, clipped to ``[0, 1]``): positive means the
object matters more than the background. Use ``-fg_score`` (or ``1 - fg_score``) as a
background-reliance score for AUROC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from captum_clip._validate import check_batch_size, check_target
from captum_clip.testbed import shapes

LABELS: tuple[str, ...] = ("foreground", "background", "both", "neither")


@dataclass
class CausalLabels:
    """Per-image results of :func:`causal_labels` (all tensors ``(B,)`` on the CPU).

    Attributes:
        target: Class whose score is tracked.
        pred, pred_swap, pred_removed: Arg-max class of the original, background-swapped
            and object-removed image.
        score, score_swap, score_removed: Softmax probability of ``target`` on each.
        swap_background: Background index used for the swap.
        drop_swap, drop_removed: Relative probability drops ``(score - new) / score``,
            clipped to ``[0, 1]``.
        fg_score: ``drop_removed - drop_swap`` in ``[-1, 1]`` (high = foreground-driven).
        label_index: Index into :data:`LABELS`.
        labels: The label strings.
    """

    target: torch.Tensor
    pred: torch.Tensor
    score: torch.Tensor
    pred_swap: torch.Tensor
    score_swap: torch.Tensor
    pred_removed: torch.Tensor
    score_removed: torch.Tensor
    swap_background: torch.Tensor
    drop_swap: torch.Tensor
    drop_removed: torch.Tensor
    fg_score: torch.Tensor
    label_index: torch.Tensor
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def counts(self) -> dict[str, int]:
        """How many images got each label."""
        return {name: int((self.label_index == i).sum()) for i, name in enumerate(LABELS)}

    def as_records(self) -> list[dict]:
        """One dict per image (e.g. for ``pandas.DataFrame``)."""
        keys = [k for k in self.__dataclass_fields__ if k != "labels"]
        cols = {k: getattr(self, k).tolist() for k in keys}
        return [dict({k: cols[k][i] for k in keys}, label=self.labels[i]) for i in range(len(self))]


def swap_backgrounds(factors: dict[str, torch.Tensor], seed: int = 0) -> torch.Tensor:
    """A random background different from each scene's own one (deterministic)."""
    n_bg = len(shapes.BACKGROUND_NAMES)
    g = torch.Generator().manual_seed(int(seed))
    shift = torch.randint(1, n_bg, factors["background"].shape, generator=g)
    return (factors["background"] + shift) % n_bg


def _label_index(survive_swap: torch.Tensor, survive_removed: torch.Tensor) -> torch.Tensor:
    idx = torch.full(survive_swap.shape, LABELS.index("both"), dtype=torch.long)
    idx[survive_swap & ~survive_removed] = LABELS.index("foreground")
    idx[~survive_swap & survive_removed] = LABELS.index("background")
    idx[survive_swap & survive_removed] = LABELS.index("neither")
    return idx


def _check_logits(out: object, n: int) -> torch.Tensor:
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != n:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"forward_func must return (B, n_classes) logits with B={n}, got {got}")
    if torch.isnan(out).any():
        raise ValueError("forward_func returned NaN logits")
    return out.detach().float().cpu()


@torch.no_grad()
def causal_labels(
    forward_func: Callable[[torch.Tensor], torch.Tensor],
    scenes: shapes.Scenes | dict[str, torch.Tensor],
    size: int | None = None,
    target: int | torch.Tensor | None = None,
    swap_background: int | torch.Tensor | None = None,
    seed: int = 0,
    internal_batch_size: int = 128,
    device: str | torch.device | None = None,
    show_progress: bool = False,
) -> CausalLabels:
    """Labels each scene as foreground-, background-, both- or neither-driven by intervention.

    Args:
        forward_func: Maps normalised images ``(B, 3, H, W)`` (see
            :func:`captum_clip.testbed.shapes.normalize`) to ``(B, n_classes)`` logits,
            e.g. a ``captum_clip.models.ClipClassifier`` or a testbed zero-shot head.
        scenes: A :class:`~captum_clip.testbed.shapes.Scenes` or its factors dict.
        size: Image side; taken from ``scenes.images`` when a ``Scenes`` is given, else 64.
        target: Class to track (int or ``(B,)``); default: each image's original prediction.
        swap_background: Background index (int or ``(B,)``) for the swap; default: a random
            background different from the scene's (see :func:`swap_backgrounds`).
        seed: Seed of the default swap backgrounds.
        internal_batch_size: Scenes per forward batch (each renders three images).
        device: Device for ``forward_func``'s inputs (default: CPU).
        show_progress: Show a tqdm progress bar.

    Returns:
        :class:`CausalLabels`.
    """
    if isinstance(scenes, shapes.Scenes):
        factors = scenes.factors
        size = scenes.images.shape[-1] if size is None else size
    elif isinstance(scenes, dict):
        factors = scenes
    else:
        raise TypeError(f"scenes must be a Scenes or a factors dict, got {type(scenes).__name__}")
    size = 64 if size is None else size
    if not callable(forward_func):
        raise TypeError("forward_func must be callable")
    check_batch_size(internal_batch_size, allow_none=False)
    n = int(factors["class"].shape[0])
    n_bg = len(shapes.BACKGROUND_NAMES)
    if swap_background is None:
        swap = swap_backgrounds(factors, seed)
    else:
        swap = torch.as_tensor(swap_background, dtype=torch.long).expand(n).clone()
        if ((swap < 0) | (swap >= n_bg)).any():
            raise ValueError(f"swap_background must be in [0, {n_bg}), got {swap_background!r}")
    target = check_target(target, n)
    logits: dict[str, list[torch.Tensor]] = {"orig": [], "swap": [], "removed": []}
    starts = range(0, n, internal_batch_size)
    for s in tqdm(starts, disable=not show_progress, desc="causal labels"):
        sub = shapes.select(factors, slice(s, s + internal_batch_size))
        b = int(sub["class"].shape[0])
        variants = {
            "orig": shapes.render(sub, size)[0],
            "swap": shapes.render(sub, size, background=swap[s : s + b])[0],
            "removed": shapes.render(sub, size, draw_object=False)[0],
        }
        for key, images in variants.items():
            x = shapes.normalize(images)
            x = x.to(device) if device is not None else x
            logits[key].append(_check_logits(forward_func(x), b))
    out = {k: torch.cat(v) for k, v in logits.items()}
    n_cls = out["orig"].shape[1]
    pred = out["orig"].argmax(1)
    target = pred if target is None else check_target(target, n, n_cls)
    probs = {k: v.softmax(1).gather(1, target[:, None])[:, 0] for k, v in out.items()}
    preds = {k: v.argmax(1) for k, v in out.items()}
    base = probs["orig"].clamp_min(1e-12)
    drop_swap = ((probs["orig"] - probs["swap"]) / base).clamp(0, 1)
    drop_removed = ((probs["orig"] - probs["removed"]) / base).clamp(0, 1)
    idx = _label_index(preds["swap"] == target, preds["removed"] == target)
    return CausalLabels(
        target=target,
        pred=pred,
        score=probs["orig"],
        pred_swap=preds["swap"],
        score_swap=probs["swap"],
        pred_removed=preds["removed"],
        score_removed=probs["removed"],
        swap_background=swap,
        drop_swap=drop_swap,
        drop_removed=drop_removed,
        fg_score=drop_removed - drop_swap,
        label_index=idx,
        labels=[LABELS[i] for i in idx.tolist()],
    )
