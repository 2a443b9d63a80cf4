"""Faithfulness benchmark: attribution methods x metrics on the same images and model.

:func:`evaluate` attributes a batch of images with every method of
:mod:`captum_clip.benchmark.methods` (timed and forward-counted, chunk by chunk in a
rotating order so that load changes on a shared machine hit every method alike) and
scores every map with the metrics of :mod:`captum_clip.metrics`:

* deletion / insertion AUC, softmax probability and top-1 curves (both read from the same
  perturbed images: one set of forwards per curve);
* ROAD (combined ``(LeRF - MoRF) / 2``, probability score, averaged over percentages);
* pointing game and mask share against object masks (when given);
* agreement of the mask share with causal foreground/background labels (AUROC, when
  labels are given -- the testbed provides them, :func:`captum_clip.testbed.causal_labels`);
* seconds and image forward passes per image of each method.

:func:`run_testbed` and :func:`run_folder` (in :mod:`captum_clip.benchmark.inputs`) feed it
testbed scenes or a user's image folder.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from captum_clip.benchmark.methods import (
    ALIASES,
    METHODS,
    ForwardCounter,
    MethodSettings,
    build_method,
)
from captum_clip.metrics import (
    curve_auc,
    mask_share,
    pointing_game,
    road,
    run_batched,
    select_score,
)
from captum_clip.metrics.faithfulness import perturbation_plan

__all__ = ["FaithfulnessResult", "MetricSettings", "evaluate", "scored_curves"]

#: Per-image metric columns of :attr:`FaithfulnessResult.table` (higher is better unless
#: the name starts with ``deletion``).
METRIC_COLUMNS = (
    "deletion_prob",
    "deletion_top1",
    "insertion_prob",
    "insertion_top1",
    "road",
    "pointing",
    "mask_share",
)


@dataclass(frozen=True)
class MetricSettings:
    """Settings of the metrics (written at the top of every results file).

    Attributes:
        n_steps: Deletion/insertion steps (pixels, ranked by the channel-summed map).
        max_fraction: Fraction of pixels changed at the last step.
        deletion_baseline: Replacement of deleted pixels (``"zeros"`` = dataset mean).
        insertion_baseline: Start image of insertion (``"blur"``, RISE).
        road_percentages: Percentages removed by ROAD (MoRF and LeRF each).
        pointing_tolerance: Pointing-game tolerance in pixels.
        seed: Seed of tie-breaking orders and ROAD noise.
        max_examples_per_batch: Perturbed images per forward inside the metrics.
        deletion_variants: Extra deletion AUCs (probability) as ``(name, unit,
            baseline)`` triples -> column ``deletion_prob_<name>``; ``unit="patch"`` uses the
            vision tower's patch size. They show how much a ranking depends on the
            perturbation (pixel vs patch granularity, the baseline).
    """

    n_steps: int = 10
    max_fraction: float = 1.0
    deletion_baseline: str = "zeros"
    insertion_baseline: str = "blur"
    road_percentages: tuple[float, ...] = (20, 50, 80)
    pointing_tolerance: int = 2
    seed: int = 0
    max_examples_per_batch: int = 256
    deletion_variants: tuple[tuple[str, str, str], ...] = (
        ("patch", "patch", "zeros"),
        ("blur", "pixel", "blur"),
    )


@dataclass
class FaithfulnessResult:
    """What :func:`evaluate` returns for one model.

    Attributes:
        model: Model name used in tables.
        table: One row per (method, image): ``method``, ``image``, ``target`` and the
            :data:`METRIC_COLUMNS` (NaN where a metric needs masks that were not given).
        cost: One row per method: ``seconds_per_image``, ``forwards_per_image``,
            ``autograd_forwards_per_image`` (forwards that recorded a graph).
        curves: ``{"deletion"|"insertion": {method: (fractions (S,), prob scores (B, S))}}``.
        causal: One row per method (``auroc``, ``accuracy``, ``n``, ``n_foreground``,
            ``n_background``) or None without causal labels.
        skipped: ``{method: reason}`` for methods that could not run on this model.
        n_images: Number of images.
    """

    model: str
    table: pd.DataFrame
    cost: pd.DataFrame
    curves: dict[str, dict[str, tuple[Tensor, Tensor]]]
    causal: pd.DataFrame | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    n_images: int = 0

    def summary(self) -> pd.DataFrame:
        """Per-method means of the metrics joined with cost (and causal AUROC)."""
        cols = [c for c in self.table.columns if c not in ("method", "image", "target")]
        means = self.table.groupby("method", sort=False)[cols].mean()
        out = means.join(self.cost)
        if self.causal is not None:
            out = out.join(self.causal[["auroc"]].rename(columns={"auroc": "causal_auroc"}))
        return out


def scored_curves(
    mode: str,
    forward_func: Any,
    inputs: Tensor,
    attributions: Tensor,
    target: Tensor,
    settings: MetricSettings,
    scores: Sequence[str] = ("prob", "top1"),
    unit: str = "pixel",
    baseline: Any = None,
    patch_size: int = 16,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Deletion or insertion curves for several scores from ONE set of perturbed forwards.

    Identical to calling ``deletion_curve``/``insertion_curve`` once per score with the
    same settings (tested), at the cost of one of them.

    ``unit``, ``baseline`` (default: the settings' baseline of ``mode``) and ``patch_size``
    are those of ``deletion_curve``.

    Returns:
        ``(fractions (S,), {score: curves (B, S)})``.
    """
    if baseline is None:
        baseline = settings.deletion_baseline if mode == "deletion" else settings.insertion_baseline
    plan = perturbation_plan(
        mode,
        inputs,
        attributions,
        baselines=baseline,
        n_steps=settings.n_steps,
        max_fraction=settings.max_fraction,
        unit=unit,
        patch_size=patch_size,
        seed=settings.seed,
    )
    tgt = target.to(inputs.device)

    def reduce(out: Tensor, ex: Tensor) -> Tensor:
        t = tgt[ex.to(tgt.device)].to(out.device)
        return torch.stack([select_score(out, t, s) for s in scores], dim=-1)

    values = run_batched(
        forward_func,
        inputs.shape[0],
        len(plan.fractions),
        plan.build,
        reduce,
        None,
        settings.max_examples_per_batch,
    )
    fractions = plan.fractions.to(values.dtype)
    return fractions, {s: values[..., i].to(inputs.device) for i, s in enumerate(scores)}


