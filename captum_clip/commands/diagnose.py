"""``captum-clip diagnose testbed|folder``: foreground- or background-driven predictions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

FOLDER_EPILOG = """\
layout:
  IMAGES/<class name>/<image>.jpg        labels from the sub-folder names
  MASKS/<class name>/<image stem>.png    object masks (white = object), same names
masks instead from SAM: --sam-checkpoint FILE (boxes from --grounding-dino DIR, else from
the top CCI cluster -- a heuristic that biases the diagnosis towards "foreground").
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tau", type=float, default=0.5, help="fg_share threshold (default 0.5)")
    p.add_argument(
        "--fine-threshold",
        type=float,
        default=0.8,
        help="text-embedding cosine above which classes are close (Fine-Er)",
    )
    p.add_argument("--n-clusters", type=int, default=7, help="CCI clusters K (default 7)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the per-image table here (.csv or .parquet)")
    p.add_argument("--no-progress", action="store_true")


def add_parser(subparsers) -> None:
    """Registers ``diagnose`` with its ``testbed`` and ``folder`` subcommands."""
    p = subparsers.add_parser("diagnose", help="foreground/background diagnosis of predictions")
    sub = p.add_subparsers(dest="diagnose_command", metavar="{testbed,folder}")
    t = sub.add_parser("testbed", help="testbed scenes with exact masks (+ causal ground truth)")
    t.add_argument(
        "--model",
        default="testbed:shortcut",
        help="testbed:<variant> (default testbed:shortcut) or another model spec",
    )
    t.add_argument("--n", type=int, default=200, help="number of scenes")
    t.add_argument("--rho", type=float, default=0.5, help="shortcut strength of the scenes")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--causal",
        action="store_true",
        help="also score fg_share against the causal labels (accuracy, AUROC)",
    )
    _common(t)
    t.set_defaults(func=run_testbed)
    f = sub.add_parser(
        "folder",
        help="an image folder with masks (or SAM masks)",
        epilog=FOLDER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("images", help="IMAGES folder with one sub-folder per class")
    f.add_argument("--masks", help="MASKS folder (same layout, any image suffix)")
    f.add_argument(
        "--model",
        default="ViT-B-32:openai",
        help="open_clip name[:tag or checkpoint], hf:<folder>, testbed[:variant]",
    )
    f.add_argument("--classes", nargs="+", help="class names (default: the sub-folders)")
    f.add_argument("--templates", nargs="+", help="prompt templates with one {}")
    f.add_argument("--sam-checkpoint", help="SAM checkpoint file (masks from SAM)")
    f.add_argument("--sam-model-type", default="vit_b")
    f.add_argument("--grounding-dino", help="local Grounding DINO folder (GroundedSAM boxes)")
    _common(f)
    f.set_defaults(func=run_folder)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def _classifier(spec: str, class_names: list[str], templates, device: str):
    from captum_clip.covar._models import DEFAULT_TEMPLATES, TESTBED_TEMPLATES, resolve_model
    from captum_clip.models import ClipClassifier

    entry = resolve_model(spec).load(torch.device(device))
    default = TESTBED_TEMPLATES if spec.startswith("testbed") else DEFAULT_TEMPLATES
    templates = templates or entry.templates or default
    return ClipClassifier(entry.model, entry.tokenizer, class_names, templates=templates), entry


def _method(clf, n_clusters: int):
    from captum_clip.attr.cci import CCI

    vit = clf.vision.is_vit
    k = min(n_clusters, clf.vision.n_patches) if vit else n_clusters
    return CCI(clf, n_clusters=k, mask_mode="attention" if vit else "pixel")


def _finish(d, args, extra: dict | None = None) -> int:
    summary = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.summary().items()}
    if extra:
        summary.update(extra)
    print(json.dumps(summary, indent=2, default=float))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".parquet":
            d.table.to_parquet(out, index=False)
        elif out.suffix == ".csv":
            d.table.to_csv(out, index=False)
        else:
            raise ValueError(f"--out must end in .csv or .parquet, got {str(out)!r}")
        print(f"table written to {out}")
    return 0


def run_testbed(args: argparse.Namespace) -> int:
    """Diagnoses testbed scenes with their exact masks."""
    from captum_clip.diagnosis import causal_agreement, diagnose
    from captum_clip.testbed import causal, shapes

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    clf, _ = _classifier(args.model, list(shapes.CLASS_NAMES), None, args.device)
    size = clf.image_size[0] if clf.image_size else 64
    scenes = shapes.generate_scenes(args.n, seed=args.seed, rho=args.rho, size=size)
    x = shapes.normalize(scenes.images).to(args.device)
    d = diagnose(
        clf,
        x,
        scenes.masks,
        scenes.labels,
        method=_method(clf, args.n_clusters),
        tau=args.tau,
        fine_threshold=args.fine_threshold,
        internal_batch_size=args.batch_size,
        show_progress=not args.no_progress,
    )
    extra = None
    if args.causal:
        truth = causal.causal_labels(
            clf, scenes, device=args.device, internal_batch_size=args.batch_size
        )
        d.table["causal"] = truth.labels
        extra = {"causal": causal_agreement(d, truth, args.tau)}
    return _finish(d, args, extra)


def _files(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }


def run_folder(args: argparse.Namespace) -> int:
    """Diagnoses an image folder with masks from files or from SAM."""
    from captum_clip._images import read_image
    from captum_clip.diagnosis import diagnose
    from captum_clip.masks import GroundedSamMasker, SamMasker, preprocess_mask

    root = Path(args.images)
    if not root.is_dir():
        raise ValueError(f"image folder not found: {str(root)!r}")
    if (args.masks is None) == (args.sam_checkpoint is None):
        raise ValueError("give exactly one mask source: --masks DIR or --sam-checkpoint FILE")
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    classes = list(args.classes) if args.classes else subdirs
    extra = [s for s in subdirs if s not in classes]
    if extra or not subdirs:
        raise ValueError(f"sub-folders {extra or subdirs} are not among the classes {classes}")
    clf, entry = _classifier(args.model, classes, args.templates, args.device)
    images, labels, masks, paths = [], [], [], []
    for name in subdirs:
        mask_files = _files(Path(args.masks) / name) if args.masks else {}
        for stem, path in _files(root / name).items():
            images.append(entry.preprocess(read_image(path)))
            if args.masks:
                if stem not in mask_files:
                    raise ValueError(f"no mask for {path} in {Path(args.masks) / name}")
                masks.append(preprocess_mask(read_image(mask_files[stem], None), entry.preprocess))
            labels.append(classes.index(name))
            paths.append(str(path))
    if not images:
        raise ValueError(f"no images under {str(root)!r}")
    x = torch.stack(images).to(args.device)
    if args.masks:
        provider = torch.stack(masks)
    elif args.grounding_dino:
        provider = GroundedSamMasker(
            args.grounding_dino, args.sam_checkpoint, args.sam_model_type, args.device
        )
    else:
        provider = SamMasker(
            args.sam_checkpoint,
            args.sam_model_type,
            args.device,
            classifier=clf,
            cci_kwargs={"n_clusters": args.n_clusters},
        )
    d = diagnose(
        clf,
        x,
        provider,
        torch.tensor(labels),
        method=_method(clf, args.n_clusters),
        tau=args.tau,
        fine_threshold=args.fine_threshold,
        internal_batch_size=args.batch_size,
        show_progress=not args.no_progress,
    )
    d.table.insert(0, "path", paths)
    return _finish(d, args)
