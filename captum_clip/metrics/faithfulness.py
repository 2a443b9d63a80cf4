"""Deletion and insertion curves (and their AUCs) in the style of ``captum.metrics``.

Units (pixels or patches) are ranked by attribution, most important first; ties are broken
by a seeded random order, never by position, so a constant map scores like a random one.
Deletion replaces the top units of the input by a baseline (lower AUC is better); insertion
starts from the baseline and reveals the top units (higher AUC is better).

**AUC normalisation.** An AUC is the trapezoid integral of the curve over the fraction of
units *actually* changed (``k_t / n_units``, ``k_t = round(t / n_steps * max_fraction *
n_units)``) on ``[0, max_fraction]``, divided by ``max_fraction``. It is therefore the mean
score over the evaluated range, comparable across ``n_steps`` and ``max_fraction`` (other
libraries divide by the number of steps or integrate over ``[0, 1]``; their numbers differ).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from captum_clip.metrics._common import (
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    SCORES,
    check_inputs,
    importance_rank,
    make_baseline,
    pixel_map,
    resolve_target,
    run_batched,
    select_score,
)

UNITS = ("pixel", "patch")


@dataclass(frozen=True)
class Protocol:
    """Named deletion/insertion settings so that published numbers can be reproduced.

    Pass as ``protocol=`` to the curve/AUC functions; any argument given explicitly wins.

    Attributes:
        name: Human-readable name.
        n_steps: Number of removal steps; ``None`` derives it from ``units_per_step``.
        max_fraction: Fraction of units changed at the last step.
        deletion_baseline: Baseline used by deletion.
        insertion_baseline: Baseline used by insertion (the starting image).
        score: Score read from the forward output (see ``SCORES``).
        unit: ``"pixel"`` or ``"patch"``.
        units_per_step: Units per step when ``n_steps`` is ``None``.
        score_every: Score only every ``score_every``-th step (the curve has
            ``n_steps // score_every + 1`` points).
    """

    name: str
    n_steps: int | None = 100
    max_fraction: float = 1.0
    deletion_baseline: str = "zeros"
    insertion_baseline: str = "blur"
    score: str = "logit"
    unit: str = "pixel"
    units_per_step: int | None = None
    score_every: int = 1

    def __post_init__(self) -> None:
        if self.n_steps is None and not (
            isinstance(self.units_per_step, int) and self.units_per_step >= 1
        ):
            raise ValueError(f"Protocol {self.name!r}: n_steps=None needs units_per_step >= 1")
        if not (isinstance(self.score_every, int) and self.score_every >= 1):
            raise ValueError(
                f"Protocol {self.name!r}: score_every must be an int >= 1, got {self.score_every!r}"
            )


#: RISE (Petsiuk et al. 2018): 224 pixels per step over the whole image, zero (normalised)
#: deletion, blurred-image insertion, softmax probability.
RISE = Protocol(
    "RISE",
    n_steps=None,
    units_per_step=224,
    deletion_baseline="zeros",
    insertion_baseline="blur",
    score="prob",
)
#: Grad-ECLIP / CCI zero-shot protocol (Zhao et al. 2024, imagenet_eval_*.py): 100 steps up
#: to 50 % of the pixels, uniform random colours for deletion, black start for insertion,
#: scored every 10 steps, top-1 correctness of the label (pass ``score="top5"`` for top-5).
#: The noise image is fixed per example, so scoring every 10th of 100 steps equals 10 steps
#: of 5 %. Differences: the original perturbs the raw image before CLIP preprocessing and
#: appends the clean image as the last insertion point; here images are perturbed after
#: preprocessing and both curves span [0, 50 %].
GRAD_ECLIP = Protocol(
    "Grad-ECLIP",
    n_steps=100,
    max_fraction=0.5,
    deletion_baseline="noise",
    insertion_baseline="black",
    score="top1",
    score_every=10,
)
_DEFAULT = Protocol("default")


def _setting(value: Any, protocol: Protocol | None, field: str) -> Any:
    if protocol is not None and not isinstance(protocol, Protocol):
        raise TypeError(f"protocol must be a Protocol (e.g. RISE, GRAD_ECLIP), got {protocol!r}")
    return value if value is not None else getattr(protocol or _DEFAULT, field)


@dataclass(frozen=True)
class PerturbationPlan:
    """Everything needed to build the perturbed images of a deletion/insertion run.

    Attributes:
        fractions: ``(S,)`` fractions of units actually changed at each evaluated step.
        max_fraction: The requested ``max_fraction`` (AUC normaliser).
        build: ``(example_idx (m,), step_idx (m,)) -> images (m, C, H, W)`` on the device.
    """

    fractions: Tensor
    max_fraction: float
    build: Callable[[Tensor, Tensor], Tensor]


def perturbation_plan(
    mode: str,
    inputs: Tensor,
    attributions: Tensor,
    *,
    baselines: Any = None,
    n_steps: int | None = None,
    max_fraction: float | None = None,
    unit: str | None = None,
    patch_size: int = 16,
    protocol: Protocol | None = None,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    blur_kernel_size: int = 11,
    blur_sigma: float = 5.0,
    seed: int = 0,
) -> PerturbationPlan:
    """Validate the settings of a ``mode`` (``"deletion"``/``"insertion"``) run and plan it.

    Arguments as in ``deletion_curve``. The images are built lazily by ``plan.build`` with
    index ops on the inputs' device (no loops over pixels).
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    inputs = check_inputs(inputs)
    b, c, h, w = inputs.shape
    amap = pixel_map(attributions, inputs.shape).to(inputs.device)
    unit = _setting(unit, protocol, "unit")
    max_fraction = float(_setting(max_fraction, protocol, "max_fraction"))
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if not 0 < max_fraction <= 1:
        raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction}")
    p = 1
    if unit == "patch":
        p = int(patch_size)
        if p < 1 or h % p or w % p:
            raise ValueError(
                f"patch_size must be >= 1 and divide the image size {h}x{w}, got {patch_size}"
            )
        amap = amap.reshape(b, h // p, p, w // p, p).sum(dim=(2, 4))
    gh, gw = h // p, w // p
    n_units = gh * gw
    every = protocol.score_every if protocol is not None else 1
    if n_steps is None and protocol is not None and protocol.n_steps is None:
        n_steps = max(1, math.ceil(max_fraction * n_units / protocol.units_per_step))
    n_steps = _setting(n_steps, protocol, "n_steps")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1 or n_steps % every:
        raise ValueError(
            f"n_steps must be a positive int divisible by score_every={every}, got {n_steps!r}"
        )
    steps = range(0, n_steps + 1, every)
    counts = torch.tensor([math.floor(t * max_fraction * n_units / n_steps + 0.5) for t in steps])
    rank = importance_rank(amap.reshape(b, n_units), seed).to(torch.int32)
    # rank of every pixel (its unit's rank), computed once: building a step is then one
    # comparison and one masked copy per image
    pixel_rank = rank.view(b, gh, 1, gw, 1).expand(b, gh, p, gw, p).reshape(b, h * w)
    default_base = "deletion_baseline" if mode == "deletion" else "insertion_baseline"
    base = make_baseline(
        _setting(baselines, protocol, default_base),
        inputs,
        mean=mean,
        std=std,
        seed=seed,
        blur_kernel_size=blur_kernel_size,
        blur_sigma=blur_sigma,
    )
    if (base.stride(0), base.stride(2), base.stride(3)) == (0, 0, 0):  # constant per channel
        base = base[:1, :, :1, :1]
    src, dst = (base, inputs) if mode == "deletion" else (inputs, base)
    counts_dev = counts.to(inputs.device, torch.int32)

    def build(ex: Tensor, step: Tensor) -> Tensor:
        ex, step = ex.to(inputs.device), step.to(inputs.device)
        sel = (pixel_rank[ex] < counts_dev[step, None]).view(-1, 1, h, w)
        out = dst[ex] if dst.shape[0] == b else dst.expand(len(ex), c, h, w).clone()
        return torch.where(sel, src[ex] if src.shape[0] == b else src, out, out=out)

    fractions = counts.to(device=inputs.device, dtype=inputs.dtype) / n_units
    return PerturbationPlan(fractions, max_fraction, build)


def _curve(
    mode: str,
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    *,
    target: Any,
    additional_forward_args: Any,
    score: str | None,
    max_examples_per_batch: int | None,
    show_progress: bool,
    **plan_kwargs: Any,
) -> tuple[Tensor, Tensor]:
    score = _setting(score, plan_kwargs.get("protocol"), "score")
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    plan = perturbation_plan(mode, inputs, attributions, **plan_kwargs)
    b = inputs.shape[0]
    tgt = resolve_target(target, b, inputs.device)
    if tgt is None:  # explain the predicted class of the unperturbed input

        def clean(ex: Tensor, _: Tensor) -> Tensor:
            return inputs[ex.to(inputs.device)]

        def argmax(out: Tensor, _: Tensor) -> Tensor:
            return (out[:, None] if out.ndim == 1 else out).argmax(dim=1)

        tgt = run_batched(
            forward_func, b, 1, clean, argmax, additional_forward_args, max_examples_per_batch
        )[:, 0].to(inputs.device)

    def reduce(out: Tensor, ex: Tensor) -> Tensor:
        return select_score(out, tgt[ex.to(tgt.device)].to(out.device), score)

    scores = run_batched(
        forward_func,
        b,
        len(plan.fractions),
        plan.build,
        reduce,
        additional_forward_args,
        max_examples_per_batch,
        show_progress,
        desc=mode,
    )
    return plan.fractions.to(scores.dtype), scores.to(inputs.device)


def curve_auc(fractions: Tensor, scores: Tensor, max_fraction: float | None = None) -> Tensor:
    """Trapezoid AUC of curves ``(B, S)`` over ``fractions`` ``(S,)``, divided by ``max_fraction``.

    ``max_fraction`` defaults to the last fraction (the fraction actually changed at the end).
    """
    if max_fraction is None:
        max_fraction = float(fractions[-1])
    if max_fraction <= 0:
        raise ValueError(f"max_fraction must be > 0, got {max_fraction}")
    return torch.trapezoid(scores, x=fractions.to(scores.dtype), dim=-1) / max_fraction


_DOC_ARGS = """
    Args:
        forward_func: Callable ``images (n, C, H, W) -> (n, n_outputs)``, e.g. a
            ``ClipClassifier``; a ``ClipSimilarity`` gives cosine curves with ``score="logit"``.
        inputs: Images ``(B, C, H, W)`` in the model's (normalised) input space.
        attributions: ``(B, C, H, W)`` (summed over channels), ``(B, 1, H, W)`` or ``(B, H, W)``.
        target: Output index per example (int or ``B`` ints); ``None`` = predicted class
            of the unperturbed input (costs one extra forward per example).
        additional_forward_args: Extra forward arguments; tensors with ``B`` rows are
            indexed per example.
        baselines: ``"zeros"``, ``"black"``, ``"blur"``, ``"noise"`` (see ``make_baseline``),
            a number or a tensor broadcastable to ``inputs``.
        n_steps: Number of steps (default 100); the curve has ``n_steps // score_every + 1`` points.
        max_fraction: Fraction of units changed at the last step (default 1).
        unit: ``"pixel"`` (default) or ``"patch"`` (``patch_size`` squares; ranked by the sum).
        patch_size: Patch side for ``unit="patch"``; must divide H and W.
        score: ``"logit"`` (raw output, default), ``"prob"`` (softmax), ``"top1"``,
            ``"top5"``, ``"top10"`` (target among the k largest outputs; see ``select_score``).
        protocol: A ``Protocol`` (``RISE``, ``GRAD_ECLIP``) giving defaults for the above.
        mean: Per-channel normalisation mean (for ``"black"``/``"noise"``).
        std: Per-channel normalisation std.
        blur_kernel_size: Gaussian kernel size of ``"blur"``.
        blur_sigma: Gaussian sigma of ``"blur"``.
        seed: Seed of the tie-breaking order and of the ``"noise"`` baseline.
        max_examples_per_batch: Perturbed images per forward; ``None`` = all at once.
        show_progress: tqdm bar over the forward batches.
"""


def _curve_function(mode: str, summary: str) -> Callable[..., tuple[Tensor, Tensor]]:
    """``deletion_curve`` / ``insertion_curve``: one signature, the mode fixed."""

    def curve(
        forward_func: Callable,
        inputs: Tensor,
        attributions: Tensor,
        *,
        target: Any = None,
        additional_forward_args: Any = None,
        baselines: str | Tensor | float | None = None,
        n_steps: int | None = None,
        max_fraction: float | None = None,
        unit: str | None = None,
        patch_size: int = 16,
        score: str | None = None,
        protocol: Protocol | None = None,
        mean: Sequence[float] = OPENAI_DATASET_MEAN,
        std: Sequence[float] = OPENAI_DATASET_STD,
        blur_kernel_size: int = 11,
        blur_sigma: float = 5.0,
        seed: int = 0,
        max_examples_per_batch: int | None = None,
        show_progress: bool = False,
    ) -> tuple[Tensor, Tensor]:
        kw = {k: v for k, v in locals().items()
              if k not in ("forward_func", "inputs", "attributions", "mode", "summary")}  # fmt: skip
        return _curve(mode, forward_func, inputs, attributions, **kw)

    curve.__name__ = curve.__qualname__ = f"{mode}_curve"
    curve.__doc__ = summary
    return curve


deletion_curve = _curve_function(
    "deletion",
    """Deletion curve: score while the most important units are replaced by the baseline.

    Default baseline ``"zeros"``.
    """,
)
insertion_curve = _curve_function(
    "insertion",
    """Insertion curve: score while the most important units are revealed on the baseline.

    Default baseline ``"blur"`` (RISE).
    """,
)


def _auc(
    curve_fn: Callable, forward_func: Callable, inputs: Tensor, attributions: Tensor, kwargs: dict
) -> Tensor:
    fractions, scores = curve_fn(forward_func, inputs, attributions, **kwargs)
    protocol = kwargs.get("protocol")
    return curve_auc(
        fractions, scores, float(_setting(kwargs.get("max_fraction"), protocol, "max_fraction"))
    )


def deletion_auc(
    forward_func: Callable, inputs: Tensor, attributions: Tensor, **kwargs: Any
) -> Tensor:
    """Deletion AUC per example ``(B,)`` (lower is better); keyword arguments of ``deletion_curve``.

    Trapezoid over the fraction actually removed on ``[0, max_fraction]``, divided by
    ``max_fraction`` (the mean score over the removal range).
    """
    return _auc(deletion_curve, forward_func, inputs, attributions, kwargs)


def insertion_auc(
    forward_func: Callable, inputs: Tensor, attributions: Tensor, **kwargs: Any
) -> Tensor:
    """Insertion AUC per example ``(B,)`` (higher is better); keyword arguments of ``insertion_curve``.

    Normalised like ``deletion_auc``.
    """
    return _auc(insertion_curve, forward_func, inputs, attributions, kwargs)


_DOC_RETURNS = """
    Returns:
        ``(fractions (S,), scores (B, S))`` on the inputs' device, ``S = n_steps + 1`` (or
        ``n_steps // score_every + 1``); ``fractions`` are the fractions actually changed.
"""
for _fn in (deletion_curve, insertion_curve):
    if _fn.__doc__:  # None under python -OO
        _fn.__doc__ += _DOC_ARGS + _DOC_RETURNS
