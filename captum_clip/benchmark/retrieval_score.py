"""Scoring the stored parts of a retrieval run: recall@k curves, AUCs, clean recall, cost.

Rank 0 of :func:`~captum_clip.benchmark.retrieval.evaluate_retrieval` calls
:func:`score_parts` once every rank has written its parts.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

from captum_clip.datasets import CaptionGallery
from captum_clip.metrics import curve_auc
from captum_clip.metrics.retrieval import gallery_recall
from captum_clip.storage import TensorParts

__all__ = ["DIRECTIONS", "collect_parts", "score_parts"]

DIRECTIONS = ("image", "text")


def collect_parts(name: str, n: int, batches: list[list[int]], parts: TensorParts) -> dict:
    """The method's parts merged in gallery order (every image must be there)."""
    fractions = None
    clean, emb = [None] * n, {"deletion": [None] * n, "insertion": [None] * n}
    cost = {"seconds": 0.0, "forwards": 0, "autograd": 0}
    for b in range(len(batches)):
        if not parts.exists(name, b):
            path = str(parts.path(name, b))
            raise ValueError(f"missing part {path!r}: a rank did not finish; run again")
        part = parts.read(name, b)
        fractions = part["fractions"]
        for j, i in enumerate(part["image_index"]):
            if i < n:
                clean[i] = part["clean"][j]
                for mode in emb:
                    emb[mode][i] = part[mode][j]
        for key in cost:
            cost[key] += part[key]
    if any(c is None for c in clean):
        raise ValueError(f"the parts of {name!r} in {str(parts.root)!r} do not cover the gallery")
    return dict(
        fractions=fractions, clean=torch.stack(clean),
        **{mode: torch.stack(v) for mode, v in emb.items()}, cost=cost,
    )  # fmt: skip


def score_parts(
    names: list[str], gallery: CaptionGallery, caption_embeddings: Tensor, batches: list[list[int]],
    parts: TensorParts, ks: Sequence[int], auc_range: float, device: torch.device,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Recall tables (summary, curves, clean, cost) of every method's parts over the gallery."""
    n, ks = len(gallery), list(ks)
    t2i = gallery.text_to_image.to(device)
    caps = caption_embeddings.to(device)
    summary, curves, clean_rows, cost_rows = [], [], [], []
    for m, name in enumerate(names):
        got = collect_parts(name, n, batches, parts)
        if m == 0:
            for d in DIRECTIONS:
                r = gallery_recall(got["clean"].to(device)[:, None], caps, t2i, ks, d)
                clean_rows += [dict(direction=d, k=k, recall=float(r[k][0])) for k in ks]
        c = got["cost"]
        cost_rows.append(dict(method=name, seconds_per_image=c["seconds"] / n,
                              forwards_per_image=c["forwards"] / n,
                              autograd_forwards_per_image=c["autograd"] / n))  # fmt: skip
        fr = got["fractions"].to(device)
        for mode in ("deletion", "insertion"):
            for d in DIRECTIONS:
                rec = gallery_recall(got[mode].to(device), caps, t2i, ks, d)
                for k in ks:
                    r = rec[k].double()
                    summary.append(dict(
                        method=name, mode=mode, direction=d, k=k,
                        auc=float(curve_auc(fr.double(), r, auc_range)),
                        start=float(r[0]), end=float(r[-1]),
                    ))  # fmt: skip
                    curves += [dict(method=name, mode=mode, direction=d, k=k, step=s,
                                    fraction=float(fr[s]), recall=float(r[s]))
                               for s in range(len(fr))]  # fmt: skip
    return (pd.DataFrame(summary), pd.DataFrame(curves), pd.DataFrame(clean_rows),
            pd.DataFrame(cost_rows).set_index("method"))  # fmt: skip
