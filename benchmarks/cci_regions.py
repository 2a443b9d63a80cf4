"""CCI region estimators and region-ablation diagnosis on the testbed zoo, over seeds.

For every available zoo variant (bundled ``default`` / ``shortcut``, and the trained
``default-p16``, ``shortcut-p16``, ``default-128`` found in the cache) and every scene
seed, runs the faithfulness benchmark (:func:`captum_clip.benchmark.evaluate`, all
metrics) on the CCI estimators and the strongest other methods, and diagnoses the same
scenes by region ablation (``diagnose(..., method="region_ablation")``) against the
causal labels. Writes ``benchmarks/results/cci_regions.md`` (mean ± standard deviation
over seeds) and ``cci_regions.csv`` (one row per variant, seed and method; finished
(variant, seed) pairs are skipped on a rerun, so the run can be resumed)::

    python benchmarks/cci_regions.py                       # 32 scenes x 3 seeds x variants
    python benchmarks/cci_regions.py --variants default --seeds 1 --n 8   # quick look
    python benchmarks/cci_regions.py --report              # tables from the CSV only
    python benchmarks/cci_regions.py --rank --variance --n 96 --variants default shortcut
        # CCI settings within 64 forwards vs GradientRollout / IG (``_cci_rank.py``),
        # and their spread over CCI's random_state
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

RESULTS = Path(__file__).parent / "results"
SEEDS = (101, 202, 303)
#: The CCI estimators, then the methods that rank above the paper's CCI on whole-patch
#: deletion or insertion in ``faithfulness.md`` (48 scenes, all 14 methods): the others
#: (Occlusion, Lime, KernelShap, FeatureAblation, the one-forward CAMs, ...) are behind
#: GradientRollout / IntegratedGradients there and are left out to fit a shared machine.
METHODS = (
    "CCI",
    "CCI sufficiency",
    "CCI banzhaf",
    "CCI shapley",
    "CCI shapley prob",
    "CCI sampled-shapley",
    "GradientRollout",
    "IntegratedGradients",
    "InputXGradient",
)
METRICS = (  # column, header, lower is better
    ("deletion_prob_patch", "del. patches ↓", True),
    ("insertion_prob", "ins. ↑", False),
    ("deletion_prob", "del. pixels ↓", True),
    ("road", "ROAD ↑", False),
    ("pointing", "pointing ↑", False),
    ("mask_share", "mask share ↑", False),
    ("causal_auroc", "fg/bg AUROC ↑", False),
    ("seconds_per_image", "s / image", True),
    ("forwards_per_image", "fwd / image", True),
)


def _testbed_classifier(variant: str):
    """The benchmark's zero-shot head on a zoo variant (the model's own logit scale)."""
    from captum_clip.models import ClipClassifier
    from captum_clip.testbed import load_testbed, shapes

    model, _, tok = load_testbed(variant)
    return ClipClassifier(
        model,
        tok,
        list(shapes.CLASS_NAMES),
        templates=(shapes.PROMPT_TEMPLATE.format(pattern="{}"),),
    )


def run_one(variant: str, seed: int, n: int, methods: list[str]) -> tuple[pd.DataFrame, dict]:
    """Faithfulness summary (one row per method) and the region-ablation diagnosis."""
    from captum_clip.benchmark import MetricSettings, evaluate
    from captum_clip.diagnosis import REGION_ABLATION, causal_agreement, diagnose
    from captum_clip.testbed import causal_labels, shapes

    clf = _testbed_classifier(variant)
    scenes = shapes.generate_scenes(n, seed=seed, rho=0.5, size=clf.image_size[0])
    x = shapes.normalize(scenes.images)
    truth = causal_labels(clf, scenes, internal_batch_size=16)
    metrics = MetricSettings(
        deletion_variants=(("patch", "patch", "zeros"),), road_percentages=(50,)
    )
    result = evaluate(
        clf,
        x,
        truth.target,
        scenes.masks,
        truth,
        methods=methods,
        metric_settings=metrics,
        model_name=variant,
    )
    summary = result.summary().reset_index()
    t0 = time.perf_counter()
    d = diagnose(clf, x, scenes.masks, method=REGION_ABLATION, target=truth.target)
    seconds = (time.perf_counter() - t0) / n
    agree = causal_agreement(d, truth)
    causal_fg = np.asarray(truth.labels) == "foreground"
    called = d.table["driver"].to_numpy() == "foreground"
    cci = result.table[result.table["method"] == "CCI"]["mask_share"].to_numpy() >= 0.5
    diag = {
        "variant": variant,
        "seed": seed,
        "n_fg": int(causal_fg.sum()),
        "n_bg": agree["n_background"],
        "ablation_auroc": agree["auroc"],
        "ablation_accuracy": agree["accuracy"],
        "majority": agree["majority"],
        "ablation_fg_rate": float(called[causal_fg].mean()) if causal_fg.any() else np.nan,
        "cci_share_fg_rate": float(cci[causal_fg].mean()) if causal_fg.any() else np.nan,
        "ablation_seconds_per_image": seconds,
    }
    return summary.assign(variant=variant, seed=seed), diag


def run_diagnosis(variant: str, seed: int, n: int) -> dict:
    """Region ablation vs the paper's CCI ``fg_share`` diagnosis on ``n`` scenes."""
    from captum_clip.diagnosis import REGION_ABLATION, causal_agreement, diagnose
    from captum_clip.testbed import causal_labels, shapes

    clf = _testbed_classifier(variant)
    scenes = shapes.generate_scenes(n, seed=seed, rho=0.5, size=clf.image_size[0])
    x = shapes.normalize(scenes.images)
    truth = causal_labels(clf, scenes, internal_batch_size=32)
    causal_fg = np.asarray(truth.labels) == "foreground"
    row: dict = {"variant": variant, "seed": seed, "n": n, "n_fg": int(causal_fg.sum())}
    for name, method in (("ablation", REGION_ABLATION), ("cci", "cci")):
        d = diagnose(
            clf, x, scenes.masks, method=method, target=truth.target, internal_batch_size=32
        )
        agree = causal_agreement(d, truth)
        called = d.table["driver"].to_numpy() == "foreground"
        row.update(
            {
                "n_bg": agree["n_background"],
                f"{name}_auroc": agree["auroc"],
                f"{name}_accuracy": agree["accuracy"],
                f"{name}_fg_rate": float(called[causal_fg].mean()) if causal_fg.any() else np.nan,
            }
        )
    return row


