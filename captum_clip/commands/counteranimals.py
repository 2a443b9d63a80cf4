"""``captum-clip counteranimals ROOT``: common vs counter accuracy and the diagnosis split."""

from __future__ import annotations

import argparse
import math

from captum_clip.commands import _common, _diagnosis

DESCRIPTION = """\
Zero-shot accuracy on CounterAnimals' common vs counter (unusual) backgrounds and the drop
between them. With a mask source every image is also diagnosed (--diagnosis: region
ablation by default, or the paper's CCI) and the drop split into BG-Er / Fine-Er / FG-Er
parts (differences of per-image error rates; they sum to the drop).
"""
EPILOG = """\
ROOT holds the class folders "<ImageNet index> <name>/{common-*,counter-*}/*.jpg"
(e.g. .../LAION-final). Without a mask source only the accuracies are reported; with
--sam-checkpoint (plus --grounding-dino for GroundedSAM boxes), or with --masks concepts
(no segmenter: regions named as the class by --namer), every image is also diagnosed and
the accuracy drop split into BG-Er / Fine-Er / FG-Er.
"""
SPLIT_MEANING = {
    "bg": "part of the drop from background-driven errors (BG-Er)",
    "fine": "part from foreground-driven errors between close classes (Fine-Er)",
    "fg": "part from other foreground-driven errors (FG-Er)",
    "unknown": "part from errors with an empty mask",
    "bg_share": "bg / drop",
}


def add_parser(subparsers) -> None:
    """Registers ``counteranimals``."""
    p = _common.add_parser(
        subparsers,
        "counteranimals",
        help="CounterAnimals: common vs counter backgrounds, diagnosed",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument("root", help="folder with the '<index> <name>' class folders")
    _common.add_model_args(p, default="ViT-B-32:openai")
    p.add_argument(
        "--templates", nargs="+", help="prompt templates with one {} (default: the model's)"
    )
    _diagnosis.add_sam_args(p, "enables the diagnosis")
    p.add_argument(
        "--masks",
        choices=("concepts",),
        help="concept masks instead of SAM (enables the diagnosis; see below)",
    )
    _diagnosis.add_concept_args(p)
    _diagnosis.add_method_args(p)
    _common.add_device_arg(p)
    _common.add_table_out_arg(p)
    _common.add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluates a model on a CounterAnimals folder."""
    from captum_clip.counteranimals import CounterAnimals, evaluate

    _common.check_positive(args, "n_clusters", "batch_size")
    if args.masks and args.sam_checkpoint:
        raise ValueError("give one mask source: --masks concepts or --sam-checkpoint FILE")
    if args.sam_checkpoint or args.masks:  # without a mask source nothing is diagnosed
        _diagnosis.warn_unused(
            args, 7, cci_boxes=bool(args.sam_checkpoint) and not args.grounding_dino
        )
    _diagnosis.warn_concept_args(args)
    names = CounterAnimals(args.root).class_names
    clf, loaded, spec = _common.classifier(args, names, args.templates)
    device = clf.text_embeddings.device
    ds = CounterAnimals(args.root, transform=loaded.preprocess)
    if args.masks == "concepts":
        masks = _diagnosis.concept_masks(args, loaded, device)
    else:
        masks = _diagnosis.sam_masker(args, clf, device)
    res = evaluate(
        clf,
        ds,
        masks,
        batch_size=args.batch_size,
        device=device,
        method=_diagnosis.method(args, clf) if masks is not None else None,
        tau=args.tau,
        fine_threshold=args.fine_threshold,
        show_progress=not args.no_progress,
    )
    print(f"CounterAnimals with {spec.text}: {len(ds)} images\n")
    rows = [
        {"quantity": f"accuracy ({group})", "value": acc, "meaning": f"{group} backgrounds"}
        for group, acc in res.accuracy.items()
    ]
    rows.append({"quantity": "drop", "value": res.drop, "meaning": "common - counter"})
    for key, value in res.split.items():
        if not (isinstance(value, float) and math.isnan(value)):
            rows.append({"quantity": key, "value": value, "meaning": SPLIT_MEANING.get(key, "")})
    print(_common.markdown_table(rows, ["quantity", "value", "meaning"]))
    if res.diagnosis is not None:
        print(f"\nDiagnosis: {_diagnosis.describe(args)}.")
        print("\n" + _diagnosis.caveat(res.diagnosis.mode, args.tau))
    if args.out:
        _common.write_table(res.table, args.out)
    return 0
