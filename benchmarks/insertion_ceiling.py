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
    python benchmarks/insertion_ceiling.py --report     # the table from the CSV only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _cci_rank import N_STEPS, method_table, run_rank  # noqa: E402

RESULTS = Path(__file__).parent / "results"


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


def _methods(clf) -> dict:
    """The compared methods, ``{name: fn(x, target) -> attributions}``."""
    from captum_clip.attr import CCI
    from captum_clip.benchmark.methods import build_method

    default = CCI(clf)
    pixel48 = CCI(clf, n_clusters=48, mask_mode="pixel", score="prob")
    return {
        "CCI() default (sufficiency K=32)": lambda x, t: default.attribute(x, target=t),
        "CCI sufficiency K=48 pixel": lambda x, t: pixel48.attribute(x, target=t),
        "IntegratedGradients (16 steps)": build_method("IntegratedGradients", clf),
        "greedy patch search, 4 rounds of 4": lambda x, t: greedy_patch_map(clf, x, t, 4, 4),
        "greedy patch search, 8 rounds of 2": lambda x, t: greedy_patch_map(clf, x, t, 8, 2),
    }


def run(variant: str, seed: int, n: int) -> pd.DataFrame:
    """One row per method on ``n`` scenes of ``seed`` (the scenes and metric settings of
    ``cci_regions.py --rank``)."""
    from cci_regions import _testbed_classifier

    table = run_rank(variant, seed, n, _testbed_classifier, methods=_methods)
    return table.drop(columns=["deletion_per_image", "insertion_per_image"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=["default", "shortcut"])
    p.add_argument("--seeds", type=int, nargs="+", default=[101, 202, 303])
    p.add_argument("--n", type=int, default=48, help="scenes per seed and model")
    p.add_argument("--report", action="store_true", help="only rebuild the table from the CSV")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    csv = RESULTS / "insertion_ceiling.csv"
    if args.report:
        table = pd.read_csv(csv)
    else:
        runs = [run(v, s, args.n) for v in args.variants for s in args.seeds]
        table = pd.concat(runs, ignore_index=True)
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
        lines += [f"## testbed:{variant}", ""] + method_table(part)
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "insertion_ceiling.md").write_text(text)
    if not args.report:
        table.to_csv(csv, index=False)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
