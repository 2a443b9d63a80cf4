"""``captum-clip explain IMAGE --labels "cat,dog"``: zero-shot prediction + CCI/GradCAM figure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captum_clip.commands import _common

DESCRIPTION = """\
Classify one image zero-shot over --labels and explain one class with CCI (cluster concept
importance: which image regions, removed together, change the class score) or ViT GradCAM.
Prints the class probabilities (and CCI's region weights) and writes one figure: the
image, the attribution map (green supports the explained class, red opposes it) and, for
CCI, the regions with their weights.
"""


def add_parser(subparsers) -> None:
    """Registers ``explain``."""
    p = _common.add_parser(
        subparsers,
        "explain",
        help="explain a zero-shot prediction on one image with CCI or GradCAM",
        description=DESCRIPTION,
    )
    p.add_argument("image", help="image file (png, jpg...)")
    p.add_argument("--labels", required=True, help='comma-separated class names, e.g. "cat,dog"')
    _common.add_model_args(p, default="testbed")
    p.add_argument("--method", choices=("cci", "gradcam"), default="cci", help="attribution")
    p.add_argument("--target", help="label to explain (default: the predicted one)")
    p.add_argument(
        "--template",
        help="prompt template with '{}' (default: 'a photo of a {}.'; testbed 'a photo of {}')",
    )
    p.add_argument("--n-clusters", type=int, default=7, help="CCI clusters K (cci only)")
    p.add_argument(
        "--mask-mode",
        choices=("attention", "pixel"),
        help="CCI mode (default: attention on ViTs, pixel otherwise)",
    )
    _common.add_device_arg(p)
    p.add_argument("--out", default="explain.png", help="figure to write (.png, .pdf, ...)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Classifies, explains and writes the figure."""
    path = Path(args.image)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {str(path)!r}")
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if not labels:
        raise ValueError(f"--labels must name at least one class, got {args.labels!r}")
    if args.target is not None and args.target not in labels:
        raise ValueError(f"--target {args.target!r} is not one of the labels {labels}")
    _common.check_positive(args, "n_clusters")
    if args.method == "gradcam" and (args.n_clusters != 7 or args.mask_mode is not None):
        print("warning: --n-clusters/--mask-mode only apply to --method cci", file=sys.stderr)
    templates = [args.template] if args.template else None
    clf, loaded, spec = _common.classifier(args, labels, templates)  # fails first, fast
    import torch

    from captum_clip.attr.cci import CCI
    from captum_clip.attr.gradcam import vit_gradcam
    from captum_clip.storage import read_image
    from captum_clip.viz.figures import explain_figure

    x = loaded.preprocess(read_image(path))
    x = (x[None] if x.ndim == 3 else x).to(clf.text_embeddings.device)
    with torch.no_grad():
        probs = clf(x).softmax(1)[0].cpu()
    pred = int(probs.argmax())
    target = labels.index(args.target) if args.target else pred
    for i in probs.argsort(descending=True).tolist():
        print(f"{labels[i]:>24s}  p={probs[i]:.3f}")
    kind = "predicted" if target == pred else "given (--target)"
    print(f"explaining {kind} class {labels[target]!r} with {args.method}")
    clusters = None
    if args.method == "cci":
        mode = {"mask_mode": args.mask_mode} if args.mask_mode else {}
        attr, res = CCI.default_for(clf, args.n_clusters, **mode).attribute(
            x, target=target, return_clusters=True
        )
        clusters = (res.labels[0].cpu(), res.weights[0].cpu())
        weights = res.weights[0]
        for rank, k in enumerate(torch.nan_to_num(weights, nan=-1e9).argsort(descending=True)):
            if torch.isfinite(weights[k]):
                area = float((res.labels[0] == k).float().mean())
                print(f"  region {rank + 1}: weight {weights[k]:+.3f}  area {area:.2f}")
    else:
        attr = vit_gradcam(clf, x, target=target)
    fig = explain_figure(
        x[0].cpu(),
        attr[0].detach().cpu(),
        method="CCI" if args.method == "cci" else "GradCAM",
        target_name=labels[target],
        target_prob=float(probs[target]),
        target_kind="predicted" if target == pred else "given",
        prediction=(labels[pred], float(probs[pred])),
        model_name=spec.text,
        random_weights=loaded.random_weights,
        clusters=clusters,
    )
    _common.save_figure(fig, args.out)
    return 0
