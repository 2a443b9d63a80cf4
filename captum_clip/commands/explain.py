"""``captum-clip explain IMAGE --labels "cat,dog"``: zero-shot prediction + CCI/GradCAM figure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captum_clip.commands import _common
from captum_clip.methods import METHOD_NAMES

DESCRIPTION = """\
Classify one image zero-shot over --labels and explain one class with any registered
attribution method (--method; docs/methods.md lists them with what they cost and which
towers they run on). Prints the class probabilities (and CCI's region values) and writes
one figure: the image, the attribution map (green supports the explained class, red
opposes it) and, for CCI, the regions with their weights. Every default is the Python
default: --method cci runs CCI(clf) (sufficiency over K=32 regions); --estimator occlusion
is the paper's leave-one-out. A method the model's vision tower cannot run is refused with
the reason and the methods that run on it.
"""

ESTIMATORS: tuple[str, ...] = (
    "occlusion", "sufficiency", "shapley", "banzhaf", "sampled_shapley", "owen"
)  # fmt: skip
"""``--estimator`` choices: ``captum_clip.attr.ESTIMATORS`` (a test checks), spelled out so
that building the parser imports nothing heavy."""
EXACT: tuple[str, ...] = ("shapley", "banzhaf")
"""Estimators that evaluate all 2^K coalitions: K <= :data:`MAX_EXACT_K`."""
MASK_MODES: tuple[str, ...] = ("auto", "attention", "pixel")  # attr._cci_settings (tested)
CCI_OPTIONS: tuple[str, ...] = ("n_clusters", "estimator", "mask_mode")
"""Options passed to ``CCI(clf, ...)`` only when given: unset, CCI's own defaults apply."""
MAX_EXACT_K = 10  # captum_clip.attr._regions.MAX_EXACT_K (a test checks)
SAMPLED: tuple[str, ...] = ("sampled_shapley", "owen")  # captum_clip.attr._regions.BUDGETED
BUDGET = 63  # captum_clip.attr._regions.DEFAULT_BUDGET: masked forwards of the sampled ones
ESTIMATOR_HELP = (
    "CCI's region value (cci only; default: CCI(clf)'s, sufficiency: the logit with only "
    "the region visible minus the logit with nothing visible; K+2 forwards); occlusion is "
    "the paper's (the drop of the class logit when the region alone is hidden; K+1 "
    "forwards); shapley / banzhaf "
    f"are exact over all 2^K coalitions (--n-clusters <= {MAX_EXACT_K}); sampled_shapley / "
    f"owen sample Shapley / Owen values within {BUDGET} masked forwards per image "
    f"(--n-clusters <= {BUDGET}); docs/cci.md compares them"
)
#: What a region's value is, per estimator (the header of the printed region list).
VALUE_MEANING = {
    "occlusion": "the drop of the class logit when the region alone is hidden",
    "sufficiency": (
        "the class logit with only the region visible minus the logit with nothing visible"
    ),
    "shapley": "the region's exact Shapley value over all coalitions of hidden regions",
    "banzhaf": "the region's exact Banzhaf value over all coalitions of hidden regions",
    "sampled_shapley": f"the region's Shapley value sampled within {BUDGET} masked forwards",
    "owen": (
        "the region's Owen value (regions grouped by k-means) sampled within "
        f"{BUDGET} masked forwards"
    ),
}


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
    p.add_argument(
        "--method", choices=METHOD_NAMES, default="cci", metavar="NAME",
        help="attribution method, one of the registry's (captum_clip.methods): "
        + ", ".join(METHOD_NAMES),
    )  # fmt: skip
    p.add_argument("--target", help="label to explain (default: the predicted one)")
    p.add_argument(
        "--template",
        help="prompt template with '{}' (default: 'a photo of a {}.'; testbed 'a photo of {}')",
    )
    p.add_argument(
        "--n-clusters", type=int,
        help="CCI regions K (cci only; default: CCI(clf)'s for the estimator, 32 for "
        "sufficiency, 7 for occlusion / shapley / banzhaf, 16 for the sampled ones; at most "
        "the patches of the tower)",
    )  # fmt: skip
    p.add_argument("--estimator", choices=ESTIMATORS, help=ESTIMATOR_HELP)
    p.add_argument(
        "--mask-mode", choices=MASK_MODES,
        help="CCI masking (cci only; default: CCI(clf)'s, auto = attention on ViTs, pixel "
        "otherwise)",
    )  # fmt: skip
    p.add_argument(
        "--concepts",
        nargs="?",
        const="general",
        metavar="FILE",
        help="name CCI's regions in words (cci only): FILE lists the words (one per line, '#' "
        "comments); without FILE the bundled general list of visual concepts; the --labels "
        "are added. Prints the named-region table and labels the regions in the figure "
        "(docs/concepts.md)",
    )
    p.add_argument(
        "--namer",
        metavar="SPEC",
        help="--concepts: the model that names the regions (a reference CLIP; default: the "
        "explained model)",
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
    options = {k: getattr(args, k) for k in CCI_OPTIONS if getattr(args, k) is not None}
    if options and args.method != "cci":
        given = ", ".join("--" + k.replace("_", "-") for k in options)
        verb = "applies" if len(options) == 1 else "apply"
        print(f"warning: {given} only {verb} to --method cci", file=sys.stderr)
        options = {}
    check_estimator(options.get("estimator"), options.get("n_clusters"))
    if args.concepts is not None and args.method != "cci":
        raise ValueError("--concepts names CCI's regions; use it with --method cci")
    if args.namer is not None and args.concepts is None:
        raise ValueError("--namer names the regions of --concepts; add --concepts [FILE]")
    if args.concepts not in (None, "general") and not Path(args.concepts).is_file():
        raise ValueError(f"--concepts vocabulary file not found: {args.concepts!r}")
    templates = [args.template] if args.template else None
    clf, loaded, spec = _common.classifier(args, labels, templates)  # fails first, fast
    import torch

    from captum_clip.methods import build, get_method, pixel_map
    from captum_clip.storage import read_image
    from captum_clip.viz.figures import explain_figure

    method = build(args.method, clf, **options)  # refusals before any output
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
    title = get_method(args.method).title
    if args.method == "cci":
        attr, res = method.attribute(x, target=target, return_clusters=True)
        clusters = (res.labels[0].cpu(), res.weights[0].cpu())
        print_regions(res, method.estimator)
        title = cci_name(method.estimator)
    else:
        attr = pixel_map(args.method, method, clf, x, target)
    names = None
    if args.concepts is not None:
        names = print_concepts(args, x, res, labels, loaded)
    fig = explain_figure(
        x[0].cpu(),
        attr[0].detach().cpu(),
        method=title,
        target_name=labels[target],
        target_prob=float(probs[target]),
        target_kind="predicted" if target == pred else "given",
        prediction=(labels[pred], float(probs[pred])),
        model_name=spec.text,
        random_weights=loaded.random_weights,
        clusters=clusters,
        region_names=names,
    )
    _common.save_figure(fig, args.out)
    return 0


def print_concepts(args: argparse.Namespace, x, res, labels: list[str], loaded) -> list:
    """Names CCI's regions (``--concepts`` / ``--namer``), prints the table, returns the
    best name per region for the figure."""
    from captum_clip.concepts import name_regions, resolve_vocabulary

    namer, who = loaded, "the explained model"
    if args.namer:
        from captum_clip.models.spec import parse_model_spec, resolve_device

        spec = parse_model_spec(args.namer)
        namer, who = spec.load(resolve_device(args.device)), spec.text
        if namer.random_weights:
            print(_common.random_weights_warning(spec.text), file=sys.stderr)
    vocabulary = resolve_vocabulary(args.concepts, labels)
    named = name_regions(x, res, vocabulary, namer=namer)
    print(
        f"named regions (namer: {who}; {len(named.vocabulary)} words): share = the region's "
        "CCI weight (value / sum of |values|), cos = cosine of the region and its name"
    )
    table = named.table().sort_values("share", ascending=False)
    for _, row in table.iterrows():
        print(
            f"  {row['name']:>20s}  share {row['share']:+.3f}  cos {row['score']:.3f}  "
            f"area {row['area']:.2f}  (then: {row['names'].split(', ', 1)[-1]})"
        )
    return named.best[0]


def print_regions(res, estimator: str) -> None:
    """CCI's regions, highest weight first, with their values and areas."""
    import torch

    weights, values = res.weights[0], res.values[0]
    print(
        f"CCI {estimator}, K={res.n_clusters}, highest first; value = "
        f"{VALUE_MEANING[estimator]} (the number in front: value / sum of |values|)"
    )  # no "weight" in this line: scripts read the region lines by that word
    for rank, k in enumerate(torch.nan_to_num(weights, nan=-1e9).argsort(descending=True)):
        if torch.isfinite(weights[k]):
            area = float((res.labels[0] == k).float().mean())
            print(
                f"  region {rank + 1}: weight {weights[k]:+.3f}  value {values[k]:+.3f}"
                f"  area {area:.2f}"
            )


def check_estimator(estimator: str | None, n_clusters: int | None) -> None:
    """ValueError naming the options when ``--n-clusters`` is too large for ``--estimator``
    (before the model is loaded; CCI checks the same with its own K, capped at the grid)."""
    if estimator is None or n_clusters is None:
        return
    if estimator in EXACT and n_clusters > MAX_EXACT_K:
        raise ValueError(
            f"--estimator {estimator} evaluates all 2^K coalitions and allows --n-clusters <= "
            f"{MAX_EXACT_K}, got {n_clusters}; use --estimator sampled_shapley for more regions"
        )
    if estimator in SAMPLED and n_clusters > BUDGET:
        raise ValueError(
            f"--estimator {estimator} samples within {BUDGET} masked forwards per image and "
            f"allows --n-clusters <= {BUDGET}, got {n_clusters}"
        )


def cci_name(estimator: str) -> str:
    """Name of the CCI map in the figure: plain ``CCI`` for the paper's."""
    return "CCI" if estimator == "occlusion" else f"CCI ({estimator})"
