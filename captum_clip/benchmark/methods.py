"""The attribution methods of the faithfulness benchmark, and a forward-pass counter.

Every method is built from a :class:`~captum_clip.models.ClipClassifier` (or
``ClipSimilarity``) into a plain callable ``(images, target) -> attributions (B, 3, H, W)``
so the harness can time, count and score all of them alike. Methods that need a ViT raise
``ValueError`` when built on another tower; the harness records them as skipped.

Settings that change cost or quality are fields of :class:`MethodSettings` and are written
at the top of every results file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from captum_clip._hooks import HookManager, preserve_model_state

__all__ = [
    "ALIASES",
    "METHODS",
    "ForwardCounter",
    "MethodSettings",
    "build_method",
    "slic_superpixels",
]

AttributeFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MethodSettings:
    """Cost/quality knobs of the benchmarked methods.

    Attributes:
        cci_k: K of single-K CCI.
        cci_multi_k: The Ks of the multi-K CCI ensemble.
        cci_sampled_k: K of CCI with the permutation-sampling Shapley estimator.
        cci_budget: Masked forwards per image of that estimator.
        ig_steps: Integrated Gradients steps (Riemann trapezoid, zero = mean-colour baseline).
        superpixels: Target number of SLIC segments (FeatureAblation, KernelShap, Lime).
        shap_samples: Perturbed samples per image of KernelShap and Lime.
        batch_size: Rows per forward inside methods that batch perturbations.
        cross_k: Regions (k-means clusters) of the cross-modal region x word games.
        cross_budget: Sampled coalitions per side of the FIxLIP-style weighted Banzhaf game.
    """

    cci_k: int = 7
    cci_multi_k: tuple[int, ...] = (3, 5, 7, 9)
    cci_sampled_k: int = 16
    cci_budget: int = 127
    ig_steps: int = 16
    superpixels: int = 24
    shap_samples: int = 64
    batch_size: int = 64
    cross_k: int = 7
    cross_budget: int = 32


def slic_superpixels(images: Tensor, n_segments: int = 24, compactness: float = 10.0) -> Tensor:
    """SLIC superpixels of normalised images as a Captum ``feature_mask`` ``(B, 1, H, W)``.

    Each image is min-max rescaled to ``[0, 1]`` (so any normalisation works) before
    ``skimage.segmentation.slic``; labels start at 0 and are consecutive per image. When SLIC
    returns fewer than ``max(2, n_segments // 4)`` segments (noise or flat images, where
    its connectivity step merges everything), a regular grid of about ``n_segments`` cells
    is used for that image instead.
    """
    from skimage.segmentation import slic

    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {got}")
    x = images.detach().float().cpu()
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    x = ((x - lo) / (hi - lo).clamp_min(1e-8)).permute(0, 2, 3, 1).numpy().astype(np.float64)
    h, w = x.shape[1:3]
    side = max(1, round(n_segments**0.5))
    rows = np.minimum(np.arange(h) * side // h, side - 1)
    cols = np.minimum(np.arange(w) * side // w, side - 1)
    grid = rows[:, None] * side + cols[None, :]
    masks = []
    for img in x:
        seg = slic(img, n_segments=n_segments, compactness=compactness, start_label=0)
        if len(np.unique(seg)) < max(2, n_segments // 4):
            seg = grid
        masks.append(np.unique(seg, return_inverse=True)[1].reshape(seg.shape))
    return torch.from_numpy(np.stack(masks)).long()[:, None].to(images.device)


def _entry_module(clf: Any) -> nn.Module:
    """The module every image passes first in the vision tower (its patch embedding)."""
    module = clf.vision.module
    for path in ("conv1", "embeddings.patch_embedding"):
        sub = module
        for part in path.split("."):
            sub = getattr(sub, part, None)
        if isinstance(sub, nn.Module):
            return sub
    return module


class ForwardCounter:
    """Counts images entering a classifier's vision tower (a pre-hook on its patch embedding).

    Every forward route of every method -- ``forward_func`` calls, direct tower calls
    (MaskCLIP, CCI's feature pass) and outside libraries -- passes the patch embedding, so
    ``images`` is the number of image forward passes. ``autograd`` counts those that ran
    with gradient recording on (the methods that backpropagate).

    Example:
        >>> with ForwardCounter(clf) as count:
        ...     clf(images)
        >>> count.images
    """

    def __init__(self, clf: Any) -> None:
        self.module = _entry_module(clf)
        self.images = 0
        self.autograd = 0
        self.calls = 0
        self._hooks: HookManager | None = None

    def _pre(self, module: nn.Module, args: tuple) -> None:
        n = int(args[0].shape[0]) if args and isinstance(args[0], Tensor) else 0
        self.calls += 1
        self.images += n
        if torch.is_grad_enabled():
            self.autograd += n

    def __enter__(self) -> ForwardCounter:
        self._hooks = HookManager()
        self._hooks.__enter__()
        self._hooks.forward_pre(self.module, self._pre)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hooks is not None:
            self._hooks.__exit__(*exc)
            self._hooks = None


# ---------------------------------------------------------------- builders
def _cci(k: Any) -> Callable[[Any, MethodSettings], AttributeFn]:
    def build(clf: Any, s: MethodSettings) -> AttributeFn:
        from captum_clip.attr.cci import CCI

        vit = clf.vision.is_vit
        ks = (s.cci_k,) if k == "single" else tuple(s.cci_multi_k)
        method = CCI(  # the paper's leave-one-out ("CCI" in every table is the paper's)
            clf, n_clusters=ks if len(ks) > 1 else ks[0], estimator="occlusion",
            mask_mode="attention" if vit else "pixel",
        )  # fmt: skip
        return lambda x, t: method.attribute(x, target=t, internal_batch_size=s.batch_size)

    return build


def _cci_estimator(
    estimator: str, score: str = "logit"
) -> Callable[[Any, MethodSettings], AttributeFn]:
    """Single-K CCI with another region estimator (``docs/cci.md``)."""

    def build(clf: Any, s: MethodSettings) -> AttributeFn:
        from captum_clip.attr.cci import CCI

        sampled = estimator == "sampled_shapley"
        method = CCI(
            clf,
            n_clusters=s.cci_sampled_k if sampled else s.cci_k,
            mask_mode="attention" if clf.vision.is_vit else "pixel",
            estimator=estimator,
            budget=s.cci_budget if sampled else None,
            score=score,
        )
        return lambda x, t: method.attribute(x, target=t, internal_batch_size=s.batch_size)

    return build


def _registered(name: str) -> Callable[[Any, MethodSettings], AttributeFn]:
    """Registered method ``name`` (:mod:`captum_clip.methods`) with its Python defaults;
    the settings give only its internal batch (and integrated gradients' steps)."""

    def build(clf: Any, s: MethodSettings) -> AttributeFn:
        from captum_clip.methods import METHODS as REGISTRY
        from captum_clip.methods import build as build_registered
        from captum_clip.methods import pixel_map

        if REGISTRY[name].output == "interactions":
            if getattr(clf, "class_names", None) is None:
                raise ValueError(f"{name} maps need a ClipClassifier (class prompts)")
            method = build_registered(name, clf)
            return lambda x, t: pixel_map(name, method, clf, x, t)
        method = build_registered(name, clf)
        kw: dict[str, Any] = {"internal_batch_size": s.batch_size}
        if name == "integrated-gradients":
            kw["n_steps"] = s.ig_steps
        return lambda x, t: method.attribute(x, target=t, **kw)

    return build


def _captum_grad(cls_name: str) -> Callable[[Any, MethodSettings], AttributeFn]:
    def build(clf: Any, s: MethodSettings) -> AttributeFn:
        import captum.attr

        method = getattr(captum.attr, cls_name)(clf)
        return lambda x, t: method.attribute(x, target=t)

    return build


def _occlusion(clf: Any, s: MethodSettings) -> AttributeFn:
    from captum.attr import Occlusion

    vision = clf.vision
    h, w = vision.grid_size
    method = Occlusion(clf)

    def run(x: Tensor, t: Tensor) -> Tensor:
        ph, pw = x.shape[-2] // h, x.shape[-1] // w  # patch-sized windows, stride = patch
        per = max(1, s.batch_size // x.shape[0])
        with torch.no_grad():
            return method.attribute(
                x,
                sliding_window_shapes=(3, ph, pw),
                strides=(3, ph, pw),
                baselines=0.0,
                target=t,
                perturbations_per_eval=per,
            )

    return run


def _superpixel_method(cls_name: str) -> Callable[[Any, MethodSettings], AttributeFn]:
    def build(clf: Any, s: MethodSettings) -> AttributeFn:
        import captum.attr

        method = getattr(captum.attr, cls_name)(clf)

        def run(x: Tensor, t: Tensor) -> Tensor:
            fmask = slic_superpixels(x, s.superpixels)
            kw: dict[str, Any] = {"baselines": 0.0, "target": t, "feature_mask": fmask}
            if cls_name == "FeatureAblation":
                kw["perturbations_per_eval"] = max(1, s.batch_size // x.shape[0])
            else:  # Lime / KernelShap: one interpretable model per image
                kw["n_samples"] = s.shap_samples
                kw["perturbations_per_eval"] = min(s.shap_samples, s.batch_size)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return method.attribute(x, **kw)

        return run

    return build


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """No parameter gradients while an outside library calls ``backward`` (restored after)."""
    with preserve_model_state(module):
        for p in module.parameters():
            p.requires_grad_(False)
        yield


def _pgc_gradcam(clf: Any, s: MethodSettings) -> AttributeFn:
    """pytorch-grad-cam's ``GradCAM`` on ``ln_1`` of the last block (its ViT recipe)."""
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as err:
        raise ImportError(
            "pytorch-grad-cam is not installed (pip install grad-cam); it is an optional "
            "peer of the benchmark"
        ) from err
    vision = clf.vision
    if not vision.is_vit or not hasattr(vision.blocks[-1], "ln_1"):
        raise ValueError("the pytorch-grad-cam peer is wired for open_clip ViTs only")
    h, w = vision.grid_size
    n_prefix = vision.n_prefix
    batch_first = vision.batch_first

    def reshape(t: Tensor) -> Tensor:
        t = t if batch_first else t.transpose(0, 1)
        return t[:, n_prefix:].transpose(1, 2).reshape(t.shape[0], -1, h, w)

    def run(x: Tensor, t: Tensor) -> Tensor:
        targets = [ClassifierOutputTarget(int(c)) for c in t.tolist()]
        with _frozen(clf), GradCAM(clf, [vision.blocks[-1].ln_1], reshape) as cam:
            # parameters are frozen, so the graph must start at the input
            cam.compute_input_gradient = True
            maps = cam(input_tensor=x, targets=targets)
        out = torch.as_tensor(maps, dtype=x.dtype, device=x.device)[:, None]
        return out.expand_as(x).contiguous()

    return run


def _cross_game(index: str) -> Callable[[Any, MethodSettings], AttributeFn]:
    """Region x word game on the target's prompt (``templates[0]``); the map paints each
    region's interactions with every word of the prompt (the result's column sums)."""

    def build(clf: Any, s: MethodSettings) -> AttributeFn:
        from captum_clip.attr.cross_games import CrossModalInteractions

        names = getattr(clf, "class_names", None)
        if names is None:
            raise ValueError("the cross-modal games need a ClipClassifier (class prompts)")
        game = CrossModalInteractions(clf.model, clf.tokenizer)
        template = clf.templates[0]
        sampled = index == "weighted_banzhaf"

        def run(x: Tensor, t: Tensor) -> Tensor:
            captions = [template.format(names[int(c)]) for c in t.tolist()]
            res = game.explain(
                x, captions, n_regions=s.cross_k, index=index,
                budget=s.cross_budget if sampled else None,
                internal_batch_size=max(s.batch_size, 2),
            )  # fmt: skip
            h, w = res.patch_grid
            cols = res.attributions[:, :, res.n_prefix :].sum(1).reshape(-1, 1, h, w)
            up = torch.nn.functional.interpolate(cols, size=tuple(x.shape[-2:]), mode="nearest")
            return up.expand(-1, x.shape[1], -1, -1).to(x.dtype).contiguous()

        return run

    return build


def _edge_map(x: Tensor, t: Tensor) -> Tensor:
    """The negative control: the image's Sobel edges, whatever the model and the target."""
    from captum_clip.metrics.trust import edge_map

    return edge_map(x, t)


def _registry_labels() -> dict[str, str]:
    from captum_clip.methods import METHODS as REGISTRY

    return {m.name: m.label for m in REGISTRY.values()}


#: name -> builder ``(classifier, MethodSettings) -> (images, target) -> attributions``:
#: the paper's CCI and its variants, every method of the registry (:mod:`captum_clip.methods`,
#: under its ``label``) and the benchmark's peers.
METHODS: dict[str, Callable[[Any, MethodSettings], AttributeFn]] = {
    "CCI": _cci("single"),
    "CCI multi-K": _cci("multi"),
    "CCI sufficiency": _cci_estimator("sufficiency"),
    "CCI banzhaf": _cci_estimator("banzhaf"),
    "CCI shapley": _cci_estimator("shapley"),
    "CCI shapley prob": _cci_estimator("shapley", "prob"),
    "CCI sampled-shapley": _cci_estimator("sampled_shapley"),
    **{label: _registered(name) for name, label in _registry_labels().items()},
    "Saliency": _captum_grad("Saliency"),
    "InputXGradient": _captum_grad("InputXGradient"),
    "Occlusion": _occlusion,
    "FeatureAblation": _superpixel_method("FeatureAblation"),
    "KernelShap": _superpixel_method("KernelShap"),
    "Lime": _superpixel_method("Lime"),
    "pgc GradCAM": _pgc_gradcam,
    "Cross-game banzhaf": _cross_game("banzhaf"),
    "Cross-game FIxLIP": _cross_game("weighted_banzhaf"),
    "edge-map control": lambda clf, s: _edge_map,
}
#: registry name -> its label above (``faithfulness --methods`` takes either).
ALIASES: dict[str, str] = _registry_labels()


def build_method(name: str, clf: Any, settings: MethodSettings | None = None) -> AttributeFn:
    """Builds benchmark method ``name`` (a key of :data:`METHODS`, or a registered name of
    :data:`ALIASES`) for ``clf``.

    Raises:
        ValueError: Unknown name, or the method does not support this vision tower.
        ImportError: An optional peer library (pytorch-grad-cam) is missing.
    """
    name = ALIASES.get(name, name)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {list(METHODS)}")
    return METHODS[name](clf, settings or MethodSettings())
