"""``captum-clip diagnose testbed|folder``: is each prediction foreground- or background-driven?"""

from __future__ import annotations

import argparse
from pathlib import Path

from captum_clip.commands import _common, _diagnosis

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

DESCRIPTION = """\
For every image: decide whether the prediction is foreground- or background-driven, and
sort every error into BG-Er (background-driven), Fine-Er (foreground-driven, close
classes) or FG-Er (other foreground-driven). --diagnosis region_ablation (default) hides
the object and, separately, the background and calls the costlier one the driver;
--diagnosis cci (the paper's) explains the predicted class with CCI and calls it
foreground-driven when fg_share (positive attribution mass inside the object mask) >=
--tau. Prints a Markdown summary (rows explained, see docs/diagnosis.md); --out writes the
per-image table (region_ablation adds fg_effect / bg_effect; cci fills iou).
"""
FOLDER_EPILOG = """\
layout:
  IMAGES/<class name>/<image>.jpg        labels from the sub-folder names
  MASKS/<class name>/<image stem>.png    object masks (white = object), same names
masks instead from SAM: --sam-checkpoint FILE (boxes from --grounding-dino DIR, else from
the top CCI cluster, K = --n-clusters -- a heuristic that biases the diagnosis towards
"foreground"); or with no segmenter: --masks concepts (--namer SPEC names the regions).
"""


def _common_args(p: argparse.ArgumentParser) -> None:
    _diagnosis.add_method_args(p)
    _common.add_device_arg(p)
    _common.add_table_out_arg(p)
    _common.add_progress_arg(p)


def add_parser(subparsers) -> None:
    """Registers ``diagnose`` with its ``testbed`` and ``folder`` subcommands."""
    p = _common.add_parser(
        subparsers,
        "diagnose",
        help="foreground/background diagnosis of predictions",
        description=DESCRIPTION,
    )
    sub = p.add_subparsers(dest="diagnose_command", metavar="{testbed,folder}")
    t = _common.add_parser(
        sub, "testbed", help="testbed scenes with exact masks (+ causal ground truth)"
    )
    _common.add_model_args(t, default="testbed:shortcut")
    t.add_argument("--n", type=int, default=200, help="number of scenes")
    t.add_argument("--rho", type=float, default=0.5, help="shortcut strength of the scenes")
    t.add_argument("--seed", type=int, default=0, help="scene seed")
    t.add_argument(
        "--causal",
        action="store_true",
        help="also score the diagnosis against interventional labels (agreement, AUROC)",
    )
    t.add_argument(
        "--masks",
        choices=("truth", "concepts"),
        default="truth",
        help="object masks: the scenes' exact ones, or concept masks (see below)",
    )
    _diagnosis.add_concept_args(t)
    _common_args(t)
    t.set_defaults(func=run_testbed)
    f = _common.add_parser(
        sub, "folder", help="an image folder with masks (or SAM masks)", epilog=FOLDER_EPILOG
    )
    f.add_argument("images", help="IMAGES folder with one sub-folder per class")
    f.add_argument(
        "--masks",
        help="MASKS folder (same layout, any image suffix), or 'concepts' (see below)",
    )
    _common.add_model_args(f, default="ViT-B-32:openai")
    f.add_argument("--classes", nargs="+", help="class names (default: the sub-folders)")
    f.add_argument(
        "--templates", nargs="+", help="prompt templates with one {} (default: the model's)"
    )
    _diagnosis.add_sam_args(f, "masks from SAM instead of --masks")
    _diagnosis.add_concept_args(f)
    _common_args(f)
    f.set_defaults(func=run_folder)
    _common.require_subcommand(p, "testbed, folder")


def _finish(d, args, spec, what: str, causal: dict | None = None) -> int:
    print(f"Diagnosis of {spec.text} on {what}: {_diagnosis.describe(args)}\n")
    print(_diagnosis.summary_table(d.summary(), args.tau, args.fine_threshold))
    if causal is not None:
        score = "fg_effect - bg_effect" if d.mode == "region_ablation" else "fg_share"
        print(f"\n{score} vs interventional truth (testbed.causal_labels):\n")
        print(_diagnosis.causal_table(causal, d.mode))
    if args.out:
        _common.write_table(d.table, args.out)
    return 0


