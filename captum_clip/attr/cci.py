"""Cluster-based Concept Importance (CCI): hide whole regions of patch tokens, not pixels.

The vision tower's own patch features (the tokens of block ``layer`` on a ViT, the feature
map of stage ``layer`` on a convolutional tower, or the output of a module the user names
with ``grid_layer=``) are clustered with k-means in cosine geometry (batched over the
images, on their device: :mod:`._kmeans`); every cluster is then hidden from the model --
from every attention layer (``mask_mode="attention"``, ViTs; no pixel changes) or by
replacing its pixels with a baseline (``mask_mode="pixel"``, any model; a grid cell covers
its share of the image, nearest-neighbour) -- and the drop of the target score ``Δs_k = s - s_k`` becomes the weight of the
region. All masked variants of a batch run as one (chunked) batched forward
(:mod:`._region_scores`). See ``docs/cci.md``.

Example:
    >>> clf = ClipClassifier(model, tokenizer, ["cat", "dog"])
    >>> attr = CCI(clf).attribute(images, target=0)          # (B, 3, H, W)
    >>> attr, res = CCI(clf).attribute(images, target=0, return_clusters=True)
    >>> CCI(clf, grid_layer=model.visual.trunk.stages[-1])   # any tower: name its grid
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from captum._utils.common import _format_additional_forward_args
from captum.attr import PerturbationAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_clip._hooks import HookManager, preserve_model_state
from captum_clip._validate import check_batch_size, check_choice, check_images, check_target
from captum_clip.attr import _cci_settings as settings
from captum_clip.attr import _regions
from captum_clip.attr._cci_result import CCIResult, region_maps
from captum_clip.attr._kmeans import check_clusterer, cluster_grid
from captum_clip.attr._region_games import game_values, leaf_groups, user_partition
from captum_clip.attr._region_scores import one_region_each, variant_scores
from captum_clip.attr._regions import check_n_clusters, normalize_values
from captum_clip.metrics import expand_args, make_baseline
from captum_clip.models.adapter import resolve_tower
from captum_clip.models.conv import grid_tower

resolve_vision = resolve_tower  # former name; see captum_clip.models.resolve_tower

__all__ = ["CCI", "CCIResult", "ClusterConceptImportance", "resolve_vision"]


class CCI(PerturbationAttribution):
    """Cluster-based Concept Importance (Captum ``PerturbationAttribution``).

    Args:
        forward_func: ``ClipClassifier`` / ``ClipSimilarity`` or any callable
            ``images -> (B, n_outputs)`` (then pass ``vision_model``).
        vision_model: See :func:`captum_clip.models.resolve_tower`; needed when
            ``forward_func`` has no ``.vision``. The patch features are taken from this tower.
        layer: Block (ViT) or stage (convolutional tower) whose output is clustered
            (default the last).
        n_clusters: K, or a sequence of K (multi-K ensemble: the maps are averaged).
            Default (capped at the cells of the tower's grid): 32 for ``"sufficiency"``,
            16 for the budgeted estimators (``"owen"``, ``"sampled_shapley"``) with a
            budget, 7 otherwise (the paper's K).
        mask_mode: ``"auto"`` (default: ``"attention"`` on a ViT tower, ``"pixel"`` on any
            other tower or with ``grid_layer``), ``"attention"`` (hide patch keys in every
            attention layer; ViTs) or ``"pixel"`` (replace the cluster's pixels by
            ``baselines``; any tower).
        normalize: ``"abs"`` (``Δ/Σ|Δ|``, default), ``"sum"`` (published ``Δ/ΣΔ``) or
            None (raw ``Δ``). A zero denominator gives zero weights.
        upsample: Patch map → pixels: ``"nearest"`` (exact region edges), ``"bilinear"``
            or ``"bicubic"``.
        clusterer: Optional scikit-learn style estimator with ``fit_predict`` (cloned per
            image; its ``n_clusters`` is set to K). Default: the batched torch k-means
            (:func:`captum_clip.attr._kmeans.batched_kmeans`, 4 restarts).
        random_state: Seed of the default k-means and of the sampled permutations.
        score: ``"logit"`` (the raw output at ``target``) or ``"prob"`` (softmax first).
        estimator: How a region's value is estimated from coalitions of hidden regions
            (``docs/cci.md``): ``"sufficiency"`` (default: score with only k visible
            minus score with nothing visible; K+2 forwards per image, each showing one
            region, so on attention towers about one forward in all), ``"occlusion"``
            (the paper: drop when region k alone is hidden; K+1), ``"shapley"`` / ``"banzhaf"``
            (exact, all 2^K coalitions, K <= 10) or ``"sampled_shapley"`` (antithetic
            permutation sampling within ``budget``) or ``"owen"`` (Owen values of a
            two-level cluster tree: the K regions grouped again by k-means into
            ``n_groups``; sampled within ``budget``). All rows of all images run as one
            batched masked forward (on attention towers each row on its kept patches).
        budget: ``"sampled_shapley"`` / ``"owen"`` only: masked forwards per image (>= K;
            default 63, i.e. 64 forwards per image with the unmasked one; ``"owen"`` with
            an explicit None is exact, K <= 10).
        n_groups: ``"owen"`` only: groups of the tree's first level (default
            ``round(sqrt(K))``).
        grid_layer: A module of the vision tower whose output is the ``(B, C, h, w)``
            feature map to cluster (pixel mode), as Captum's ``LayerGradCam`` takes a
            layer; needed for towers that are neither ViTs nor known convolutional towers
            (hybrids such as ViTamin, a user's own encoder). ``layer`` must then be -1.
        channels_last: ``grid_layer`` returns ``(B, h, w, C)``.
    """

    def __init__(
        self,
        forward_func: Callable,
        vision_model: Any = None,
        layer: int = -1,
        n_clusters: int | Sequence[int] | None = None,
        mask_mode: str = "auto",
        normalize: str | None = "abs",
        upsample: str = "nearest",
        clusterer: Any = None,
        random_state: int = 0,
        score: str = "logit",
        estimator: str = settings.DEFAULT_ESTIMATOR,
        budget: int | None | str = "default",
        grid_layer: nn.Module | None = None,
        channels_last: bool = False,
        n_groups: int | None = None,
    ) -> None:
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        super().__init__(forward_func)
        check_choice(
            mask_mode=(mask_mode, settings.MASK_MODES),
            normalize=(normalize, settings.NORMALIZATIONS),
            upsample=(upsample, settings.UPSAMPLE_MODES),
            score=(score, settings.SCORES),
        )
        if grid_layer is not None and mask_mode == "attention":
            raise ValueError(
                "grid_layer clusters a module's feature map and hides clusters by their "
                "pixels; mask_mode='attention' hides the ViT's own tokens -- use "
                "mask_mode='pixel' (or 'auto') with grid_layer, or drop grid_layer"
            )
        tower = resolve_tower(forward_func, vision_model)
        self.vision = grid_tower(tower, grid_layer, channels_last)
        if mask_mode == "auto":
            mask_mode = "attention" if self.vision.is_vit else "pixel"
        self.layer = layer
        self.vision.block_index(layer)  # validates
        if n_clusters is None:  # never more regions than the grid has cells
            n_clusters = settings.capped_k(
                self.vision, settings.default_n_clusters(estimator, budget)
            )
        self.n_clusters = check_n_clusters(n_clusters)
        if mask_mode == "attention" and not self.vision.is_vit:
            raise ValueError(
                f"mask_mode='attention' needs a ViT vision tower; {type(self.vision.module).__name__}"
                " is not one -- use mask_mode='pixel' (the default mask_mode='auto' picks it)"
            )
        if self.vision.is_vit and max(self.n_clusters) > self.vision.n_patches:
            raise ValueError(
                f"n_clusters={max(self.n_clusters)} is larger than the {self.vision.n_patches} "
                "patches of this vision tower"
            )
        check_clusterer(clusterer)
        self.mask_mode = mask_mode
        self.normalize = normalize
        self.upsample = upsample
        self.clusterer = clusterer
        self.random_state = random_state
        self.score = score
        budget = _regions.check_settings(estimator, self.n_clusters, budget, n_groups, random_state)
        self.estimator = estimator
        self.budget = budget
        self.n_groups = n_groups

    @classmethod
    def default_for(
        cls, forward_func: Callable, n_clusters: int = settings.DEFAULT_N_CLUSTERS, **kwargs: Any
    ) -> CCI:
        """The paper's CCI of a classifier: leave-one-out (``estimator="occlusion"``) over
        K=7 regions -- what ``diagnose(method="cci")``, COVAR with ``diagnosis="cci"`` and
        the CLI's ``--diagnosis cci`` use. (``CCI(forward_func)`` itself defaults to
        ``estimator="sufficiency"``, K=32.)

        K is ``n_clusters`` capped at the number of cells of the tower's feature grid
        (patches of a ViT, cells of a convolutional tower's last map); the masking is
        ``mask_mode="auto"``: ``"attention"`` on a ViT tower, ``"pixel"`` otherwise.

        Args:
            forward_func: A ``ClipClassifier`` / ``ClipSimilarity`` (or any callable, with
                ``vision_model=`` in ``kwargs``).
            n_clusters: The requested K.
            **kwargs: Other arguments of :class:`CCI` (they override the defaults).
        """
        tower = resolve_tower(forward_func, kwargs.get("vision_model"))
        vision = grid_tower(tower, kwargs.get("grid_layer"), kwargs.get("channels_last", False))
        k = settings.capped_k(vision, check_n_clusters(n_clusters)[0])
        kwargs.setdefault("estimator", "occlusion")
        return cls(forward_func, n_clusters=k, **kwargs)

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def has_convergence_delta(self) -> bool:
        return False

    # ------------------------------------------------------------------ pieces
    def _modules(self) -> list[nn.Module]:
        mods = [self.vision.module]
        if isinstance(self.forward_func, nn.Module):
            mods.append(self.forward_func)
        return mods

    def _base_pass(self, inputs: Tensor, args: tuple) -> tuple[Tensor, Tensor]:
        """Unmasked output and ``(B, h, w, d)`` features from one forward (hooked block)."""
        captured: list[Any] = []
        block = self.vision.blocks[self.vision.block_index(self.layer)]
        with HookManager() as hooks:
            hooks.forward(block, lambda m, a, o: captured.append(o))
            out = self.forward_func(inputs, *args)
        feats = self.vision.grid_tokens(captured[0], len(inputs)) if len(captured) == 1 else None
        if feats is None:  # forward_func does not run the tower once on these images
            feats = self.vision.patch_features(inputs, self.layer)
        return out, feats

    def _targets(self, target: Any, out: Tensor, batch: int) -> Tensor | None:
        """Per-example target index ``(B,)``, or None for single-output forward functions."""
        if not isinstance(out, Tensor) or out.ndim not in (1, 2) or out.shape[0] != batch:
            raise ValueError(
                f"forward_func must return (B,) or (B, n_outputs) with B={batch}, got "
                f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
            )
        if self.score == "prob" and (out.ndim == 1 or out.shape[1] == 1):
            raise ValueError("score='prob' needs a forward_func with several outputs")
        if out.ndim == 1:
            check_target(target, batch, 1)
            return None
        return check_target(target, batch, out.shape[1]).to(out.device)

    def _prepare(self, out: Tensor) -> Tensor:
        """Forward output → what the target indexes (softmax for ``score='prob'``)."""
        return out.float().softmax(-1) if self.score == "prob" else out.float()

    def _select(self, out: Tensor, tgt: Tensor | None) -> Tensor:
        out = self._prepare(out)
        if tgt is None:
            return out.reshape(out.shape[0])
        return out.gather(1, tgt[:, None].to(out.device))[:, 0]

    def _cluster(self, feats: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """``(B, P)`` consecutive cluster labels and ``(B,)`` clusters found per image."""
        several = len(self.n_clusters) > 1
        return cluster_grid(feats, k, self.clusterer, self.random_state, several)

    def _scores(
        self, inputs, args, tgt, clusters, grid, baselines, ibs, show_progress
    ) -> list[Tensor]:
        """``(B, K_j)`` scores with each cluster hidden, every K in one chunked batch."""
        masks = [one_region_each(labels, k, n) for (labels, n), k in zip(clusters, self.n_clusters)]
        hidden = torch.cat([m[0] for m in masks], 1)
        valid = torch.cat([m[1] for m in masks], 1)
        s = self._variant_scores(
            inputs, args, tgt, hidden, valid, grid, baselines, ibs, show_progress, drop=False
        )  # the paper's leave-one-out: masked, one batched forward
        return list(s.split(list(self.n_clusters), 1))

    def _variant_scores(
        self,
        inputs: Tensor,
        args: tuple,
        tgt: Tensor | None,
        hidden: Tensor,
        valid: Tensor,
        grid: tuple[int, int],
        baselines: Any = None,
        ibs: int | None = None,
        show_progress: bool = False,
        drop: bool | None = None,
    ) -> Tensor:
        """``(B, V)`` target scores of masked variants (NaN where not ``valid``).

        Args:
            hidden: ``(B, V, P)`` bool patch masks (see
                :func:`~captum_clip.attr._region_scores.region_hidden` for region sets).
            valid: ``(B, V)`` bool, the variants to run.
            grid: ``(h, w)`` patch grid of ``hidden`` (pixel mode).
            drop: Attention mode: run rows on their kept patches (default: where the
                tower can, :func:`~captum_clip.attr._region_scores.variant_scores`).
            Others: as in :meth:`attribute`; ``tgt`` from :meth:`_targets`.
        """
        b = inputs.shape[0]

        def score(images: Tensor, src: Tensor) -> Tensor:
            out = self.forward_func(images, *expand_args(args, src, b))
            return self._select(out, None if tgt is None else tgt[src])

        if self.mask_mode == "attention":
            kw: dict[str, Any] = {"vision": self.vision, "drop": drop}
        else:
            fill = make_baseline(0.0 if baselines is None else baselines, inputs)
            kw = {"fill": fill, "grid": grid}
        return variant_scores(
            score,
            inputs,
            hidden,
            valid,
            internal_batch_size=ibs,
            show_progress=show_progress,
            **kw,
        )

    # ------------------------------------------------------------------ API
    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor],
        target: Any = None,
        additional_forward_args: Any = None,
        baselines: str | float | Tensor | None = None,
        internal_batch_size: int | None = None,
        show_progress: bool = False,
        return_clusters: bool = False,
        regions: Tensor | None = None,
    ) -> Any:
        """CCI attributions with the inputs' shape.

        Args:
            inputs: ``(B, 3, H, W)`` normalised images (or a 1-tuple of them).
            target: See :mod:`captum_clip._validate` (an int, or one per example).
            additional_forward_args: Extra arguments of ``forward_func`` (tensors with a
                leading batch dimension are repeated for each masked variant).
            baselines: Pixel mode only: replacement of the hidden pixels -- 0 (default, the
                dataset mean in normalised space), a number, a tensor broadcastable to
                ``inputs``, ``"blur"``, ``"black"`` or ``"noise"``.
            internal_batch_size: Rows per forward pass (None: all variants at once).
            show_progress: tqdm bar over the forward chunks.
            return_clusters: Also return a :class:`CCIResult` (a tuple of them, one per
                K, for a multi-K ensemble).
            regions: Regions given by the user instead of k-means (``n_clusters`` and
                ``clusterer`` are then unused): ``(B, H, W)`` or shared ``(H, W)``
                integer labels (superpixels, :func:`grid_regions`), a ``(B, H, W)`` bool
                mask (object vs rest) or a ``(B, R, H, W)`` stack of disjoint bool masks
                (SAM). Attention mode hides them at patch resolution (each patch joins
                the region covering most of its pixels; ``docs/cci.md``), pixel mode
                exactly.

        Returns:
            Attributions ``(B, 3, H, W)`` (a 1-tuple if ``inputs`` was one), and with
            ``return_clusters`` the pair ``(attributions, result)``.
        """
        is_tuple = isinstance(inputs, tuple)
        if is_tuple:
            if len(inputs) != 1:
                raise ValueError(f"CCI takes one image tensor, got a tuple of {len(inputs)}")
            inputs = inputs[0]
        size = self.vision.image_size if self.vision.is_vit else None
        given_dtype = inputs.dtype if isinstance(inputs, torch.Tensor) else None
        inputs = check_images(inputs, size, "inputs", dtype=self.vision.dtype)
        check_batch_size(internal_batch_size)
        if baselines is not None and self.mask_mode == "attention":
            raise ValueError("baselines are only used with mask_mode='pixel'")
        args = _format_additional_forward_args(additional_forward_args) or ()
        with torch.no_grad(), preserve_model_state(*self._modules()):
            out, feats = self._base_pass(inputs, args)
            tgt = self._targets(target, out, inputs.shape[0])
            base = self._select(out, tgt)
            grid = tuple(feats.shape[1:3])
            ks = self.n_clusters
            if regions is not None:  # pixel mode: at pixel resolution, exactly as given
                pixels = self.mask_mode == "pixel"
                grid = tuple(inputs.shape[-2:]) if pixels else grid
                clusters = [user_partition(regions, inputs, None if pixels else grid)]
                ks = (int(clusters[0][1].max()),)
            else:
                clusters = [self._cluster(feats, k) for k in self.n_clusters]
            groups = None
            if self.estimator == "owen" and (regions is None or self.mask_mode == "attention"):
                flat = feats.reshape(feats.shape[0], -1, feats.shape[-1])
                groups = [
                    leaf_groups(flat, lab, n, self.n_groups or round(k**0.5), self.random_state)
                    for (lab, n), k in zip(clusters, ks)
                ]
            if self.estimator == "occlusion" and regions is None:
                scores = self._scores(
                    inputs, args, tgt, clusters, grid, baselines, internal_batch_size,
                    show_progress,
                )  # fmt: skip
                values = [base[:, None] - s for s in scores]
            else:
                scores, values = game_values(
                    lambda hidden, valid: self._variant_scores(
                        inputs, args, tgt, hidden, valid, grid, baselines,
                        internal_batch_size, show_progress,
                    ),
                    base, clusters, ks, self.estimator, self.budget, self.random_state, groups,
                )  # fmt: skip
        results = [
            CCIResult(labels.reshape(-1, *grid), s, normalize_values(v, self.normalize), base, k,
                      v, self.estimator)
            for (labels, _), s, v, k in zip(clusters, scores, values, ks)
        ]  # fmt: skip
        maps = region_maps(results, inputs.shape[-2:], self.upsample)
        attributions = maps.expand_as(inputs).to(given_dtype).contiguous()
        if is_tuple:
            attributions = (attributions,)
        if not return_clusters:
            return attributions
        return attributions, (results[0] if len(results) == 1 else tuple(results))


ClusterConceptImportance = CCI