def _mean_sd(values: pd.Series, digits: int = 3) -> str:
    v = values.dropna()
    if v.empty:
        return "–"
    if len(v) == 1:
        return f"{v.iloc[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def report(table: pd.DataFrame, diag: pd.DataFrame, command: str, n: int) -> str:
    """Markdown: per variant mean ± sd over seeds, ranks, and the diagnosis table."""
    seeds = sorted(table["seed"].unique())
    lines = [
        "# CCI region estimators and region-ablation diagnosis (testbed zoo, over seeds)",
        "",
        f"Command: `{command}`",
        "",
        f"Scenes: {n} per seed and model, rho=0.5, seeds {', '.join(map(str, seeds))}; target "
        "= predicted class; all metrics as in `faithfulness.md` (10 deletion/insertion "
        "steps, deletion baseline = mean colour, insertion from blur, 'patches' = whole ViT "
        "patches deleted; ROAD at 50 % only, to save time). Every cell: mean over the seeds' per-seed means ± standard "
        "deviation across seeds. CCI rows: K=7 k-means regions (attention mode, logit "
        "score unless the name says prob) with the estimator named; 'CCI sampled-shapley': K=16 regions, budget 127 "
        "masked forwards. Cost is wall clock on a shared, loaded 2-core machine.",
        "",
    ]
    ranks = []
    for variant, part in table.groupby("variant", sort=False):
        means = part.groupby("method", sort=False)[[c for c, _, _ in METRICS]].mean()
        lines += [f"## testbed:{variant}", ""]
        head = ["method"] + [h for _, h, _ in METRICS]
        lines += ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(METRICS)]
        for method, rows in part.groupby("method", sort=False):
            cells = [method] + [
                _mean_sd(rows[c], 4 if c == "seconds_per_image" else 3) for c, _, _ in METRICS
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for col, _, lower in METRICS[:2]:
            order = means[col].sort_values(ascending=lower)
            for rank, method in enumerate(order.index, 1):
                if method.startswith("CCI"):
                    ranks.append((variant, col, method, rank, len(order), order.index[0]))
    lines += ["## Ranks of the CCI configurations (by the mean over seeds)", ""]
    rk = pd.DataFrame(ranks, columns=["variant", "metric", "method", "rank", "of", "best"])
    for col, title, _ in METRICS[:2]:
        sub = rk[rk["metric"] == col]
        piv = sub.pivot(index="method", columns="variant", values="rank")
        variants = list(dict.fromkeys(sub["variant"]))
        lines += [f"Rank on {title}", "", "| CCI config | " + " | ".join(variants) + " |"]
        lines.append("| --- |" + " ---: |" * len(variants))
        for method in dict.fromkeys(sub["method"]):
            of = sub[sub["method"] == method].set_index("variant")["of"]
            cells = [f"{int(piv.loc[method, v])} of {int(of[v])}" for v in variants]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        best = sub.drop_duplicates("variant").set_index("variant")["best"]
        lines.append("| best method | " + " | ".join(best[v] for v in variants) + " |")
        lines.append("")
    if not diag.empty:
        lines += [
            "## Diagnosis by region ablation vs the causal labels",
            "",
            "Object and background hidden separately (attention mode at patch resolution, "
            "two extra rows per image); driver = the region whose hiding costs more target "
            "logit; AUROC of `fg_effect - bg_effect` against the causal label (images that "
            "are causally 'foreground' or 'background'); fg rate = share of the causally "
            "foreground images called foreground; 'CCI fg_share' = the same rate for the "
            "paper's diagnosis (CCI K=7 mask share >= 0.5).",
            "",
            "| variant | causal fg / bg (per seed) | ablation AUROC | ablation accuracy | "
            "majority | ablation fg rate | CCI fg_share fg rate | s / image |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for variant, part in diag.groupby("variant", sort=False):
            counts = ", ".join(f"{a}/{b}" for a, b in zip(part["n_fg"], part["n_bg"]))
            cells = [variant, counts] + [
                _mean_sd(part[c], 4 if "seconds" in c else 3)
                for c in (
                    "ablation_auroc",
                    "ablation_accuracy",
                    "majority",
                    "ablation_fg_rate",
                    "cci_share_fg_rate",
                    "ablation_seconds_per_image",
                )
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def diagnosis_report(big: pd.DataFrame) -> list[str]:
    """Markdown of :func:`run_diagnosis` rows (mean ± sd over seeds)."""
    n = int(big["n"].iloc[0])
    lines = [
        f"## Diagnosis on more scenes ({n} per seed and model, the same three seeds)",
        "",
        "The same comparison without the faithfulness metrics, so that more scenes fit: "
        "region ablation vs the paper's diagnosis (CCI K=7, `fg_share >= 0.5`; its AUROC "
        "scores `fg_share`).",
        "",
        "| variant | causal fg / bg (per seed) | ablation AUROC | CCI fg_share AUROC | "
        "ablation accuracy | CCI accuracy | ablation fg rate | CCI fg rate |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    cols = (
        "ablation_auroc",
        "cci_auroc",
        "ablation_accuracy",
        "cci_accuracy",
        "ablation_fg_rate",
        "cci_fg_rate",
    )
    for variant, part in big.groupby("variant", sort=False):
        counts = ", ".join(f"{a}/{b}" for a, b in zip(part["n_fg"], part["n_bg"]))
        lines.append(
            "| " + " | ".join([variant, counts] + [_mean_sd(part[c]) for c in cols]) + " |"
        )
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    from captum_clip.benchmark.inputs import available_variants

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", help="zoo variants (default: all available)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--n", type=int, default=32, help="scenes per seed and model")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--out", default=str(RESULTS / "cci_regions.md"))
    p.add_argument("--csv", default=str(RESULTS / "cci_regions.csv"))
    p.add_argument("--report", action="store_true", help="only rebuild the tables from the CSV")
    p.add_argument("--rank", action="store_true", help="the 64-forward ranking (_cci_rank.py)")
    p.add_argument(
        "--variance", action="store_true",
        help="with --rank: also the spread over CCI's random_state (5 states, first seed)",
    )  # fmt: skip
    p.add_argument(
        "--diagnosis-n", type=int, default=0,
        help="only diagnose this many scenes per seed (no faithfulness metrics)",
    )  # fmt: skip
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.rank:
        return rank_main(args)
    csv, diag_csv = Path(args.csv), Path(args.csv).with_name(Path(args.csv).stem + "_diagnosis.csv")
    table = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
    diag = pd.read_csv(diag_csv) if diag_csv.is_file() else pd.DataFrame()
    if not args.report and not args.diagnosis_n:  # --diagnosis-n: the diagnosis only
        for variant in args.variants or available_variants():
            methods = list(args.methods)
            for seed in args.seeds:
                done = (
                    not table.empty
                    and ((table["variant"] == variant) & (table["seed"] == seed)).any()
                )
                if done:
                    continue
                t0 = time.time()
                summary, d = run_one(variant, seed, args.n, methods)
                table = pd.concat([table, summary], ignore_index=True)
                diag = pd.concat([diag, pd.DataFrame([d])], ignore_index=True)
                csv.parent.mkdir(parents=True, exist_ok=True)
                table.to_csv(csv, index=False)
                diag.to_csv(diag_csv, index=False)
                print(f"{variant} seed {seed}: {(time.time() - t0) / 60:.1f} min", flush=True)
    big_csv = csv.with_name(csv.stem + "_diagnosis_large.csv")
    big = pd.read_csv(big_csv) if big_csv.is_file() else pd.DataFrame()
    if args.diagnosis_n and not args.report:
        for variant in args.variants or available_variants():
            for seed in args.seeds:
                if not big.empty and ((big["variant"] == variant) & (big["seed"] == seed)).any():
                    continue
                row = run_diagnosis(variant, seed, args.diagnosis_n)
                big = pd.concat([big, pd.DataFrame([row])], ignore_index=True)
                big.to_csv(big_csv, index=False)
                print(f"diagnosis {variant} seed {seed}: {row}", flush=True)
    command = "python benchmarks/cci_regions.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(table, diag, command.strip(), args.n)
    if not big.empty:
        text += "\n" + "\n".join(diagnosis_report(big))
    Path(args.out).write_text(text)
    print(text)
    return 0


def rank_main(args: argparse.Namespace) -> int:
    """``--rank``: run missing (variant, seed) pairs, then write ``cci_regions_rank.md``."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _cci_rank import rank_report, run_rank, run_variance, variance_report

    csv = RESULTS / "cci_regions_rank.csv"
    table = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
    variants = args.variants or ["default", "shortcut"]
    for variant in variants:
        for seed in args.seeds:
            if not table.empty and ((table["variant"] == variant) & (table["seed"] == seed)).any():
                continue
            rows = run_rank(variant, seed, args.n, _testbed_classifier)
            rows = rows.drop(columns=["deletion_per_image", "insertion_per_image"])
            table = pd.concat([table, rows], ignore_index=True)
            table.to_csv(csv, index=False)
    lines = ["# CCI within 64 forwards per image vs the peers", ""] + rank_report(table)
    var_md = RESULTS / "cci_regions_variance.md"
    if args.variance:  # the spread over random_state, on the first seed's scenes
        spread = pd.concat([run_variance(v, args.seeds[0], args.n, _testbed_classifier)
                            for v in variants], ignore_index=True)  # fmt: skip
        var_md.write_text("\n".join(variance_report(spread)))
    if var_md.is_file():
        lines += ["", var_md.read_text()]
    text = "\n".join(lines)
    (RESULTS / "cci_regions_rank.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
