"""What CCI returns besides the map: :class:`CCIResult`, the regions behind one CCI map."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CCIResult", "region_maps"]


@dataclass
class CCIResult:
    """The regions behind one CCI map (one K).

    Attributes:
        labels: ``(B, h, w)`` long cluster index per patch (consecutive from 0).
        scores: ``(B, K)`` target score with cluster ``k`` hidden, NaN where an image
            has fewer than ``K`` (non-empty) clusters.
        weights: ``(B, K)`` normalised weights ``w_k`` (NaN padded like ``scores``).
        base_score: ``(B,)`` target score of the unmasked images.
        n_clusters: The requested K (with user ``regions``: the largest K of the batch).
        values: ``(B, K)`` the estimator's region values (NaN padded); for
            ``"occlusion"`` the drops :attr:`deltas`. ``weights`` normalise them.
        estimator: The region estimator (see :class:`CCI`). With other estimators than
            ``"occlusion"``, ``scores`` holds the leave-one-out score only where the
            estimator evaluated that coalition (NaN elsewhere).
    """

    labels: Tensor
    scores: Tensor
    weights: Tensor
    base_score: Tensor
    n_clusters: int
    values: Tensor | None = None
    estimator: str = "occlusion"

    @property
    def deltas(self) -> Tensor:
        """``(B, K)`` score drops ``Δs_k = s - s_k`` (NaN padded)."""
        return self.base_score[:, None] - self.scores

    def patch_map(self) -> Tensor:
        """``(B, h, w)`` weight of each patch's cluster."""
        w = torch.nan_to_num(self.weights, nan=0.0)
        b = self.labels.shape[0]
        return w.gather(1, self.labels.reshape(b, -1)).reshape(self.labels.shape)

    def top_cluster(self) -> Tensor:
        """``(B, h, w)`` bool mask of each image's highest-weighted cluster."""
        top = torch.nan_to_num(self.weights, nan=-float("inf")).argmax(1)
        return self.labels == top[:, None, None]


def region_maps(results: list[CCIResult], size: tuple[int, int], upsample: str) -> Tensor:
    """``(B, 1, H, W)`` CCI map: each result's patch map (the weight of every patch's
    region) upsampled to the image ``size``, averaged over the results (one per K)."""
    kw = {} if upsample == "nearest" else {"align_corners": False}
    maps = [
        F.interpolate(res.patch_map()[:, None].float(), size=tuple(size), mode=upsample, **kw)
        for res in results
    ]
    return sum(maps[1:], maps[0]) / len(maps)
