"""``captum-clip grounding testbed|folder``: how well caption words are grounded.

``testbed`` draws testbed scenes (every object on an aligned, a conflicting and a neutral
background), ``folder`` reads images, captions, word roles and object masks listed in a
CSV file. Both write the per-image, per-word table (CSV), a Markdown summary (per class,
coverage, unusual scenes / conditions, correlated contexts) and figures.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

from captum_clip.commands import _common

FOLDER_COLUMNS = ("image", "caption", "mask", "object")
OPTIONAL_COLUMNS = ("context", "attribute", "class", "unusual")


def _shared(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--n-steps", type=int, default=20, help="integration steps")
    p.add_argument("--text-layer", type=int, default=-1, help="0 = embeddings, -1 = last block")
    p.add_argument("--image-layer", type=int, default=-1, help="0 = embeddings, -1 = last block")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per explain() call")
    p.add_argument("--examples", type=int, default=3, help="pairs in the example figure")
    _common.add_device_arg(p)
    _common.add_progress_arg(p)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``grounding`` subcommand."""
    p = _common.add_parser(
        subparsers,
        "grounding",
        help="per-word grounding of captions in object masks, per class, failure categories",
        description=__doc__.split("\n\n")[1],
    )
    modes = p.add_subparsers(dest="mode", metavar="MODE")
    t = _common.add_parser(
        modes,
        "testbed",
        help="testbed scenes with exact masks (every object on 3 backgrounds), any models",
    )
    t.add_argument("--model", nargs="+", default=["testbed:default", "testbed:shortcut"],
                   metavar="SPEC", help="one or more " + _common.SPEC_HELP)  # fmt: skip
    t.add_argument("--n", type=int, default=24, help="objects per seed (3 scenes each)")
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="scene seeds")
    _shared(t)
    t.set_defaults(func=run)
    f = _common.add_parser(
        modes,
        "folder",
        help="your images, captions, word roles and masks listed in a CSV file",
        description=(
            "CSV columns: image, caption, mask (paths relative to the CSV file; mask: "
            "non-zero pixels = object), object (the object word in the caption); optional: "
            "context (a word for something outside the object), attribute (words separated "
            "by ';'), class (default: the object word), unusual (0/1)."
        ),
    )
    f.add_argument("csv", help="CSV file listing the pairs")
    f.add_argument("--model", nargs="+", required=True, metavar="SPEC",
                   help="one or more " + _common.SPEC_HELP)  # fmt: skip
    _shared(f)
    f.set_defaults(func=run)
    _common.require_subcommand(p, "testbed, folder")


def _check(args: argparse.Namespace) -> None:
    _common.check_positive(
        args, "n_steps", "batch_size", *(("n",) if args.mode == "testbed" else ())
    )
    if args.examples < 0:
        raise ValueError(f"--examples must be >= 0, got {args.examples}")