def _check_evaluate_args(images: Any, targets: Any, masks: Any, chunk_size: Any) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {got}")
    b = images.shape[0]
    if targets is not None and (not isinstance(targets, Tensor) or targets.shape != (b,)):
        raise ValueError(f"targets must be a ({b},) integer tensor or None")
    if masks is not None and (
        not isinstance(masks, Tensor) or masks.shape != (b, *images.shape[-2:])
    ):
        raise ValueError(f"masks must be a ({b}, H, W) tensor matching the images, or None")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _attribute_all(clf, images, targets, methods, chunk_size, seed, show_progress):
    """Runs every method chunk by chunk (rotating order); maps, seconds and forward counts.

    The global torch RNG is seeded before every call (``seed`` + chunk index), so sampling
    methods (KernelShap, Lime) give the same maps in every run, whatever the method order.
    """
    b = images.shape[0]
    with warnings.catch_warnings():  # warm-up (lazy imports, allocator), not timed
        warnings.filterwarnings("ignore", message=".*required_grads has been set")
        for fn in methods.values():
            fn(images[:1], targets[:1])
    names = list(methods)
    maps: dict[str, list[Tensor]] = {n: [] for n in names}
    cost = {n: {"seconds": 0.0, "images": 0, "autograd": 0} for n in names}
    starts = list(range(0, b, chunk_size))
    bar = tqdm(total=len(starts) * len(names), desc="attributions", disable=not show_progress)
    for j, s in enumerate(starts):
        x, t = images[s : s + chunk_size], targets[s : s + chunk_size]
        order = names[j % len(names) :] + names[: j % len(names)]
        for name in order:
            with ForwardCounter(clf) as count, warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*required_grads has been set")
                torch.manual_seed(seed + j)
                t0 = time.perf_counter()
                attr = methods[name](x, t)
                cost[name]["seconds"] += time.perf_counter() - t0
            cost[name]["images"] += count.images
            cost[name]["autograd"] += count.autograd
            maps[name].append(attr.detach().float().sum(dim=1, keepdim=True).cpu())
            bar.update()
    bar.close()
    # chunks were attributed in the order of ``starts``, so concatenation keeps image order
    frame = pd.DataFrame(
        {
            n: {
                "seconds_per_image": c["seconds"] / b,
                "forwards_per_image": c["images"] / b,
                "autograd_forwards_per_image": c["autograd"] / b,
            }
            for n, c in cost.items()
        }
    ).T
    frame.index.name = "method"
    return {n: torch.cat(v) for n, v in maps.items()}, frame


