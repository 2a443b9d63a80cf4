"""Retrieval faithfulness on the testbed, side by side with the classification benchmark.

The gallery is the classification benchmark's scenes (``benchmarks/faithfulness.py``: 48
per model, rho=0.5, the held-out seed), each with 3 captions in the testbed's training
forms (class; colour + class + background; class + background). Every method explains each
image against its own captions; IR@k / TR@k deletion and insertion AUCs are computed with

* the classification table's perturbation (10 steps over all pixels, mean-colour
  deletion, blurred insertion), over ``--seeds`` seeds of tie order and sampling, and
* the Grad-ECLIP/CCI preset (100 steps to 50 %, noise deletion, black insertion), seed 0,

and ranked against the classification deletion/insertion AUCs of
``benchmarks/results/faithfulness.csv`` (Spearman rank correlation over methods)::

    nice -n 5 python benchmarks/retrieval_testbed.py            # ~10 min of one core
    python benchmarks/retrieval_testbed.py --methods CCI Saliency --seeds 0

Writes ``benchmarks/results/retrieval_testbed.md`` and one curve plot per model. Part
files go to ``--work`` (default ``~/.cache/captum_clip/retrieval_testbed``): a killed run
resumes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from captum_clip.benchmark.inputs import TESTBED_SEED
from captum_clip.benchmark.methods import METHODS
from captum_clip.benchmark.retrieval import RetrievalSettings, evaluate_retrieval
from captum_clip.benchmark.retrieval_report import save_retrieval_plots
from captum_clip.datasets import load_captions
from captum_clip.testbed.captions import write_caption_gallery

RESULTS = Path(__file__).parent / "results"
COLS = [  # (mode, direction, k, header, lower is better)
    ("deletion", "image", 1, "del. IR@1 ↓", True),
    ("deletion", "text", 1, "del. TR@1 ↓", True),
    ("insertion", "image", 1, "ins. IR@1 ↑", False),
    ("insertion", "text", 1, "ins. TR@1 ↑", False),
    ("deletion", "image", 5, "del. IR@5 ↓", True),
    ("insertion", "image", 5, "ins. IR@5 ↑", False),
]


def _settings(protocol: str, seed: int) -> RetrievalSettings:
    if protocol == "grad-eclip":
        return RetrievalSettings(protocol="grad-eclip", ks=(1, 5), seed=seed)
    return RetrievalSettings(protocol="none", n_steps=10, deletion_baseline="zeros",
                             insertion_baseline="blur", ks=(1, 5), seed=seed)  # fmt: skip


def _table(runs: list, classification: pd.DataFrame | None) -> tuple[list[str], dict]:
    """Mean (± sd over seeds) per method and column, ranks, Spearman vs classification."""
    frames = [r.summary.assign(seed=i) for i, r in enumerate(runs)]
    s = pd.concat(frames)
    methods = list(dict.fromkeys(s["method"]))
    cells = {m: [m] for m in methods}
    means = {}
    for mode, d, k, _, low in COLS:
        part = s[(s["mode"] == mode) & (s["direction"] == d) & (s["k"] == k)]
        g = part.groupby("method")["auc"]
        mean, sd = g.mean(), g.std(ddof=1)
        means[(mode, d, k)] = mean
        rank = mean.rank(method="min", ascending=low)
        for m in methods:
            txt = f"{mean[m]:.3f}" + (f" ± {sd[m]:.3f}" if len(runs) > 1 else "")
            cells[m].append(f"{txt} ({int(rank[m])})")
    corr = {}
    if classification is not None:
        cls = classification.reindex(methods)
        for col, low in (("deletion_prob", True), ("insertion_prob", False)):
            rank = cls[col].rank(method="min", ascending=low)
            for m in methods:
                v = cls.loc[m, col]
                cells[m].append("–" if pd.isna(v) else f"{v:.3f} ({int(rank[m])})")
        for mode, d, k, header, _ in COLS:
            ref = "deletion_prob" if mode == "deletion" else "insertion_prob"
            corr[header] = means[(mode, d, k)].reindex(methods).corr(cls[ref], method="spearman")
    return [" | ".join(cells[m]) for m in methods], corr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=48, help="scenes (default 48, as faithfulness.md)")
    p.add_argument("--variants", nargs="+", default=["default", "shortcut"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="tie/sampling seeds")
    p.add_argument("--no-preset", action="store_true", help="skip the Grad-ECLIP preset run")
    p.add_argument("--captions-per-image", type=int, default=3, choices=(1, 2, 3, 4),
                   help="1: class only ('a photo of dots'); 3: + colour/background forms")  # fmt: skip
    p.add_argument("--work", default=str(Path.home() / ".cache/captum_clip/retrieval_testbed"))
    p.add_argument("--out", default=str(RESULTS / "retrieval_testbed.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0, cpu0 = time.perf_counter(), time.process_time()
    work, out = Path(args.work), Path(args.out)
    cpi = args.captions_per_image
    tag = f"n{args.n}" + ("" if cpi == 3 else f"-c{cpi}")
    images, captions = write_caption_gallery(work / f"gallery-{tag}", args.n, seed=TESTBED_SEED,
                                             rho=0.5, captions_per_image=cpi)  # fmt: skip
    gallery = load_captions(captions, images)
    csv = RESULTS / "faithfulness.csv"
    table = pd.read_csv(csv) if csv.is_file() else None
    command = "python benchmarks/retrieval_testbed.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    lines = [
        "# Retrieval faithfulness on the testbed, next to the classification benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Gallery: the {args.n} scenes of `faithfulness.md` (rho=0.5, seed {TESTBED_SEED}), "
        f"{len(gallery.captions)} captions ({cpi} per scene, the first of: class; colour + class "
        "+ background; class + background; two colours + class). Each image is explained against its own caption set "
        "(`CaptionSetSimilarity`, target = the image's index). Cells: AUC (rank among the "
        "methods); `cls.` columns: the classification benchmark's deletion/insertion AUC "
        "of the predicted class's probability on the same images (`faithfulness.csv`).",
        "",
    ]
    for variant in args.variants:
        for protocol, seeds in (("none", args.seeds), ("grad-eclip", [0])):
            if protocol == "grad-eclip" and args.no_preset:
                continue
            runs = [
                evaluate_retrieval(
                    f"testbed:{variant}",
                    gallery,
                    work / f"{variant}-{protocol}-{tag}-s{seed}",
                    methods=args.methods,
                    settings=_settings(protocol, seed),
                    batch_size=16,
                    show_progress=False,
                )  # fmt: skip
                for seed in seeds
            ]
            cls = None
            if table is not None and protocol == "none":
                part = table[table["model"] == f"testbed:{variant}"]
                cls = part.groupby("method")[["deletion_prob", "insertion_prob"]].mean()
            rows, corr = _table(runs, cls)
            name = ("10 steps over all pixels, mean-colour deletion, blurred insertion "
                    "(the classification table's)" if protocol == "none" else
                    "Grad-ECLIP/CCI preset (100 steps to 50 %, scored every 10; noise "
                    "deletion, black insertion)")  # fmt: skip
            png = out.with_name(f"{out.stem}_{variant}-{protocol}.png")
            save_retrieval_plots(runs[0], png, k=1)
            clean = runs[0].clean.set_index(["direction", "k"])["recall"]
            header = ["method"] + [c[3] for c in COLS]
            if cls is not None:
                header += ["cls. del. prob ↓", "cls. ins. prob ↑"]
            spread = f"mean ± sd over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds[0]}"
            lines += [
                f"## testbed:{variant} -- {name}",
                "",
                f"AUC {spread}. Unperturbed gallery: IR@1 {clean[('image', 1)]:.3f}, "
                f"TR@1 {clean[('text', 1)]:.3f}, IR@5 {clean[('image', 5)]:.3f}.",
                "",
                "| " + " | ".join(header) + " |",
                "| --- |" + " ---: |" * (len(header) - 1),
            ]
            lines += [f"| {r} |" for r in rows] + [""]
            if corr:
                lines += ["Spearman rank correlation with the classification AUC (deletion "
                          "columns vs cls. deletion, insertion vs cls. insertion): "
                          + ", ".join(f"{h} {v:+.2f}" for h, v in corr.items()) + ".", ""]  # fmt: skip
            lines += [f"![recall@1 curves, testbed:{variant}]({png.name})", ""]
    lines += [
        f"Total: {(time.perf_counter() - t0) / 60:.1f} min wall clock, "
        f"{(time.process_time() - cpu0) / 60:.1f} min CPU (1 thread, shared machine; parts "
        "reused from earlier calls do not count).",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