def _bool(value: str, where: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes"):
        return True
    if v in ("0", "false", "no", ""):
        return False
    raise ValueError(f"{where}: unusual must be 0/1, got {value!r}")


def _read_folder(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file not found: {path!r}")
    base = Path(path).parent
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in FOLDER_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; need {list(FOLDER_COLUMNS)}, optional "
                f"{list(OPTIONAL_COLUMNS)}"
            )
        entries = []
        for line, row in enumerate(reader, start=2):
            where = f"{path}, line {line}"
            for col in ("image", "mask"):
                full = base / row[col]
                if not full.is_file():
                    raise FileNotFoundError(f"{where}: {col} file not found: {str(full)!r}")
            roles: dict[str, Any] = {"object": row["object"]}
            if row.get("context"):
                roles["context"] = row["context"]
            if row.get("attribute"):
                roles["attribute"] = [w for w in row["attribute"].split(";") if w.strip()]
            meta = {"class": row.get("class") or row["object"], "image": row["image"]}
            if "unusual" in row:
                meta["unusual"] = _bool(row["unusual"] or "", where)
            entries.append({"image": base / row["image"], "mask": base / row["mask"],
                            "caption": row["caption"], "roles": roles, "meta": meta})  # fmt: skip
    if not entries:
        raise ValueError(f"{path} lists no pairs")
    return entries


def _testbed_inputs(args, preprocess) -> tuple[Any, list[dict[str, Any]]]:
    import torch

    from captum_clip.grounding import testbed_scenes
    from captum_clip.testbed import TestbedPreprocess

    parts = [testbed_scenes(args.n, seed) for seed in args.seeds]
    images01 = torch.cat([p.images for p in parts])
    masks = torch.cat([p.masks for p in parts]).float()
    captions = [c for p in parts for c in p.captions]
    if isinstance(preprocess, TestbedPreprocess):
        x, display = preprocess(images01), images01
    else:  # an image preprocess of another model: through PIL like a user's pictures
        x, display, masks = _through_pil(preprocess, images01, masks)
    roles = [r for p in parts for r in p.roles]
    meta = [m for p in parts for m in p.meta]
    return (x, display, masks, captions, roles), meta


def _through_pil(preprocess, images01, masks):
    import torch
    from torchvision.transforms.functional import to_pil_image

    from captum_clip.grounding import prepare_pil

    out = [
        prepare_pil(preprocess, to_pil_image(img), to_pil_image((m > 0.5).to(torch.uint8) * 255))
        for img, m in zip(images01, masks)
    ]
    return tuple(torch.stack(list(t)) for t in zip(*out))


def _folder_inputs(entries, preprocess):
    import torch

    from captum_clip.grounding import prepare_pil
    from captum_clip.storage import read_image

    out = [prepare_pil(preprocess, read_image(e["image"], None), read_image(e["mask"], None))
           for e in entries]  # fmt: skip
    x, display, masks = (torch.stack(list(t)) for t in zip(*out))
    return x, display, masks, [e["caption"] for e in entries], [e["roles"] for e in entries]


def run(args: argparse.Namespace) -> int:
    """Run the analysis for every model and write the table, summary and figures."""
    from captum_clip.attr import IntegratedInteractions
    from captum_clip.grounding import analyse
    from captum_clip.grounding.report import write_report
    from captum_clip.models.spec import parse_model_spec, resolve_device

    _check(args)
    specs = [parse_model_spec(s) for s in args.model]  # bad specs fail before any work
    device = resolve_device(args.device)
    entries = _read_folder(args.csv) if args.mode == "folder" else None
    os.makedirs(args.out, exist_ok=True)
    rows, examples, random = [], {}, []
    for spec in specs:
        loaded = spec.load(device)
        if spec.random_weights:
            print(_common.random_weights_warning(spec.text), file=sys.stderr)
            random.append(spec.text)
        if entries is None:
            (x, display, masks, captions, roles), meta = _testbed_inputs(args, loaded.preprocess)
        else:
            x, display, masks, captions, roles = _folder_inputs(entries, loaded.preprocess)
            meta = [e["meta"] for e in entries]
        meta = [dict(m, model=spec.text) for m in meta]
        ii = IntegratedInteractions(loaded.model, loaded.tokenizer)
        part, kept = analyse(
            ii, x.to(device), captions, masks, roles, meta, batch_size=args.batch_size,
            show_progress=not args.no_progress, keep=1, n_steps=args.n_steps,
            text_layer=args.text_layer, image_layer=args.image_layer,
        )  # fmt: skip
        rows.extend(part)
        k = min(args.examples, kept[0].attributions.shape[0]) if kept else 0
        examples[spec.text] = (
            kept[0] if kept else None,
            display[:k],
            masks[:k],
            roles[:k],
            captions[:k],
        )
    spread = "seed" if args.mode == "testbed" and len(args.seeds) > 1 else None
    skip = ("func", "no_progress", "command")
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    from captum_clip.grounding import markdown, summarise

    cols = ["model", "role", "n", "area_share", "object_share", "pointing", "misplaced"]
    print(markdown(summarise(rows, ("model", "role"), spread), cols))
    for path in write_report(rows, examples, args.out, args.mode, spread, settings, random):
        _common.wrote(path)
    return 0
