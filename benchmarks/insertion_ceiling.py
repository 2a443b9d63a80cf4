"""How far can masking reach on insertion? A greedy patch search against IG.

The ``--rank`` table of ``cci_regions.py`` leaves integrated gradients first on insertion
onto the mean colour. This script asks whether any ordering found by *revealing patches*
(the operation insertion itself performs) can beat it, and at what cost: a greedy search
that, per round, reveals onto the mean-colour image each not-yet-chosen patch next to the
chosen ones and keeps the ``m`` that raise the predicted class's probability most (pixel
mode, the insertion metric's own baseline; one row per candidate). Its map ranks the
chosen patches in the order found, then the rest by their last-round gain. Also CCI
sufficiency (the default ``CCI``, and pixel mode at K=48) and IntegratedGradients, on the
same scenes. Writes ``benchmarks/results/insertion_ceiling.md``::

    python benchmarks/insertion_ceiling.py              # 48 scenes x seeds 101/202/303
    python benchmarks/insertion_ceiling.py --n 8 --seeds 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results"
N_STEPS = 16


def greedy_patch_map(clf, x: torch.Tensor, target: torch.Tensor, rounds: int, m: int):
    """``(B, 3, H, W)`` map of the greedy patch search (module doc)."""
    from captum_clip.attr import CCI
    from captum_clip.attr._region_scores import region_hidden

    cci = CCI(clf, estimator="occlusion", mask_mode="pixel", score="prob")
    b = x.shape[0]
    grid = tuple(clf.vision.grid_size)
    p = grid[0] * grid[1]
    labels = torch.arange(p).expand(b, p)  # every patch its own region
    rows = torch.arange(b)
    with torch.no_grad():
        tgt = cci._targets(target, clf(x), b)

        def scores(hide: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
            hidden = region_hidden(labels, hide)
            return cci._variant_scores(x, (), tgt, hidden, valid, grid, None, 512, False)

        chosen = torch.zeros(b, p, dtype=torch.bool)
        order = torch.zeros(b, p)
        eye = torch.eye(p, dtype=torch.bool)
        current = scores(torch.ones(b, 1, p, dtype=torch.bool), torch.ones(b, 1, dtype=torch.bool))
        current = current[:, 0]
        for r in range(rounds):
            shown = chosen[:, None, :] | eye[None]  # chosen + one candidate each
            gain = scores(~shown, ~chosen) - current[:, None]
            gain = torch.where(chosen, -torch.inf, gain)
            top = gain.topk(m, dim=1).indices
            for j in range(m):
                chosen[rows, top[:, j]] = True
                order[rows, top[:, j]] = 1e6 - (r * m + j)
            current = scores(~chosen[:, None, :], torch.ones(b, 1, dtype=torch.bool))[:, 0]
        last = torch.where(chosen, 0.0, torch.nan_to_num(gain, neginf=0.0))
        value = torch.where(chosen, order, last)
    patch_map = value.reshape(b, 1, *grid)
    return F.interpolate(patch_map, size=x.shape[-2:], mode="nearest").expand_as(x).contiguous()


def run(variant: str, seed: int, n: int) -> pd.DataFrame:
    sys.path.insert(0, str(Path(__file__).parent))
    from cci_regions import _testbed_classifier

    from captum_clip.attr import CCI
    from captum_clip.benchmark.methods import ForwardCounter, build_method
    from captum_clip.metrics import deletion_auc, insertion_auc
    from captum_clip.testbed import shapes

    clf = _testbed_classifier(variant)
    scenes = shapes.generate_scenes(n, seed=seed, rho=0.5, size=clf.image_size[0])
    x = shapes.normalize(scenes.images)
    with torch.no_grad():
        target = clf(x).argmax(1)
    patch = clf.image_size[0] // clf.vision.grid_size[0]
    kw = dict(
        target=target, unit="patch", patch_size=patch, baselines="zeros", score="prob",
        n_steps=N_STEPS, max_examples_per_batch=512,
    )  # fmt: skip
    default = CCI(clf)
    pixel48 = CCI(clf, n_clusters=48, mask_mode="pixel", score="prob")
    ig = build_method("IntegratedGradients", clf)
    methods = {
        "CCI() default (sufficiency K=32)": lambda: default.attribute(x, target=target),
        "CCI sufficiency K=48 pixel": lambda: pixel48.attribute(x, target=target),
        "IntegratedGradients (16 steps)": lambda: ig(x, target),
        "greedy patch search, 4 rounds of 4": lambda: greedy_patch_map(clf, x, target, 4, 4),
        "greedy patch search, 8 rounds of 2": lambda: greedy_patch_map(clf, x, target, 8, 2),
    }
    out = []
    for name, fn in methods.items():
        t0 = time.perf_counter()
        with ForwardCounter(clf) as counter:
            attr = fn().detach()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            dele = float(deletion_auc(clf, x, attr, **kw).mean())
            ins = float(insertion_auc(clf, x, attr, **kw).mean())
        out.append(
            {
                "variant": variant, "seed": seed, "method": name, "deletion": dele,
                "insertion": ins, "forwards_per_image": counter.images / n,
                "seconds_per_image": seconds / n,
            }
        )  # fmt: skip
        print(out[-1], flush=True)
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=["default", "shortcut"])
    p.add_argument("--seeds", type=int, nargs="+", default=[101, 202, 303])
    p.add_argument("--n", type=int, default=48, help="scenes per seed and model")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    table = pd.concat(
        [run(v, s, args.n) for v in args.variants for s in args.seeds], ignore_index=True
    )
    lines = [
        "# Insertion ceiling: greedy patch search vs integrated gradients",
        "",
        f"`python benchmarks/insertion_ceiling.py --n {args.n} --seeds "
        f"{' '.join(map(str, args.seeds))}`: whole-patch deletion (↓) and insertion onto the "
        f"mean colour (↑), probability of the predicted class, {N_STEPS} steps, {args.n} "
        "scenes per seed; mean ± sd over the seeds' means. Forwards counted at the "
        "classifier (a backward is not counted: IG's 16 rows cost about 48 forwards).",
        "",
    ]
    for variant, part in table.groupby("variant", sort=False):
        lines += [f"## testbed:{variant}", ""]
        lines += ["| method | deletion ↓ | insertion ↑ | fwd / image | s / image |"]
        lines += ["| --- | ---: | ---: | ---: | ---: |"]
        for method, r in part.groupby("method", sort=False):
            cells = [
                f"{r[c].mean():.3f} ± {r[c].std(ddof=1):.3f}" for c in ("deletion", "insertion")
            ]
            cells += [
                f"{r['forwards_per_image'].mean():.0f}",
                f"{r['seconds_per_image'].mean():.4f}",
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "insertion_ceiling.md").write_text(text)
    table.to_csv(RESULTS / "insertion_ceiling.csv", index=False)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
