"""``captum-clip interactions IMAGE "a caption"``: word x region interaction maps."""

from __future__ import annotations

import argparse
import os

from captum_clip.commands import _common

DESCRIPTION = """\
Explain which caption words match which image regions with integrated interactions
(IntegratedInteractions): A[t, p] is the second-order interaction of caption token t with
image patch p, and the entries sum to score(image, caption) minus the three baseline
scores. Prints, per token, its interaction with all image patches (the sums the figure
shows over each word map and in its bar chart; the image's CLS token is not included) and
writes one figure: the image, one map per word (blue = the word and region lower the
score together, red = raise it) and a bar chart of every token.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``interactions`` subcommand."""
    p = _common.add_parser(
        subparsers,
        "interactions",
        help="second-order caption-word x image-patch interaction maps",
        description=DESCRIPTION,
    )
    p.add_argument("image", help="image file (any format PIL reads)")
    p.add_argument("caption", help="the caption to explain")
    p.add_argument("--out", default="interactions.png", help="figure file (.png, .pdf, ...)")
    _common.add_model_args(p, default="testbed")
    p.add_argument("--n-steps", type=int, default=20, help="integration steps")
    p.add_argument("--text-layer", type=int, default=-1, help="0 = embeddings, -1 = last block")
    p.add_argument("--image-layer", type=int, default=-1, help="0 = embeddings, -1 = last block")
    p.add_argument("--words", nargs="*", default=None, metavar="WORD",
                   help="words or quoted phrases to map; a phrase selects every token it "
                   "spans, every occurrence (default: every word)")  # fmt: skip
    _common.add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute the interactions of one image-caption pair and save the figure."""
    if not os.path.isfile(args.image):
        raise FileNotFoundError(f"image file not found: {args.image!r}")
    _common.check_positive(args, "n_steps")
    loaded, spec = _common.load_model(args)  # fails first, fast

    from captum_clip.attr.interactions import IntegratedInteractions
    from captum_clip.storage import read_image
    from captum_clip.viz.interactions import plot_interactions
    from captum_clip.viz.marks import mark_random_weights

    picture = read_image(args.image)
    images = loaded.preprocess(picture)[None]
    images = images.to(next(loaded.model.parameters()).device)
    ii = IntegratedInteractions(loaded.model, loaded.tokenizer)
    result = ii.explain(
        images,
        [args.caption],
        n_steps=args.n_steps,
        text_layer=args.text_layer,
        image_layer=args.image_layer,
    )
    words = args.words or None
    title = (
        f"{spec.text}: caption {args.caption!r}, score {float(result.score[0]):.3f}; the "
        f"interactions sum to the four-term difference {float(result.score_difference[0]):.3f} "
        f"(delta {float(result.delta[0]):.1e})"
    )
    fig = plot_interactions(
        result, picture.resize(images.shape[-1:-3:-1]), words=words, title=title
    )
    if loaded.random_weights:
        mark_random_weights(fig)
    print(
        f"score {float(result.score[0]):.4f}  four-term difference "
        f"{float(result.score_difference[0]):.4f}  delta {float(result.delta[0]):.2e}"
    )
    print("interaction of each token with all image patches (CLS excluded):")
    scores = result.token_scores(pair=0)
    for t, v in zip(result.tokens[0], scores.tolist()):
        if t:
            print(f"  {t:>20s} {v:+.5f}")
    if words:
        print("the same, summed over each word or phrase of --words:")
        for w, v in zip(words, result.token_scores(pair=0, words=words).tolist()):
            print(f"  {w:>20s} {v:+.5f}")
    _common.save_figure(fig, args.out, dpi=120)
    return 0
