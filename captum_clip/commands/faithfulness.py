"""``captum-clip faithfulness testbed|folder``: attribution methods x faithfulness metrics."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from captum_clip.commands import _common
from captum_clip.methods import METHODS as REGISTRY

DEFAULT_OUT = "captum_clip_faithfulness/faithfulness.md"
CCI_VARIANTS = (
    "CCI", "CCI multi-K", "CCI sufficiency", "CCI banzhaf", "CCI shapley", "CCI shapley prob",
    "CCI sampled-shapley",
)  # fmt: skip
PEERS = (
    "Saliency", "InputXGradient", "Occlusion", "FeatureAblation", "KernelShap", "Lime",
    "pgc GradCAM", "Cross-game banzhaf", "Cross-game FIxLIP", "edge-map control",
)  # fmt: skip
#: The benchmark's rows (``captum_clip.benchmark.METHODS``, a test checks): the paper's CCI
#: and its variants, every registered method (``captum_clip.methods``) under its label, and
#: the peers; the benchmark-only names are kept here so ``--help`` imports no torch.
METHOD_NAMES = CCI_VARIANTS + tuple(m.label for m in REGISTRY.values()) + PEERS
#: What ``--methods`` takes: those, or a registered name (``attnlrp-cp``).
METHOD_CHOICES = METHOD_NAMES + tuple(REGISTRY)
METHOD_DEFAULTS = dict(
    cci_k=7, cci_multi_k=(3, 5, 7, 9), ig_steps=16, superpixels=24, shap_samples=64, batch_size=64
)
METRIC_DEFAULTS = dict(
    n_steps=10,
    deletion_baseline="zeros",
    insertion_baseline="blur",
    road_percentages=(20, 50, 80),
    pointing_tolerance=2,
)


def _shared_args(p: argparse.ArgumentParser) -> None:
    ms, mt = METHOD_DEFAULTS, METRIC_DEFAULTS
    g = p.add_argument_group("methods")
    g.add_argument(
        "--methods", nargs="+", choices=METHOD_CHOICES, metavar="NAME",
        help="methods to run (default all): " + ", ".join(repr(m) for m in METHOD_NAMES)
        + "; or a registered name: " + ", ".join(REGISTRY) + ". The report compares every "
        "method with 'CCI', or without it with the first method given here",
    )  # fmt: skip
    g.add_argument("--cci-k", type=int, default=ms["cci_k"], help="K of CCI")
    g.add_argument(
        "--cci-multi-k", type=int, nargs="+", default=list(ms["cci_multi_k"]),
        help="Ks of the multi-K CCI ensemble",
    )  # fmt: skip
    g.add_argument("--ig-steps", type=int, default=ms["ig_steps"], help="IntegratedGradients steps")
    g.add_argument("--superpixels", type=int, default=ms["superpixels"], help="SLIC segments")
    g.add_argument(
        "--shap-samples", type=int, default=ms["shap_samples"], help="KernelShap/Lime samples"
    )
    g.add_argument("--batch-size", type=int, default=ms["batch_size"], help="rows per forward")
    g = p.add_argument_group("metrics")
    g.add_argument("--n-steps", type=int, default=mt["n_steps"], help="deletion/insertion steps")
    g.add_argument(
        "--deletion-baseline", default=mt["deletion_baseline"],
        help="what deleted pixels become: zeros (the mean colour), blur, ...",
    )  # fmt: skip
    g.add_argument(
        "--insertion-baseline", default=mt["insertion_baseline"],
        help="the image insertion starts from: blur, zeros, ...",
    )  # fmt: skip
    g.add_argument(
        "--road-percentages", type=float, nargs="+", default=list(mt["road_percentages"]),
        help="ROAD: percentages of pixels removed",
    )  # fmt: skip
    g.add_argument(
        "--pointing-tolerance", type=int, default=mt["pointing_tolerance"],
        help="pointing game: pixels the maximum may lie outside the mask",
    )  # fmt: skip
    g = p.add_argument_group("run")
    g.add_argument("--chunk-size", type=int, default=16, help="images per attribution call")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    _common.add_device_arg(g)
    g.add_argument(
        "--out", default=DEFAULT_OUT,
        help="Markdown report; the curve plots go next to it (<stem>_<model>.png)",
    )  # fmt: skip
    g.add_argument("--csv", help="also write the per-image table here (default: not written)")
    _common.add_progress_arg(g)


def add_parser(subparsers) -> None:
    """Registers ``faithfulness`` with its ``testbed`` and ``folder`` subcommands."""
    p = _common.add_parser(
        subparsers, "faithfulness", help="benchmark attribution methods with faithfulness metrics"
    )
    sub = p.add_subparsers(dest="faithfulness_command", metavar="{testbed,folder,retrieval}")
    t = _common.add_parser(sub, "testbed", help="the testbed zoo (exact masks, causal labels)")
    t.add_argument("--variants", nargs="+", help="zoo variants (default: all available)")
    t.add_argument("--n", type=int, default=48, help="scenes per model")
    t.add_argument("--rho", type=float, default=0.5, help="shortcut strength of the scenes")
    t.add_argument("--seed", type=int, default=None, help="scene seed (default: held out)")
    _shared_args(t)
    t.set_defaults(func=run_testbed_command)
    f = _common.add_parser(sub, "folder", help="any CLIP on an image folder")
    f.add_argument("images", help="image folder: flat, or one sub-folder per class")
    f.add_argument("--model", required=True, metavar="SPEC", help=_common.SPEC_HELP)
    _common.add_tokenizer_arg(f)
    f.add_argument("--classes", nargs="+", help="class names (default: the sub-folders)")
    f.add_argument(
        "--templates", nargs="+", help="prompt templates with one {} (default: the model's)"
    )
    f.add_argument(
        "--masks", help="mask folder (same relative paths, white = object; default: none)"
    )
    f.add_argument(
        "--target", choices=("pred", "label"), default="pred",
        help="explain the predicted class or the sub-folder's class",
    )  # fmt: skip
    f.add_argument("--max-images", type=int, help="use at most this many images (default: all)")
    f.add_argument(
        "--imagenet", action="store_true",
        help="ImageNet layout: sorted WordNet-id sub-folders = class index, the 1000 class "
        "names and 80 OpenAI templates of open_clip (--classes/--templates override; "
        "--classes is needed when there are not 1000 sub-folders)",
    )  # fmt: skip
    _shared_args(f)
    f.set_defaults(func=run_folder_command, chunk_size=8)
    from captum_clip.commands._faithfulness_retrieval import add_retrieval

    add_retrieval(sub, METHOD_CHOICES)
    _common.require_subcommand(p, "testbed, folder, retrieval")


def _settings(args: argparse.Namespace):
    from captum_clip.benchmark.faithfulness import MetricSettings
    from captum_clip.benchmark.methods import MethodSettings

    for name in ("cci_k", "ig_steps", "superpixels", "shap_samples", "batch_size", "n_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.chunk_size < 1 or args.threads < 1:
        raise ValueError("--chunk-size and --threads must be >= 1")
    ms = MethodSettings(
        cci_k=args.cci_k,
        cci_multi_k=tuple(args.cci_multi_k),
        ig_steps=args.ig_steps,
        superpixels=args.superpixels,
        shap_samples=args.shap_samples,
        batch_size=args.batch_size,
    )
    mt = MetricSettings(
        n_steps=args.n_steps,
        deletion_baseline=args.deletion_baseline,
        insertion_baseline=args.insertion_baseline,
        road_percentages=tuple(args.road_percentages),
        pointing_tolerance=args.pointing_tolerance,
    )
    return ms, mt


def _setting_lines(args, ms, mt, extra: list[str]) -> list[str]:
    import torch

    try:
        from importlib.metadata import version

        pgc = f"grad-cam {version('grad-cam')}"
    except Exception:  # not installed
        pgc = "grad-cam not installed (peer skipped)"
    return extra + [
        f"Method settings (the tables list the methods that ran): CCI K={ms.cci_k} and multi-K {ms.cci_multi_k} (attention mode on ViTs, "
        f"logit score; the 'CCI <estimator>' rows: K={ms.cci_k} regions valued by that estimator, "
        f"'CCI sampled-shapley' K={ms.cci_sampled_k} with {ms.cci_budget} masked forwards, docs/cci.md), vit_gradcam (second-to-last block), MaskCLIP, GradECLIP, "
        f"GradientRollout (all blocks), IntegratedGradients ({ms.ig_steps} steps, zero "
        "= mean-colour baseline), Saliency, InputXGradient, Occlusion (patch-sized windows, "
        f"stride = patch, zero baseline), FeatureAblation / KernelShap / Lime on SLIC "
        f"superpixels (n_segments={ms.superpixels}, zero baseline; KernelShap and Lime "
        f"{ms.shap_samples} samples per image, Captum defaults otherwise), pytorch-grad-cam "
        f"GradCAM on ln_1 of the last block ({pgc}).",
        f"Deletion/insertion: {mt.n_steps} steps over all pixels (ranked by the "
        f"channel-summed map, ties in a seeded random order), deletion baseline "
        f"'{mt.deletion_baseline}', insertion baseline '{mt.insertion_baseline}'; "
        "probability and top-1 curves from the same perturbed images; AUC = trapezoid over "
        "the fraction changed (mean score).",
        f"ROAD: combined (LeRF - MoRF)/2 of the target probability, noisy linear imputation, "
        f"mean over {list(mt.road_percentages)} % removed. Pointing game tolerance "
        f"{mt.pointing_tolerance} px; mask share = positive mass inside the mask.",
        "fg/bg AUROC: mask share as a score for the causal label 'foreground' vs "
        "'background' (captum_clip.testbed.causal_labels: background swap / object removal).",
        "Cost: wall-clock seconds of the attribute call per image (k-means, SLIC, "
        "surrogate fits included); forwards = images entering the vision tower's patch "
        "embedding (counting hook), autograd = those recorded for a backward pass.",
        f"Targets: the predicted class unless stated above. Device {args.device}, torch {torch.__version__}, "
        f"{args.threads} thread(s), chunks of {args.chunk_size} images.",
    ]


def _write(results, args, extra_settings: list[str], elapsed: float) -> int:
    import pandas as pd

    from captum_clip.benchmark.report import markdown_report, save_curve_plots, slug

    ms, mt = args._settings
    out = Path(args.out)
    plots = {}
    for r in results:
        png = out.with_name(f"{out.stem}_{slug(r.model)}.png")
        save_curve_plots(
            r, png, "true" if getattr(args, "target", "pred") == "label" else "predicted"
        )
        plots[r.model] = png.name
    command = getattr(args, "command_line", None) or "captum-clip " + shlex.join(sys.argv[1:])
    lines = _setting_lines(args, ms, mt, extra_settings)
    cpu = time.process_time() - args._cpu0
    lines.append(
        f"Total time of the run: {elapsed / 60:.1f} min wall clock, {cpu / 60:.1f} min CPU "
        "(the machine is shared; wall clock grows with the load of other jobs)."
    )
    text = markdown_report(results, command, lines, plots, getattr(args, "notes", ()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(_summary(results))
    _common.wrote(out)
    for name in plots.values():
        _common.wrote(out.with_name(name))
    if args.csv:
        table = pd.concat([r.table.assign(model=r.model) for r in results], ignore_index=True)
        _common.write_table(table, args.csv)
    return 0


SUMMARY_COLUMNS = (  # (column of FaithfulnessResult.summary(), header)
    ("deletion_prob", "deletion AUC (lower = better)"),
    ("insertion_prob", "insertion AUC (higher = better)"),
    ("mask_share", "mask share"),
    ("seconds_per_image", "s / image"),
)


def _summary(results) -> str:
    """A short Markdown table per model (the full report is in the file)."""
    blocks = []
    for r in results:
        s = r.summary()
        cols = [(c, h) for c, h in SUMMARY_COLUMNS if c in s.columns]
        rows = [{"method": m, **{h: row[c] for c, h in cols}} for m, row in s.iterrows()]
        blocks.append(f"{r.model} ({r.n_images} images):\n")
        blocks.append(_common.markdown_table(rows, ["method"] + [h for _, h in cols]) + "\n")
    return "\n".join(blocks)


def _start_run(args: argparse.Namespace) -> dict:
    """Threads, device and settings of a run; the keyword arguments both runners share."""
    import torch

    from captum_clip.models.spec import resolve_device

    torch.set_num_threads(args.threads)
    args.device = str(resolve_device(args.device))
    args._settings = _settings(args)
    args._cpu0 = time.process_time()
    return dict(
        methods=args.methods,
        method_settings=args._settings[0],
        metric_settings=args._settings[1],
        chunk_size=args.chunk_size,
        device=args.device,
        show_progress=not args.no_progress,
    )


def run_testbed_command(args: argparse.Namespace) -> int:
    """Benchmarks the testbed zoo."""
    from captum_clip.benchmark.inputs import TESTBED_SEED, run_testbed

    seed = TESTBED_SEED if args.seed is None else args.seed
    common = _start_run(args)
    t0 = time.perf_counter()
    results = run_testbed(args.variants, n=args.n, rho=args.rho, seed=seed, **common)
    extra = [
        f"Testbed scenes: {args.n} per model, rho={args.rho} (half of them on the class's "
        f"own background), seed {seed} (held out), exact object masks; models: "
        + ", ".join(r.model for r in results)
        + "."
    ]
    return _write(results, args, extra, time.perf_counter() - t0)


def run_folder_command(args: argparse.Namespace) -> int:
    """Benchmarks a user's model on an image folder."""
    from captum_clip.benchmark.inputs import run_folder
    from captum_clip.models.spec import parse_model_spec

    if parse_model_spec(args.model).random_weights:
        print(_common.random_weights_warning(args.model), file=sys.stderr)

    classes, templates, labels_by = args.classes, args.templates, "name"
    if args.imagenet:
        from captum_clip.benchmark.imagenet import imagenet_folder_classes, imagenet_templates

        classes = imagenet_folder_classes(args.images, args.classes)
        templates = templates or imagenet_templates()
        labels_by = "order"
    common = _start_run(args)
    t0 = time.perf_counter()
    result = run_folder(
        args.model,
        args.images,
        classes,
        args.masks,
        templates=templates,
        target=args.target,
        max_images=args.max_images,
        labels_by=labels_by,
        tokenizer=args.tokenizer,
        **common,
    )
    extra = [
        f"Model {args.model}, images from {args.images}"
        + (f", masks from {args.masks}" if args.masks else " (no masks: no localisation)")
        + f", {result.n_images} images, target = {args.target}."
        + (
            f" ImageNet layout: sorted sub-folders = class index, {len(classes)} classes, "
            f"{len(templates)} templates"
            + (" (open_clip's OpenAI ImageNet templates)." if not args.templates else ".")
            if args.imagenet
            else ""
        )
    ]
    return _write([result], args, extra, time.perf_counter() - t0)
