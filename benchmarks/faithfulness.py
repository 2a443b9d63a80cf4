"""Faithfulness benchmark on the testbed zoo: every method x every metric x every model.

Runs ``captum-clip faithfulness testbed`` (see ``docs/faithfulness.md``) and writes
``benchmarks/results/faithfulness.md`` plus one curve plot per model
(``faithfulness_testbed-<variant>.png``) and the per-image table
(``faithfulness.csv``). Every flag of the command is accepted, e.g.::

    python benchmarks/faithfulness.py                   # default: 48 scenes per model
    python benchmarks/faithfulness.py --n 200 --shap-samples 200 --n-steps 20
    python benchmarks/faithfulness.py --variants shortcut --methods CCI Occlusion

``--peers`` writes ``benchmarks/results/faithfulness_peers.md``: CCI and the cross-modal
region x word games against AttnLRP, LeGrad and the other attention methods over several
scene seeds (mean over seeds of the per-seed means +- their standard deviation), with the
cost of each method::

    python benchmarks/faithfulness.py --peers --n 24 --seeds 0 1 2

``--analysis`` instead writes ``benchmarks/results/faithfulness_analysis.md``: where the
pixel-deletion ranking comes from (within-patch pixel order vs the ranking of regions),
with maps built from the benchmark's own methods on the same scenes.

For an open_clip model on your own images use the ``folder`` subcommand of the CLI::

    captum-clip faithfulness folder IMAGES --model ViT-B-32:openai --masks MASKS
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from captum_clip.cli import build_parser

RESULTS = Path(__file__).parent / "results"


def _patch_average(a: torch.Tensor, p: int) -> torch.Tensor:
    """Patch means of a map ``(B, 1, H, W)``: keeps the ranking of patches, no pixel order."""
    return F.interpolate(F.avg_pool2d(a, p), scale_factor=p, mode="nearest")


def _refine(region_map: torch.Tensor, pixel_map: torch.Tensor) -> torch.Tensor:
    """``region_map``'s order between its constant regions, ``pixel_map``'s order inside them."""
    out = []
    for r, q in zip(region_map, pixel_map):
        levels = torch.unique(r)
        gap = torch.diff(levels).min() if levels.numel() > 1 else torch.tensor(1.0)
        out.append(r + 0.49 * gap * q / q.abs().max().clamp_min(1e-12))
    return torch.stack(out)


def analysis(n: int = 48, seed: int | None = None) -> str:
    """Deletion AUC of CCI, IG and their hybrids on the benchmark's scenes (markdown)."""
    from captum_clip.attr.cci import CCI
    from captum_clip.benchmark import MetricSettings, build_method, scored_curves
    from captum_clip.benchmark.inputs import TESTBED_SEED, available_variants
    from captum_clip.metrics import curve_auc, importance_rank
    from captum_clip.models import ClipClassifier
    from captum_clip.testbed import load_testbed, shapes

    torch.set_num_threads(1)
    seed = TESTBED_SEED if seed is None else seed
    mt = MetricSettings()
    lines = [
        "# Faithfulness benchmark: where the pixel-deletion ranking comes from",
        "",
        f"Command: `python benchmarks/faithfulness.py --analysis --n {n}`",
        "",
        f"Same scenes as `faithfulness.md` ({n} per model, rho=0.5, seed {seed}), target = "
        "predicted class, deletion AUC of the target probability with the headline settings "
        f"({mt.n_steps} steps, pixels replaced by the mean colour, seeded random tie order). "
        "`p@10%` = target probability after deleting the top 10 % of the pixels; `in mask` "
        "= share of those pixels on the object. Hybrid maps:",
        "",
        "- *patch-averaged*: the map averaged over each ViT patch (8x8 px) -- the same "
        "ranking of patches, no order of pixels inside a patch (the tie order decides);",
        "- *CCI + IG inside regions*: CCI's order between its regions, IG's order of pixels "
        "inside each region (IG scaled below the smallest gap between CCI's levels).",
        "",
    ]
    for variant in available_variants():
        model, _, tok = load_testbed(variant)
        clf = ClipClassifier(model, tok, list(shapes.CLASS_NAMES), templates=("a photo of {}",))
        scenes = shapes.generate_scenes(n, seed=seed, rho=0.5, size=clf.image_size[0])
        x, masks = shapes.normalize(scenes.images), scenes.masks
        p = x.shape[-1] // clf.patch_grid[1]
        with torch.no_grad():
            t = clf(x).argmax(1)
            margin = clf(x).topk(2, 1).values
        cci, res = CCI(clf, n_clusters=7, estimator="occlusion").attribute(
            x, target=t, return_clusters=True
        )
        maps = {"CCI (K=7, logit)": cci.sum(1, keepdim=True)}
        maps["CCI (K=7, score='prob')"] = (
            CCI(clf, n_clusters=7, score="prob", estimator="occlusion")
            .attribute(x, target=t)
            .sum(1, keepdim=True)
        )
        for name in ("IntegratedGradients", "InputXGradient", "GradientRollout"):
            maps[name] = build_method(name, clf)(x, t).detach().sum(1, keepdim=True)
        ig = maps["IntegratedGradients"]
        maps["IntegratedGradients, patch-averaged"] = _patch_average(ig, p)
        maps["InputXGradient, patch-averaged"] = _patch_average(maps["InputXGradient"], p)
        maps["CCI + IG inside regions"] = _refine(maps["CCI (K=7, logit)"], ig)
        rows = []
        k = int(0.1 * x.shape[-1] * x.shape[-2])
        for name, a in maps.items():
            fr, sc = scored_curves("deletion", clf, x, a, t, mt, ("prob",))
            auc = curve_auc(fr, sc["prob"], mt.max_fraction).mean()
            top = (importance_rank(a.reshape(n, -1), mt.seed) < k).reshape(masks.shape)
            inside = (top & masks).flatten(1).sum(1).float().mean() / k
            rows.append(f"| {name} | {auc:.3f} | {sc['prob'][:, 1].mean():.3f} | {inside:.2f} |")
        drop = torch.nan_to_num(res.deltas, nan=-float("inf")).amax(1)
        gap = margin[:, 0] - margin[:, 1]
        top_cluster = F.interpolate(res.top_cluster()[:, None].float(), size=x.shape[-2:]) > 0
        top_in = (top_cluster[:, 0] & masks).flatten(1).sum(1) / top_cluster.flatten(1).sum(1)
        lines += [
            f"## testbed:{variant}",
            "",
            "| map | del. AUC prob ↓ | p@10% ↓ | in mask |",
            "| --- | ---: | ---: | ---: |",
            *rows,
            "",
            f"CCI regions: hiding the single most important cluster flips the prediction on "
            f"{100 * (drop >= gap).float().mean():.0f} % of the images; its logit drop is a "
            f"median {100 * (drop / gap).median():.0f} % of the logit margin to the runner-up "
            f"class; {100 * top_in.float().mean():.0f} % of the top cluster's pixels lie on "
            "the object.",
            "",
        ]
    return "\n".join(lines)