def run_testbed(args: argparse.Namespace) -> int:
    """Diagnoses testbed scenes with their exact masks."""
    from captum_clip.diagnosis import causal_agreement, diagnose
    from captum_clip.testbed import causal, shapes

    _common.check_positive(args, "n", "n_clusters", "batch_size")
    _diagnosis.warn_unused(args, 7)
    _diagnosis.warn_concept_args(args)
    clf, loaded, spec = _common.classifier(args, list(shapes.CLASS_NAMES))
    device = clf.text_embeddings.device
    size = clf.image_size[0] if clf.image_size else 64
    scenes = shapes.generate_scenes(args.n, seed=args.seed, rho=args.rho, size=size)
    x = shapes.normalize(scenes.images).to(device)
    masks = scenes.masks
    if args.masks == "concepts":
        masks = _diagnosis.concept_masks(args, loaded, device)
    d = diagnose(
        clf,
        x,
        masks,
        scenes.labels,
        method=_diagnosis.method(args, clf),
        tau=args.tau,
        fine_threshold=args.fine_threshold,
        internal_batch_size=args.batch_size,
        show_progress=not args.no_progress,
    )
    agreement = None
    if args.causal:
        truth = causal.causal_labels(
            clf, scenes, device=device, internal_batch_size=args.batch_size
        )
        d.table["causal"] = truth.labels
        agreement = causal_agreement(d, truth, args.tau)
    what = f"{args.n} testbed scenes (rho={args.rho}, seed {args.seed})"
    return _finish(d, args, spec, what, agreement)


def _files(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }


def run_folder(args: argparse.Namespace) -> int:
    """Diagnoses an image folder with masks from files or from SAM."""
    import torch

    from captum_clip.diagnosis import diagnose
    from captum_clip.masks import preprocess_mask
    from captum_clip.storage import read_image

    root = Path(args.images)
    if not root.is_dir():
        raise ValueError(f"image folder not found: {str(root)!r}")
    if (args.masks is None) == (args.sam_checkpoint is None):
        raise ValueError(
            "give exactly one mask source: --masks DIR, --masks concepts or --sam-checkpoint FILE"
        )
    concepts = args.masks == "concepts"
    if args.masks and not concepts and not Path(args.masks).is_dir():
        raise ValueError(f"--masks must be a MASKS folder or 'concepts', got {args.masks!r}")
    _diagnosis.warn_concept_args(args)
    _common.check_positive(args, "n_clusters", "batch_size")
    _diagnosis.warn_unused(args, 7, cci_boxes=bool(args.sam_checkpoint and not args.grounding_dino))
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    classes = list(args.classes) if args.classes else subdirs
    extra = [s for s in subdirs if s not in classes]
    if extra or not subdirs:
        raise ValueError(f"sub-folders {extra or subdirs} are not among the classes {classes}")
    clf, loaded, spec = _common.classifier(args, classes, args.templates)
    device = clf.text_embeddings.device
    images, labels, masks, paths = [], [], [], []
    for name in subdirs:
        files = args.masks and not concepts
        mask_files = _files(Path(args.masks) / name) if files else {}
        for stem, path in _files(root / name).items():
            images.append(loaded.preprocess(read_image(path)))
            if files:
                if stem not in mask_files:
                    raise ValueError(f"no mask for {path} in {Path(args.masks) / name}")
                mask = read_image(mask_files[stem], None)
                masks.append(preprocess_mask(mask, loaded.preprocess))
            labels.append(classes.index(name))
            paths.append(str(path))
    if not images:
        raise ValueError(f"no images under {str(root)!r}")
    x = torch.stack(images).to(device)
    if concepts:
        provider = _diagnosis.concept_masks(args, loaded, device)
    elif args.masks:
        provider = torch.stack(masks)
    else:
        provider = _diagnosis.sam_masker(args, clf, device)
    d = diagnose(
        clf,
        x,
        provider,
        torch.tensor(labels),
        method=_diagnosis.method(args, clf),
        tau=args.tau,
        fine_threshold=args.fine_threshold,
        internal_batch_size=args.batch_size,
        show_progress=not args.no_progress,
    )
    d.table.insert(0, "path", paths)
    return _finish(d, args, spec, f"{len(paths)} images from {str(root)!r}")
