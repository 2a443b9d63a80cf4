"""``captum-clip covar build|eval`` (also ``python -m captum_clip.covar build|eval`` and
``torchrun --nproc_per_node=N -m captum_clip.covar eval ...``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

BUILD_EPILOG = """\
sources:
  --source testbed   pattern discs of the shapes testbed on its backgrounds (64 px)
  --source folders   --instances DIR with <class>/<name>.png + <class>/<name>.mask.png
                     (or RGBA PNGs), --backgrounds DIR with images
"""


def _add_build(sub) -> None:
    p = sub.add_parser(
        "build",
        help="composites of foregrounds on backgrounds under 1 + 11 transforms, exact masks",
        epilog=BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (resumes if it exists)")
    p.add_argument("--source", choices=("testbed", "folders"), default="testbed")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_build)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="accuracy, diagnosis and BG-Er/FG-Er/Fine-Er per subset")
    p.add_argument("root", help="folder written by `covar build`")
    p.add_argument(
        "--models",
        nargs="+",
        default=["testbed"],
        help="testbed, testbed:<variant>, <open_clip name>[:<tag or checkpoint>], hf:<folder>",
    )
    p.add_argument("--out", required=True, help="output folder (resumes if it exists)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-batches", type=int, default=4, help="batches per saved chunk")
    p.add_argument("--n-clusters", type=int, default=5, help="CCI clusters K")
    p.add_argument("--tau", type=float, default=0.5, help="fg_share threshold")
    p.add_argument("--fine-threshold", type=float, default=0.8)
    p.add_argument("--subsets", nargs="+", help="only these transforms")
    p.add_argument("--limit", type=int, help="only the first N images (sorted by id)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_eval)


def add_parser(subparsers) -> None:
    """Registers ``covar`` with its ``build`` and ``eval`` subcommands."""
    p = subparsers.add_parser("covar", help="build and evaluate COVAR-style benchmarks")
    sub = p.add_subparsers(dest="covar_command", metavar="{build,eval}")
    _add_build(sub)
    _add_eval(sub)
    p.set_defaults(func=lambda args: p.print_help() or 0)


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
    print(
        f"{len(res.manifest)} composites in {res.root} ({res.written} written, "
        f"{res.skipped} already there)"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Runs ``covar eval`` from parsed arguments."""
    from captum_clip.covar.distributed import _env_int
    from captum_clip.covar.evaluate import evaluate

    res = evaluate(
        args.root,
        args.models,
        args.out,
        batch_size=args.batch_size,
        chunk_batches=args.chunk_batches,
        n_clusters=args.n_clusters,
        tau=args.tau,
        fine_threshold=args.fine_threshold,
        subsets=args.subsets,
        limit=args.limit,
        device=args.device,
        plot=not args.no_plot,
        show_progress=not args.no_progress,
    )
    if _env_int("RANK", 0) == 0:
        cols = ["model", "subset", "n", "accuracy", "bg_er_of_all", "bg_er_rate", "fg_er_rate",
                "fine_er_rate"]  # fmt: skip
        with __import__("pandas").option_context("display.width", 200):
            print(res.summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"results in {res.out_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m captum_clip.covar build|eval ...``."""
    parser = argparse.ArgumentParser(prog="python -m captum_clip.covar")
    sub = parser.add_subparsers(dest="covar_command", metavar="{build,eval}")
    _add_build(sub)
    _add_eval(sub)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"covar {args.covar_command}: error: {err}", file=sys.stderr)
        return 2
