"""The method scorecard: every registered method x deletion, insertion, ROAD, pointing,
mask share, randomisation, random logit, sensitivity, seed stability, sparseness and cost,
on both bundled testbed models over several scene seeds, with the edge-map control.

One run writes ``benchmarks/results/scorecard.md`` (mean ± sd over the seeds, per model),
``scorecard.csv`` (one row per model x seed x method) and ``scorecard.json`` (the summary
the documents are written from), then rewrites the generated passages of ``README.md``,
``docs/choosing.md``, ``docs/cci.md`` and ``docs/peers.md`` (between
``<!-- scorecard:NAME -->`` markers; ``tests/test_scorecard.py`` checks they match the
JSON)::

    python benchmarks/scorecard.py                        # 32 scenes x 3 seeds x 2 models
    python benchmarks/scorecard.py --n 8 --seeds 1 --out /tmp/sc   # a quick look
    python benchmarks/scorecard.py --docs-only            # re-render the documents

What each column means: ``captum_clip/benchmark/scorecard.py`` and ``docs/choosing.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = ("README.md", "docs/choosing.md", "docs/cci.md", "docs/peers.md")


def _summary_from_json(data: dict):
    import pandas as pd

    frame = pd.DataFrame(data["summary"])
    return frame.set_index(["model", "method"])


def write_documents(data: dict, root: Path = ROOT) -> list[Path]:
    """Rewrites the generated passages of the documents from the scorecard JSON."""
    from captum_clip.benchmark.scorecard import render_blocks, replace_blocks

    blocks = render_blocks(
        _summary_from_json(data), len(data["settings"]["seeds"]), data["settings"]["n"]
    )
    written = []
    for rel in DOCUMENTS:
        path = root / rel
        text = path.read_text()
        new = replace_blocks(text, blocks)
        if new != text:
            path.write_text(new)
            written.append(path)
    return written


def markdown(data: dict, command: str) -> str:
    from captum_clip.benchmark.scorecard import render_blocks

    s = data["settings"]
    blocks = render_blocks(_summary_from_json(data), len(s["seeds"]), s["n"])
    lines = [
        "# Method scorecard",
        "",
        f"Command: `{command}`",
        "",
        "Settings:",
        "",
        f"- Testbed scenes: {s['n']} per model and seed, rho={s['rho']} (half of them on the "
        f"class's own background), scene seeds {s['seeds']} (held out: training scenes use "
        "seeds >= 1,000,000); target = the predicted class; exact object masks.",
        "- Every registered method (`captum_clip.methods`) at its Python defaults (what "
        "`build(name, clf)` and `captum-clip explain --method NAME` give), plus `edge-map`: "
        "the Sobel edges of the image, a map that ignores the model (negative control).",
        "- deletion / insertion: AUC of the target probability over 10 steps, pixels ranked "
        "by the channel-summed map; deletion replaces pixels (or, `patches`, whole ViT "
        "patches) by the mean colour, insertion starts from a blurred copy. ROAD: "
        "(LeRF - MoRF) / 2 at 20/50/80 %, noisy linear imputation. pointing (2 px "
        "tolerance) and mask share (positive mass on the object) against the exact masks "
        "(the settings of `benchmarks/results/faithfulness.md`).",
        f"- randomisation: Spearman correlation with the original map after all blocks of "
        f"the vision tower are re-initialised top down (cascading MPRT, seed "
        f"{s['randomisation_seed']}); random logit: Spearman correlation of the map of the "
        f"target with that of a random other class (seed {s['logit_seed']}); sensitivity: "
        f"Captum's `sensitivity_max` (radius {s['perturb_radius']}, "
        f"{s['n_perturb_samples']} samples); seed stability: mean Spearman correlation "
        f"between the maps of method seeds {s['stability_seeds']} (only methods with a "
        "seed; the others are stable by construction: –); sparseness: Gini index.",
        "- Cost: wall-clock seconds of the attribute call per image (1 thread; a shared "
        "machine: compare within a run) and image forward passes per image (exact).",
        f"- Mean over the scenes of a seed, then mean ± sd over the seeds; best per column "
        f"in bold (the control excluded). Device {data['device']}, torch {data['torch']}, "
        f"{data['minutes']:.1f} min in all.",
        "",
        "## Per model",
        "",
        blocks["tables"],
        "",
        "## Per question",
        "",
        blocks["questions"].replace("](../benchmarks/results/scorecard.md)", "](scorecard.md)"),
        "",
        "## Leaders per column",
        "",
        blocks["guide"].replace("](../benchmarks/results/scorecard.md)", "](scorecard.md)"),
        "",
        "Which method when, read from this table: [docs/choosing.md](../../docs/choosing.md).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from captum_clip.benchmark.scorecard import (
        ScorecardSettings,
        run_scorecard,
        settings_dict,
        summarise,
    )

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=ScorecardSettings.n, help="scenes per model and seed")
    p.add_argument("--seeds", type=int, nargs="+", default=list(ScorecardSettings.seeds))
    p.add_argument("--variants", nargs="+", default=None, help="testbed variants (default: all)")
    p.add_argument("--methods", nargs="+", default=None, help="registered names (default: all)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    p.add_argument("--docs-only", action="store_true",
                   help="only rewrite OUT/scorecard.md and the documents from OUT/scorecard.json")  # fmt: skip
    p.add_argument("--no-docs", action="store_true", help="do not rewrite the documents")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "scorecard.json"
    if args.docs_only:
        data = json.loads(json_path.read_text())
        (args.out / "scorecard.md").write_text(markdown(data, data["command"]))
        print(f"wrote {args.out / 'scorecard.md'}")
        for path in write_documents(data):
            print(f"wrote {path}")
        return 0
    torch.set_num_threads(1)
    settings = ScorecardSettings(n=args.n, seeds=tuple(args.seeds))
    t0 = time.perf_counter()
    table = run_scorecard(settings, args.variants, args.methods, not args.no_progress)
    summary = summarise(table)
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python benchmarks/scorecard.py", *given])
    data = {
        "command": command,
        "settings": settings_dict(settings),
        "device": "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "minutes": (time.perf_counter() - t0) / 60,
        "summary": summary.reset_index().to_dict(orient="records"),
    }
    table.to_csv(args.out / "scorecard.csv", index=False)
    json_path.write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")
    text = markdown(data, data["command"])
    (args.out / "scorecard.md").write_text(text)
    print(text)
    print(f"wrote {args.out / 'scorecard.md'}, {json_path}, {args.out / 'scorecard.csv'}")
    if not args.no_docs and args.out.resolve() == RESULTS.resolve():
        for path in write_documents(data):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
