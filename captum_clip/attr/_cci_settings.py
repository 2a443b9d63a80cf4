"""CCI's settings: the accepted choices and the default number of regions per estimator."""

from __future__ import annotations

from typing import Any

from captum_clip.attr import _regions
from captum_clip.models.base import VisionTower

__all__ = [
    "DEFAULT_ESTIMATOR", "DEFAULT_K", "DEFAULT_N_CLUSTERS", "MASK_MODES", "NORMALIZATIONS",
    "SCORES", "UPSAMPLE_MODES", "capped_k", "default_n_clusters",
]  # fmt: skip

MASK_MODES = ("auto", "attention", "pixel")
NORMALIZATIONS = ("abs", "sum", None)
UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")
SCORES = ("logit", "prob")
DEFAULT_N_CLUSTERS = 7
"""K of :meth:`CCI.default_for` (the paper's CCI: ``diagnose(method="cci")``, COVAR with
``diagnosis="cci"``) and of the exact estimators and ``"occlusion"``."""
DEFAULT_ESTIMATOR = "sufficiency"
"""``CCI()``'s estimator: ahead of GradientRollout and integrated gradients on whole-patch
deletion and of the paper's occlusion on deletion and insertion in
``benchmarks/results/cci_regions_rank.md`` (``docs/cci.md``)."""
#: Default K per estimator (others: :data:`DEFAULT_N_CLUSTERS`); capped at the grid's cells.
DEFAULT_K = {"sufficiency": 32, "sampled_shapley": 16, "owen": 16}


def default_n_clusters(estimator: str, budget: Any) -> int:
    """K when ``n_clusters`` is not given (budgeted estimators without a budget: exact, 7)."""
    if estimator in _regions.BUDGETED and budget is None:
        return DEFAULT_N_CLUSTERS
    return DEFAULT_K.get(estimator, DEFAULT_N_CLUSTERS)


def capped_k(vision: VisionTower, k: int) -> int:
    """``k`` capped at the cells of the tower's grid (unchanged where the grid is unknown
    until images come: a named grid layer of a tower without an image size)."""
    try:
        return min(k, vision.n_patches)
    except ValueError:
        return k