PEER_METHODS = (
    "CCI", "CCI banzhaf", "GradECLIP", "GradientRollout", "IntegratedGradients",
    "AttnLRP", "AttnLRP cp", "LeGrad", "Cross-game banzhaf", "Cross-game FIxLIP",
)  # fmt: skip
PEER_COLUMNS = (
    ("deletion_prob", "del. AUC prob ↓"),
    ("deletion_prob_patch", "del. AUC patches ↓"),
    ("insertion_prob", "ins. AUC prob ↑"),
    ("pointing", "pointing ↑"),
    ("mask_share", "mask share ↑"),
    ("seconds_per_image", "s / image"),
    ("forwards_per_image", "forwards / image"),
)


def peers(n: int, seeds: list[int], methods: tuple[str, ...] = PEER_METHODS) -> str:
    """Markdown table of the peer methods over ``seeds`` (mean +- std of per-seed means)."""
    import time

    import pandas as pd

    from captum_clip.benchmark import run_testbed

    torch.set_num_threads(1)
    start = time.time()
    frames = []
    for seed in seeds:
        for res in run_testbed(n=n, seed=seed, methods=list(methods)):
            summary = res.summary().reset_index()
            summary["model"], summary["seed"] = res.model, seed
            frames.append(summary)
    table = pd.concat(frames, ignore_index=True)
    (RESULTS / "faithfulness_peers.csv").write_text(table.to_csv(index=False))
    lines = [
        "# Faithfulness of the peer methods (AttnLRP, LeGrad, cross-modal games) on the testbed",
        "",
        f"Command: `python benchmarks/faithfulness.py --peers --n {n} --seeds "
        f"{' '.join(map(str, seeds))}`",
        "",
        f"{n} scenes per model and seed (rho=0.5), target = predicted class, headline metric "
        "settings of `faithfulness.md` (deletion to the mean colour, insertion from blur, 10 "
        "steps). Every cell: mean over the seeds of the per-seed mean, +- the standard "
        "deviation over seeds. Cost: seconds of the attribute call per image on a shared "
        "CPU (1 thread; indicative only) and image forwards through the vision tower. "
        f"Total run time {(time.time() - start) / 60:.1f} min. Cross-game maps: each "
        "region's interactions with the words of the target's prompt (the result's column "
        "sums); 'Cross-game FIxLIP' is the p=0.5 weighted Banzhaf index sampled with 32 "
        "coalitions per side on 7 regions.",
        "",
    ]
    for model, part in table.groupby("model", sort=False):
        lines += [f"## {model}", "", "| method | " + " | ".join(c for _, c in PEER_COLUMNS) + " |"]
        lines.append("| --- |" + " ---: |" * len(PEER_COLUMNS))
        for method in methods:
            rows = part[part["method"] == method]
            if rows.empty:
                continue
            cells = []
            for col, _ in PEER_COLUMNS:
                v = rows[col].astype(float)
                digits = {"seconds_per_image": 3, "forwards_per_image": 0}.get(col, 3)
                cells.append(f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--peers" in argv:
        n = int(argv[argv.index("--n") + 1]) if "--n" in argv else 24
        seeds = [0, 1, 2]
        if "--seeds" in argv:
            rest = argv[argv.index("--seeds") + 1 :]
            seeds = [int(v) for v in rest if v.lstrip("-").isdigit()]
        text = peers(n, seeds)
        (RESULTS / "faithfulness_peers.md").write_text(text)
        print(text)
        return 0
    if "--analysis" in argv:
        argv.remove("--analysis")
        n = int(argv[argv.index("--n") + 1]) if "--n" in argv else 48
        text = analysis(n)
        (RESULTS / "faithfulness_analysis.md").write_text(text)
        print(text)
        return 0
    defaults = [
        "--out",
        str(RESULTS / "faithfulness.md"),
        "--csv",
        str(RESULTS / "faithfulness.csv"),
    ]
    args = build_parser().parse_args(["faithfulness", "testbed", *defaults, *argv])
    args.command_line = "python benchmarks/faithfulness.py " + shlex.join(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