def evaluate(
    clf: Any,
    images: Tensor,
    targets: Tensor | None = None,
    masks: Tensor | None = None,
    causal: Any = None,
    *,
    methods: Sequence[str] | None = None,
    method_settings: MethodSettings | None = None,
    metric_settings: MetricSettings | None = None,
    chunk_size: int = 16,
    model_name: str = "model",
    show_progress: bool = False,
) -> FaithfulnessResult:
    """Attributes ``images`` with every method and scores every map with every metric.

    Args:
        clf: A :class:`~captum_clip.models.ClipClassifier` (zero-shot logits).
        images: ``(B, 3, H, W)`` normalised images.
        targets: ``(B,)`` class per image; None: the predicted class.
        masks: ``(B, H, W)`` bool object masks (pointing game, mask share), or None.
        causal: Causal labels (a ``CausalLabels`` or ``B`` label strings) for the
            diagnosis agreement, or None.
        methods: Names from :data:`~captum_clip.benchmark.methods.METHODS` or registered
            names (:mod:`captum_clip.methods`; default all).
        method_settings: See :class:`~captum_clip.benchmark.methods.MethodSettings`.
        metric_settings: See :class:`MetricSettings`.
        chunk_size: Images per attribution call (methods are timed on the same chunks).
        model_name: Name of the model in the result.
        show_progress: tqdm bars.

    Returns:
        A :class:`FaithfulnessResult`.
    """
    from captum_clip.diagnosis import causal_agreement

    _check_evaluate_args(images, targets, masks, chunk_size)
    ms = method_settings or MethodSettings()
    mt = metric_settings or MetricSettings()
    names = list(METHODS) if methods is None else [ALIASES.get(n, n) for n in methods]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown methods {unknown}; known methods: {list(METHODS)}")
    if targets is None:
        with torch.no_grad():
            targets = torch.cat([clf(c).argmax(1) for c in images.split(chunk_size)])
    targets = targets.long().to(images.device)
    built, skipped = {}, {}
    for name in names:
        try:
            built[name] = build_method(name, clf, ms)
        except (ValueError, TypeError, ImportError) as err:
            skipped[name] = str(err)
    if not built:
        raise ValueError(f"no method can run on this model: {skipped}")
    maps, cost = _attribute_all(clf, images, targets, built, chunk_size, mt.seed, show_progress)
    rows, curves, agreement = [], {"deletion": {}, "insertion": {}}, {}
    b = images.shape[0]
    grid = getattr(getattr(clf, "vision", None), "grid_size", None)
    patch = images.shape[-1] // grid[1] if grid else 16
    for name in tqdm(list(maps), desc="metrics", disable=not show_progress):
        a = maps[name].to(images.device)
        if not torch.isfinite(a).all():
            skipped[name + " (non-finite values set to 0)"] = "NaN/inf in the map"
            a = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        cols: dict[str, Any] = {}
        for mode in ("deletion", "insertion"):
            fr, sc = scored_curves(mode, clf, images, a, targets, mt)
            curves[mode][name] = (fr.cpu(), sc["prob"].cpu())
            for key, val in sc.items():
                cols[f"{mode}_{key}"] = curve_auc(fr, val, mt.max_fraction).cpu()
        for vname, unit, base in mt.deletion_variants:
            fr, sc = scored_curves(
                "deletion", clf, images, a, targets, mt, ("prob",), unit, base, patch
            )
            cols[f"deletion_prob_{vname}"] = curve_auc(fr, sc["prob"], mt.max_fraction).cpu()
        cols["road"] = road(
            clf,
            images,
            a,
            target=targets,
            percentages=mt.road_percentages,
            score="prob",
            seed=mt.seed,
            max_examples_per_batch=mt.max_examples_per_batch,
        ).score.cpu()
        cols["pointing"] = torch.full((b,), float("nan"))
        cols["mask_share"] = torch.full((b,), float("nan"))
        if masks is not None:
            ok = masks.flatten(1).any(dim=1).cpu()  # empty masks: NaN
            if ok.any():
                m, am = masks[ok.to(masks.device)], a[ok.to(a.device)]
                tol = mt.pointing_tolerance
                cols["pointing"][ok] = pointing_game(am, m, tolerance=tol).cpu().float()
                cols["mask_share"][ok] = mask_share(am, m).cpu().float()
        if causal is not None and masks is not None:
            agreement[name] = causal_agreement(cols["mask_share"].numpy(), causal)
        rows.append(
            pd.DataFrame(
                {"method": name, "image": np.arange(b), "target": targets.cpu().numpy()}
                | {k: v.double().numpy() for k, v in cols.items()}
            )
        )
    causal_frame = None
    if agreement:
        causal_frame = pd.DataFrame(agreement).T
        causal_frame.index.name = "method"
    return FaithfulnessResult(
        model=model_name,
        table=pd.concat(rows, ignore_index=True),
        cost=cost,
        curves=curves,
        causal=causal_frame,
        skipped=skipped,
        n_images=b,
    )
