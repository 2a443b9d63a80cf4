"""``captum-clip explain IMAGE --labels "cat,dog"``: zero-shot prediction + CCI/GradCAM figure."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def add_parser(subparsers) -> None:
    """Registers ``explain``."""
    p = subparsers.add_parser(
        "explain", help="explain a zero-shot prediction on one image with CCI or GradCAM"
    )
    p.add_argument("image", help="image file (png, jpg...)")
    p.add_argument("--labels", required=True, help='comma-separated class names, e.g. "cat,dog"')
    p.add_argument(
        "--model",
        default="testbed",
        help="open_clip architecture, 'hf:<dir>' or 'testbed' (default)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pretrained", help="open_clip pretrained tag (downloads on first use)")
    src.add_argument("--checkpoint", help="local checkpoint file for --model")
    p.add_argument("--method", choices=("cci", "gradcam"), default="cci")
    p.add_argument("--target", help="label to explain (default: the predicted one)")
    p.add_argument(
        "--template",
        help="prompt template with '{}' (default 'a photo of a {}.'; testbed 'a photo of {}')",
    )
    p.add_argument("--n-clusters", type=int, default=7, help="CCI clusters K (default 7)")
    p.add_argument(
        "--mask-mode", choices=("attention", "pixel"), help="CCI mode (default: attention on ViTs)"
    )
    p.add_argument("--out", required=True, help="figure to write (e.g. fig.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from matplotlib.figure import Figure

    from captum_clip._images import read_image
    from captum_clip.attr.cci import CCI
    from captum_clip.attr.gradcam import vit_gradcam
    from captum_clip.models import ClipClassifier, load_clip
    from captum_clip.viz.maps import overlay, plot_clusters

    path = Path(args.image)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {str(path)!r}")
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if not labels:
        raise ValueError(f"--labels must name at least one class, got {args.labels!r}")
    if args.target is not None and args.target not in labels:
        raise ValueError(f"--target {args.target!r} is not one of the labels {labels}")
    loaded = load_clip(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint)
    model, preprocess, tokenizer = loaded
    template = args.template or ("a photo of {}" if args.model == "testbed" else "a photo of a {}.")
    clf = ClipClassifier(model, tokenizer, labels, templates=[template])
    x = preprocess(read_image(path))
    x = x[None] if x.ndim == 3 else x
    with torch.no_grad():
        probs = clf(x).softmax(1)[0]
    target = labels.index(args.target) if args.target else int(probs.argmax())
    for i in probs.argsort(descending=True).tolist():
        print(f"{labels[i]:>24s}  p={probs[i]:.3f}")
    print(f"explaining {labels[target]!r} with {args.method}")

    fig = Figure(figsize=(9 if args.method == "cci" else 6, 3.2))
    axes = fig.subplots(1, 3 if args.method == "cci" else 2)
    overlay(x[0], torch.zeros(x.shape[-2:]), title="image", ax=axes[0])
    if args.method == "cci":
        mode = args.mask_mode or ("attention" if clf.vision.is_vit else "pixel")
        attr, res = CCI(clf, n_clusters=args.n_clusters, mask_mode=mode).attribute(
            x, target=target, return_clusters=True
        )
        plot_clusters(x[0], res.labels[0], res.weights[0], ax=axes[2])
        order = torch.nan_to_num(res.weights[0], nan=-float("inf")).argsort(descending=True)
        for k in order[: int(torch.isfinite(res.weights[0]).sum())].tolist():
            area = float((res.labels[0] == k).float().mean())
            print(f"  cluster {k}: weight {res.weights[0, k]:+.3f}  area {area:.2f}")
    else:
        attr = vit_gradcam(clf, x, target=target)
    overlay(x[0], attr[0], title=f"{args.method}: {labels[target]}", ax=axes[1])
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"figure: {out}")
    return 0
