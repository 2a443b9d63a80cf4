"""Ranking part of ``benchmarks/cci_regions.py`` (``--rank``): CCI settings within 64
forwards per image against GradientRollout and IntegratedGradients, whole-patch deletion
and insertion onto the mean colour, many scenes per seed, the spread over seeds.

Every method explains the predicted class; deletion replaces whole ViT patches by the
mean colour (0 in normalised space) most important first, insertion reveals whole patches
onto a mean-colour image; softmax probability, ``N_STEPS`` steps, AUC = mean score over
the range. Forwards per image are counted at the classifier's entry (a masked row counts
as one forward even when it runs on half the patches: "forward equivalents" are an upper
bound).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

N_STEPS = 16
#: name -> CCI keyword arguments (all with score="prob": it ranks best in the K=7 study)
CCI_SETTINGS = {
    "CCI owen K=16 (64)": dict(estimator="owen", n_clusters=16),
    "CCI owen K=24 (64)": dict(estimator="owen", n_clusters=24),
    "CCI sampled-shapley K=16 (64)": dict(estimator="sampled_shapley", n_clusters=16),
    "CCI shapley K=6 (64)": dict(estimator="shapley", n_clusters=6),
    "CCI sufficiency K=16 (18)": dict(estimator="sufficiency", n_clusters=16),
    "CCI sufficiency K=32 (34)": dict(estimator="sufficiency", n_clusters=32),
    "CCI sufficiency K=48 (50)": dict(estimator="sufficiency", n_clusters=48),
    "CCI sufficiency K=32 pixel (34)": dict(
        estimator="sufficiency", n_clusters=32, mask_mode="pixel"
    ),
    "CCI sufficiency K=48 pixel (50)": dict(
        estimator="sufficiency", n_clusters=48, mask_mode="pixel"
    ),
    "CCI sufficiency K=62 pixel (64)": dict(
        estimator="sufficiency", n_clusters=62, mask_mode="pixel"
    ),
    "CCI() default: sufficiency K=32, logit (34)": dict(score="logit"),
    "CCI occlusion K=7 (8, the paper)": dict(estimator="occlusion", n_clusters=7, score="logit"),
}
#: settings whose spread over ``random_state`` (k-means restarts, sampled orders) is measured
VARIANCE_SETTINGS = {
    k: CCI_SETTINGS[k]
    for k in (
        "CCI sufficiency K=32 (34)", "CCI owen K=16 (64)", "CCI sampled-shapley K=16 (64)",
        "CCI occlusion K=7 (8, the paper)",
    )
}  # fmt: skip
RANDOM_STATES = (0, 1, 2, 3, 4)
PEERS = ("GradientRollout", "IntegratedGradients")


def _methods(clf, settings=None, random_state: int = 0, peers=PEERS):
    from captum_clip.attr import CCI
    from captum_clip.benchmark.methods import build_method

    out = {}
    for name, kw in (CCI_SETTINGS if settings is None else settings).items():
        if kw.get("n_clusters", 0) > clf.vision.n_patches:
            continue  # a K finer than the grid (the p16 variants have 16 patches)
        kw = {"score": "prob", "random_state": random_state, **kw}
        method = CCI(clf, **kw)
        out[name] = lambda x, t, m=method: m.attribute(x, target=t, internal_batch_size=512)
    for name in peers:
        out[name] = build_method(name, clf)
    return out


def run_variance(variant: str, seed: int, n: int, classifier) -> pd.DataFrame:
    """The spread over ``random_state`` on one scene draw: one row per setting and state."""
    tables = [
        run_rank(
            variant,
            seed,
            n,
            classifier,
            methods=lambda clf, state=state: _methods(clf, VARIANCE_SETTINGS, state, peers=()),
        ).assign(random_state=state)
        for state in RANDOM_STATES
    ]
    return pd.concat(tables, ignore_index=True)


def variance_report(table: pd.DataFrame) -> list[str]:
    """Markdown: per setting, the sd over random states of the mean AUCs, and the mean
    per-image sd (how much one image's score moves with the seed)."""
    lines = [
        f"## Spread over `random_state` ({len(RANDOM_STATES)} states, one scene draw)",
        "",
        "`random_state` seeds CCI's k-means (all estimators) and the sampled orders "
        "(`owen`, `sampled_shapley`). sd of the 96-scene mean over the states, and the "
        "per-image sd over the states averaged over the images.",
        "",
        "| model | method | deletion mean (sd over states) | per-image sd | insertion mean "
        "(sd over states) | per-image sd |",
        "| --- | --- | --- | ---: | --- | ---: |",
    ]
    for (variant, method), part in table.groupby(["variant", "method"], sort=False):
        cells = []
        for col in ("deletion", "insertion"):
            means = part[col]
            per_image = np.stack(part[f"{col}_per_image"].to_list()).std(0, ddof=1).mean()
            cells += [f"{means.mean():.3f} ({means.std(ddof=1):.4f})", f"{per_image:.3f}"]
        lines.append(f"| {variant} | {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def run_rank(variant: str, seed: int, n: int, classifier, methods=_methods) -> pd.DataFrame:
    """One row per method: deletion / insertion AUC (mean over ``n`` scenes, and per image),
    cost. ``methods(clf)`` gives ``{name: fn(x, target) -> attributions}``."""
    from captum_clip.benchmark.methods import ForwardCounter
    from captum_clip.metrics import deletion_auc, insertion_auc
    from captum_clip.testbed import shapes

    clf = classifier(variant)
    scenes = shapes.generate_scenes(n, seed=seed, rho=0.5, size=clf.image_size[0])
    x = shapes.normalize(scenes.images)
    with torch.no_grad():
        target = clf(x).argmax(1)
    patch = clf.image_size[0] // clf.vision.grid_size[0]
    kw = dict(
        target=target, unit="patch", patch_size=patch, baselines="zeros", score="prob",
        n_steps=N_STEPS, max_examples_per_batch=512,
    )  # fmt: skip
    rows = []
    for name, fn in methods(clf).items():
        t0 = time.perf_counter()
        with ForwardCounter(clf) as counter:
            attr = fn(x, target)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            dele = deletion_auc(clf, x, attr.detach(), **kw)
            ins = insertion_auc(clf, x, attr.detach(), **kw)
        rows.append(
            {
                "variant": variant, "seed": seed, "n": n, "method": name,
                "deletion": float(dele.mean()), "insertion": float(ins.mean()),
                "deletion_per_image": dele.cpu().numpy(), "insertion_per_image": ins.cpu().numpy(),
                "forwards_per_image": counter.images / n, "seconds_per_image": seconds / n,
            }
        )  # fmt: skip
        print(
            variant, seed, {k: v for k, v in rows[-1].items() if "per_image" not in k}, flush=True
        )
    return pd.DataFrame(rows)


def method_table(part: pd.DataFrame) -> list[str]:
    """Markdown table of one model: per method mean ± sd over seeds, forwards, seconds."""
    lines = ["| method | deletion ↓ | insertion ↑ | fwd / image | s / image |"]
    lines += ["| --- | ---: | ---: | ---: | ---: |"]
    for method, r in part.groupby("method", sort=False):
        cells = [f"{r[c].mean():.3f} ± {r[c].std(ddof=1):.3f}" for c in ("deletion", "insertion")]
        cells += [f"{r['forwards_per_image'].mean():.1f}", f"{r['seconds_per_image'].mean():.4f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def rank_report(table: pd.DataFrame) -> list[str]:
    """Markdown: mean ± sd over seeds per model, ranks, and the margins to the peers."""
    seeds = sorted(table["seed"].unique())
    lines = [
        f"## Ranking within 64 forwards per image (seeds {', '.join(map(str, seeds))})",
        "",
        "Whole-patch deletion (↓) and insertion onto the mean colour (↑), softmax probability "
        f"of the predicted class, {N_STEPS} steps. Cells: mean over the seeds' means ± sd "
        "across seeds. CCI rows use `score='prob'` except the paper's; masked rows run on "
        "their kept patches (`keep_patches`), so their wall clock is below the count.",
        "",
    ]
    for variant, part in table.groupby("variant", sort=False):
        n = int(part["n"].iloc[0])
        lines += [f"### testbed:{variant} ({n} scenes per seed)", ""]
        if len(part["method"].unique()) < len(CCI_SETTINGS) + len(PEERS):
            lines += [
                "Settings with more regions than the grid's patches are left out; the "
                "default's K is capped at the patches (see the forwards column).",
                "",
            ]
        lines += method_table(part)
        for col, lower in (("deletion", True), ("insertion", False)):
            piv = part.pivot(index="seed", columns="method", values=col)
            best = piv.mean().sort_values(ascending=lower).index[0]
            sign = -1 if lower else 1
            margins = []
            for peer in [m for m in piv.columns if m != best]:
                d = sign * (piv[best] - piv[peer])  # > 0: best is better, per seed
                sd = float(np.sqrt(piv[best].var(ddof=1) + piv[peer].var(ddof=1)))
                wins = int((d > 0).sum())
                inside = "inside" if d.mean() <= sd else "outside"
                margins.append(
                    f"{peer} {d.mean():+.3f} (paired sd {d.std(ddof=1):.3f}, wins {wins}/"
                    f"{len(d)} seeds, {inside} the seed spread {sd:.3f})"
                )
            lines.append(f"* {col}: first **{best}**; margin over " + "; ".join(margins) + ".")
        lines.append("")
    return lines
