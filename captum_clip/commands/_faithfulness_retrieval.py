"""``captum-clip faithfulness retrieval IMAGES CAPTIONS --model SPEC``.

Also under ``torchrun --nproc_per_node=N -m captum_clip faithfulness retrieval ...``: every
rank attributes its batches, rank 0 scores the gallery and writes the report.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

#: Kept here so ``--help`` does not import torch (a test checks them against the harness).
DEFAULT_METHODS = (
    "CCI", "GradECLIP", "MaskCLIP", "vit_gradcam", "GradientRollout", "Saliency",
    "InputXGradient", "IntegratedGradients",
)  # fmt: skip
PROTOCOL_NAMES = ("grad-eclip", "rise", "none")


def add_retrieval(sub, method_names: tuple[str, ...]) -> None:
    """Registers the ``retrieval`` subcommand on the ``faithfulness`` subparsers."""
    from captum_clip.commands import _common

    p = _common.add_parser(
        sub,
        "retrieval",
        help="deletion/insertion AUC of IR@k and TR@k on a COCO-format caption gallery",
        description="Every image is explained against its own captions (ClipSimilarity); "
        "all images are deleted/inserted step by step and recall@k is computed over the "
        "gallery (docs/retrieval.md). Resumable: run the same command again to continue a "
        "killed run. Under torchrun every rank attributes its batches.",
    )
    p.add_argument("images", help="image folder the captions file's file names are relative to")
    p.add_argument("captions", help="COCO captions JSON (images + annotations) or Karpathy split")
    p.add_argument("--model", required=True, metavar="SPEC", help=_common.SPEC_HELP)
    p.add_argument("--split", help="Karpathy files: only this split, e.g. test (default: all)")
    p.add_argument("--limit", type=int, help="only the first N images (default: all)")
    p.add_argument("--methods", nargs="+", choices=method_names, metavar="NAME",
                   default=list(DEFAULT_METHODS),
                   help="methods, any of: " + ", ".join(method_names))  # fmt: skip
    p.add_argument("--protocol", choices=PROTOCOL_NAMES, default="grad-eclip",
                   help="perturbation preset; grad-eclip: 100 steps to 50%% of the pixels "
                   "scored every 10, noise deletion, black insertion")  # fmt: skip
    p.add_argument("--n-steps", type=int, help="override the preset's steps")
    p.add_argument("--max-fraction", type=float, help="override the preset's range")
    p.add_argument("--deletion-baseline", help="override: zeros, black, blur or noise")
    p.add_argument("--insertion-baseline", help="override: zeros, black, blur or noise")
    p.add_argument("--unit", choices=("pixel", "patch"), help="override the preset's unit")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="recall cut-offs")
    p.add_argument("--batch-size", type=int, default=16, help="images per attribution call")
    p.add_argument("--max-examples-per-batch", type=int, default=256,
                   help="perturbed images per encoder call")  # fmt: skip
    p.add_argument("--cci-k", type=int, default=7, help="K of CCI")
    p.add_argument("--ig-steps", type=int, default=16, help="Integrated Gradients steps")
    p.add_argument("--seed", type=int, default=0, help="seed of tie orders, noise, sampling")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (parts/, CSV tables, retrieval.md, retrieval.png); "
                   "resumes when it exists")  # fmt: skip
    _common.add_device_arg(p)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    _common.add_progress_arg(p)
    p.set_defaults(func=run_retrieval_command)


def run_retrieval_command(args: argparse.Namespace) -> int:
    """Runs the retrieval benchmark from parsed arguments."""
    import torch

    from captum_clip.benchmark.methods import MethodSettings
    from captum_clip.benchmark.retrieval import RetrievalSettings, evaluate_retrieval
    from captum_clip.benchmark.retrieval_report import retrieval_markdown, save_retrieval_plots
    from captum_clip.commands import _common
    from captum_clip.covar.distributed import _env_int
    from captum_clip.datasets import load_captions

    _common.check_positive(
        args, "batch_size", "max_examples_per_batch", "cci_k", "ig_steps", "threads", "limit"
    )
    spec = _common.model_spec(args)  # a bad spec fails before the gallery is read
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    gallery = load_captions(args.captions, args.images, split=args.split, limit=args.limit)
    settings = RetrievalSettings(
        protocol=args.protocol, n_steps=args.n_steps, max_fraction=args.max_fraction,
        deletion_baseline=args.deletion_baseline, insertion_baseline=args.insertion_baseline,
        unit=args.unit, ks=tuple(args.ks), seed=args.seed,
        max_examples_per_batch=args.max_examples_per_batch,
    )  # fmt: skip
    ms = MethodSettings(cci_k=args.cci_k, ig_steps=args.ig_steps)
    result = evaluate_retrieval(
        args.model, gallery, args.out, methods=args.methods, method_settings=ms,
        settings=settings, batch_size=args.batch_size, device=args.device,
        show_progress=not args.no_progress,
    )  # fmt: skip
    if _env_int("RANK", 0) != 0:
        return 0
    if spec.random_weights:
        print(_common.random_weights_warning(spec.text), file=sys.stderr)
    out = Path(args.out)
    png = save_retrieval_plots(
        result,
        out / "retrieval.png",
        title_prefix=(
            f"{args.model} ({_common.RANDOM_WEIGHTS})" if spec.random_weights else args.model
        ),
    )
    command = getattr(args, "command_line", None) or "captum-clip " + shlex.join(sys.argv[1:])
    proto = {
        "grad-eclip": "Grad-ECLIP/CCI preset (100 steps to 50 % of the pixels, scored "
        "every 10; uniform-noise deletion, black insertion)",
        "rise": "RISE preset",
        "none": "no preset (100 steps over all pixels, zeros deletion, blur insertion)",
    }
    overrides = {k: v for k, v in (("n_steps", args.n_steps), ("max_fraction", args.max_fraction),
                 ("deletion_baseline", args.deletion_baseline), ("unit", args.unit),
                 ("insertion_baseline", args.insertion_baseline)) if v is not None}  # fmt: skip
    lines = [
        f"Model {args.model}; captions {args.captions} over {args.images}"
        + (f", split {args.split}" if args.split else "")
        + (f", first {args.limit} images" if args.limit else "")
        + (
            f"; {gallery.n_without_captions} images without captions left out"
            if gallery.n_without_captions
            else ""
        )
        + ".",
        f"Perturbation: {proto[args.protocol]}"
        + (f", overridden: {overrides}" if overrides else "")
        + f"; every image ranked by its own map (channel-summed), ties in a seeded random "
        f"order (seed {args.seed} + batch index).",
        "Targets: each image's cosine with its own caption set (renormalised mean of its "
        "captions' embeddings) through ClipSimilarity.",
        f"Methods: CCI K={args.cci_k}, Integrated Gradients {args.ig_steps} steps; others "
        "as in `faithfulness testbed`. Batches of "
        f"{args.batch_size} images; device {result.device}; torch {torch.__version__}.",
        f"Wall clock of this call: {(time.perf_counter() - t0) / 60:.1f} min "
        f"({result.computed} method-image pairs computed, the rest read from parts/).",
    ]
    text = retrieval_markdown(result, command, lines, png.name)
    md = out / "retrieval.md"
    md.write_text(text)
    print(text)
    _common.wrote(md)
    _common.wrote(png)
    return 0
