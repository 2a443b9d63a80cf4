"""``captum-clip counteranimals ROOT``: common vs counter accuracy and the diagnosis split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """\
ROOT holds the class folders "<ImageNet index> <name>/{common-*,counter-*}/*.jpg"
(e.g. .../LAION-final). Without a mask source only the accuracies are reported; with
--sam-checkpoint (plus --grounding-dino for GroundedSAM boxes) every image is also
diagnosed and the accuracy drop split into BG-Er / Fine-Er / FG-Er.
"""


def add_parser(subparsers) -> None:
    """Registers ``counteranimals``."""
    p = subparsers.add_parser(
        "counteranimals",
        help="CounterAnimals: common vs counter backgrounds, diagnosed",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("root", help="folder with the '<index> <name>' class folders")
    p.add_argument(
        "--model",
        default="ViT-B-32:openai",
        help="open_clip name[:tag or checkpoint] or hf:<folder>",
    )
    p.add_argument("--templates", nargs="+", help="prompt templates with one {}")
    p.add_argument("--sam-checkpoint", help="SAM checkpoint file (enables the diagnosis)")
    p.add_argument("--sam-model-type", default="vit_b")
    p.add_argument("--grounding-dino", help="local Grounding DINO folder (GroundedSAM)")
    p.add_argument("--n-clusters", type=int, default=7, help="CCI clusters K")
    p.add_argument("--tau", type=float, default=0.5)
    p.add_argument("--fine-threshold", type=float, default=0.8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the per-image table here (.csv or .parquet)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluates a model on a CounterAnimals folder."""
    from captum_clip.commands.diagnose import _classifier, _method
    from captum_clip.counteranimals import CounterAnimals, evaluate
    from captum_clip.masks import GroundedSamMasker, SamMasker

    names = CounterAnimals(args.root).class_names
    clf, entry = _classifier(args.model, names, args.templates, args.device)
    ds = CounterAnimals(args.root, transform=entry.preprocess)
    masks = None
    if args.sam_checkpoint and args.grounding_dino:
        masks = GroundedSamMasker(
            args.grounding_dino, args.sam_checkpoint, args.sam_model_type, args.device
        )
    elif args.sam_checkpoint:
        masks = SamMasker(
            args.sam_checkpoint,
            args.sam_model_type,
            args.device,
            classifier=clf,
            cci_kwargs={"n_clusters": args.n_clusters},
        )
    elif args.grounding_dino:
        raise ValueError("--grounding-dino needs --sam-checkpoint as well")
    res = evaluate(
        clf,
        ds,
        masks,
        batch_size=args.batch_size,
        device=args.device,
        method=_method(clf, args.n_clusters) if masks is not None else None,
        tau=args.tau,
        fine_threshold=args.fine_threshold,
        show_progress=not args.no_progress,
    )
    print(
        json.dumps(
            {"n": len(ds), "accuracy": res.accuracy, "drop": res.drop, "split": res.split},
            indent=2,
            default=float,
        )
    )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".parquet":
            res.table.to_parquet(out, index=False)
        elif out.suffix == ".csv":
            res.table.to_csv(out, index=False)
        else:
            raise ValueError(f"--out must end in .csv or .parquet, got {str(out)!r}")
        print(f"table written to {out}")
    return 0
