"""``captum-clip interactions IMAGE "a caption" --out FIG.png``: word x region maps."""

from __future__ import annotations

import argparse
import os

from captum_clip.models import load_clip


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``interactions`` subcommand."""
    p = subparsers.add_parser(
        "interactions",
        help="second-order caption-word x image-patch interaction maps",
        description=(
            "Explain which caption words match which image regions with integrated "
            "interactions (IntegratedInteractions). Without --model the bundled testbed "
            "model is used."
        ),
    )
    p.add_argument("image", help="image file (any format PIL reads)")
    p.add_argument("caption", help="the caption to explain")
    p.add_argument("--out", required=True, help="figure file to write (.png, .pdf, ...)")
    p.add_argument("--model", default=None, help="open_clip name, 'testbed' or 'hf:<folder>'")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag")
    p.add_argument("--checkpoint", default=None, help="local checkpoint for --model")
    p.add_argument("--n-steps", type=int, default=20, help="integration steps (default 20)")
    p.add_argument("--text-layer", type=int, default=-1, help="0 = embeddings, -1 = last block")
    p.add_argument("--image-layer", type=int, default=-1, help="0 = embeddings, -1 = last block")
    p.add_argument("--words", nargs="*", default=None, help="words to map (default: all)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def _load(args: argparse.Namespace):
    if args.model is not None:
        return load_clip(args.model, args.pretrained, args.checkpoint, device=args.device)
    if args.pretrained is not None or args.checkpoint is not None:
        raise ValueError("--pretrained/--checkpoint need --model NAME")
    try:
        return load_clip("testbed", device=args.device)
    except (ValueError, ImportError, FileNotFoundError) as err:
        raise ValueError(
            f"no --model given and the bundled testbed model is not available ({err}); "
            "pass --model NAME [--pretrained TAG | --checkpoint PATH]"
        ) from err


def run(args: argparse.Namespace) -> int:
    """Compute the interactions of one image-caption pair and save the figure."""
    from captum_clip._images import read_image
    from captum_clip.attr.interactions import IntegratedInteractions
    from captum_clip.viz.interactions import plot_interactions

    if not os.path.isfile(args.image):
        raise FileNotFoundError(f"image file not found: {args.image!r}")
    if args.n_steps < 1:
        raise ValueError(f"--n-steps must be >= 1, got {args.n_steps}")
    model, preprocess, tokenizer = _load(args)
    picture = read_image(args.image)
    images = preprocess(picture)[None].to(args.device)
    ii = IntegratedInteractions(model, tokenizer)
    result = ii.explain(
        images,
        [args.caption],
        n_steps=args.n_steps,
        text_layer=args.text_layer,
        image_layer=args.image_layer,
    )
    words = args.words or None
    fig = plot_interactions(result, picture.resize(images.shape[-1:-3:-1]), words=words)
    fig.savefig(args.out, dpi=120)
    tokens = result.tokens[0]
    text_attr = result.text_attr[0]
    print(
        f"score {float(result.score[0]):.4f}  four-term difference "
        f"{float(result.score_difference[0]):.4f}  delta {float(result.delta[0]):.2e}"
    )
    for i, t in enumerate(tokens):
        if t:
            print(f"  {t:>20s} {float(text_attr[i]):+.5f}")
    print(f"wrote {args.out}")
    return 0
