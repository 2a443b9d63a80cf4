"""``captum-clip covar build|eval`` (also ``python -m captum_clip covar build|eval`` and
``torchrun --nproc_per_node=N -m captum_clip covar eval ...``)."""

from __future__ import annotations

import argparse
import os
import sys

from captum_clip.commands import _common, _diagnosis

BUILD_EPILOG = """\
sources:
  --source testbed   pattern discs of the shapes testbed on its backgrounds (64 px)
  --source folders   --instances DIR with <class>/<name>.png + <class>/<name>.mask.png
                     (or RGBA PNGs), --backgrounds DIR with images
"""


def _add_build(sub) -> None:
    p = _common.add_parser(
        sub,
        "build",
        help="composites of foregrounds on backgrounds under 1 + 11 transforms, exact masks",
        epilog=BUILD_EPILOG,
    )
    p.add_argument("--out", required=True, help="output folder (resumes if it exists)")
    p.add_argument(
        "--source",
        choices=("testbed", "folders"),
        default="testbed",
        help="where objects come from",
    )
    p.add_argument("--instances", help="folder of cut-outs (--source folders)")
    p.add_argument("--backgrounds", help="folder of background images (--source folders)")
    p.add_argument("--n-per-class", type=int, default=2, help="testbed instances per class")
    p.add_argument("--n-backgrounds", type=int, default=8, help="testbed backgrounds")
    p.add_argument("--classes", nargs="+", help="testbed classes (default: all)")
    p.add_argument("--size", type=int, help="composite side (default 64 testbed, 224 folders)")
    p.add_argument(
        "--object-size",
        type=float,
        help="object box side / image side before transforms (default: native scale for "
        "the testbed, 0.6 for folders); 0 keeps the native scale",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of instances, placements, transforms")
    _common.add_progress_arg(p)
    p.set_defaults(func=run_build)


EVAL_DESCRIPTION = """\
Zero-shot accuracy and the foreground/background diagnosis of every model on every subset
(transform) of a `covar build` folder. The driver of each prediction is decided by region
ablation (default: the object and the background hidden in turn) or, with --diagnosis cci,
by the paper's CCI fg_share >= --tau. Resumable: finished chunks are kept (an --out folder
holds one --diagnosis). Writes the per-image results, a summary table and a plot into
--out, and prints the summary; columns:
n images, accuracy, bg_er_of_all = background-driven errors / all images, bg_er_rate /
fg_er_rate / fine_er_rate = BG-Er / FG-Er / Fine-Er as shares of the errors.
"""


#: How ``--diagnosis`` decides the driver, for the line under the printed summary.
_DRIVER = {
    "region_ablation": "region ablation, background-driven = hiding the background lowers "
    "the predicted logit more than hiding the object",
    "cci": "the paper's CCI (K={k}), background-driven = fg_share < tau = {tau}",
}


def _add_eval(sub) -> None:
    p = _common.add_parser(
        sub,
        "eval",
        help="accuracy, diagnosis and BG-Er/FG-Er/Fine-Er per subset",
        description=EVAL_DESCRIPTION,
    )
    p.add_argument("root", help="folder written by `covar build`")
    p.add_argument(
        "--models",
        "--model",
        nargs="+",
        default=["testbed"],
        metavar="SPEC",
        help="one or more model specs: " + _common.SPEC_HELP,
    )
    _common.add_tokenizer_arg(p)
    p.add_argument("--out", required=True, help="output folder (resumes if it exists)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--chunk-batches", type=int, default=4, help="batches per saved chunk")
    _diagnosis.add_diagnosis_arg(p)
    p.add_argument(
        "--masks",
        choices=("manifest", "concepts"),
        default="manifest",
        help="object masks: the folder's exact ones, or concept masks from one reference "
        "--namer for every model (see below)",
    )
    _diagnosis.add_concept_args(p)
    p.add_argument("--n-clusters", type=int, default=5, help="CCI clusters K (--diagnosis cci)")
    p.add_argument("--tau", type=float, default=0.5, help="fg_share threshold (--diagnosis cci)")
    p.add_argument(
        "--fine-threshold",
        type=float,
        default=0.8,
        help="text-embedding cosine above which two classes are close (Fine-Er)",
    )
    p.add_argument("--subsets", nargs="+", help="only these transforms (default: all)")
    p.add_argument("--limit", type=int, help="only the first N images, sorted by id (default: all)")
    _common.add_device_arg(p)
    p.add_argument("--no-plot", action="store_true", help="do not draw covar_eval.png")
    _common.add_progress_arg(p)
    p.set_defaults(func=run_eval)


def add_parser(subparsers) -> None:
    """Registers ``covar`` with its ``build`` and ``eval`` subcommands."""
    p = _common.add_parser(subparsers, "covar", help="build and evaluate COVAR-style benchmarks")
    sub = p.add_subparsers(dest="covar_command", metavar="{build,eval}")
    _add_build(sub)
    _add_eval(sub)
    _common.require_subcommand(p, "build, eval")


def run_build(args: argparse.Namespace) -> int:
    """Runs ``covar build`` from parsed arguments."""
    from captum_clip import covar

    if args.source == "testbed":
        if args.instances or args.backgrounds:
            raise ValueError("--instances/--backgrounds need --source folders")
        size = args.size or 64
        instances = covar.testbed_instances(
            args.n_per_class, size=size, seed=args.seed, classes=args.classes
        )
        backgrounds = covar.testbed_backgrounds(args.n_backgrounds, size=size, seed=args.seed)
        object_size = args.object_size or None
    else:
        if not args.instances or not args.backgrounds:
            raise ValueError("--source folders needs --instances DIR and --backgrounds DIR")
        size = args.size or 224
        instances = covar.folder_instances(args.instances)
        backgrounds = covar.folder_backgrounds(args.backgrounds)
        object_size = 0.6 if args.object_size is None else (args.object_size or None)
    res = covar.build(
        args.out,
        instances,
        backgrounds,
        size=size,
        seed=args.seed,
        object_size=object_size,
        show_progress=not args.no_progress,
    )
    print(f"{len(res.manifest)} composites ({res.written} written, {res.skipped} already there)")
    _common.wrote(f"{res.root}{os.sep}")  # one line for the folder of composites
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Runs ``covar eval`` from parsed arguments."""
    from captum_clip.covar.distributed import _env_int
    from captum_clip.covar.evaluate import evaluate
    from captum_clip.models.spec import parse_model_spec

    for spec in args.models:
        if parse_model_spec(spec).random_weights:
            print(_common.random_weights_warning(spec), file=sys.stderr)
    _diagnosis.warn_unused(args, 5)
    _diagnosis.warn_concept_args(args)
    masks = None
    if args.masks == "concepts":
        if not args.namer:
            raise ValueError(
                "covar eval --masks concepts needs --namer SPEC: one reference model names the "
                "regions for every evaluated model"
            )
        masks = _diagnosis.concept_masks(args, None, args.device)
    res = evaluate(
        args.root,
        args.models,
        args.out,
        batch_size=args.batch_size,
        chunk_batches=args.chunk_batches,
        n_clusters=args.n_clusters,
        tau=args.tau,
        diagnosis=args.diagnosis,
        fine_threshold=args.fine_threshold,
        subsets=args.subsets,
        limit=args.limit,
        device=args.device,
        plot=not args.no_plot,
        show_progress=not args.no_progress,
        tokenizer=args.tokenizer,
        masks=masks,
    )
    if _env_int("RANK", 0) == 0:
        from captum_clip.storage import find_table

        cols = ["model", "subset", "n", "accuracy", "bg_er_of_all", "bg_er_rate", "fg_er_rate",
                "fine_er_rate"]  # fmt: skip
        print(_common.markdown_table(res.summary[cols]))
        print(
            "\nbg_er_of_all = background-driven errors / all images; *_rate = BG-Er, FG-Er, "
            "Fine-Er as shares of the errors (docs/covar.md). Diagnosis: "
            + _DRIVER[args.diagnosis].format(k=args.n_clusters, tau=args.tau)
            + (f"; object masks: concept masks named by {args.namer}" if masks else "")
            + "."
        )
        for stem in ("results", "summary"):
            _common.wrote(find_table(res.out_dir, stem))
        if (res.out_dir / "covar_eval.png").is_file() and not args.no_plot:
            _common.wrote(res.out_dir / "covar_eval.png")
    return 0
