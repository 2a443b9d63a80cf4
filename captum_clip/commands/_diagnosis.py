"""What ``diagnose``, ``counteranimals`` and ``covar eval`` share: ``--diagnosis`` (region
ablation or the paper's CCI), the mask source and the readable summary table (columns
explained, caveat)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from captum_clip.commands import _common

DIAGNOSES: tuple[str, ...] = ("region_ablation", "cci")
"""``--diagnosis`` choices, default first: ``captum_clip.diagnosis.METHODS`` (a test checks),
spelled out so that building the parser imports nothing heavy."""
DIAGNOSIS_HELP = (
    "how the foreground/background driver is decided: region_ablation hides the object and, "
    "separately, the background (2 extra forwards per image) and calls the costlier one the "
    "driver; cci is the paper's diagnosis, fg_share >= --tau of CCI's map (K+1 forwards per "
    "image; docs/diagnosis.md compares them)"
)

#: (summary key, row name, what it means); ``{tau}``/``{fine}`` are filled in.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("n", "images", "images diagnosed"),
    ("accuracy", "accuracy", "top-1 zero-shot accuracy"),
    ("foreground", "foreground-driven", "fg_share >= {tau}"),
    ("background", "background-driven", "fg_share < {tau}"),
    ("unknown", "no mask", "empty object mask: not decided"),
    ("mean_fg_share", "mean fg_share", "positive attribution mass inside the object mask"),
    ("mean_iou", "mean IoU", "IoU of the top-attributed pixels (mask-sized) with the mask"),
    ("n_errors", "errors", "misclassified images"),
    ("bg_er", "BG-Er", "errors that are background-driven"),
    ("fine_er", "Fine-Er", "foreground-driven errors between close classes (text cos >= {fine})"),
    ("fg_er", "FG-Er", "other foreground-driven errors"),
)
#: (row name, meaning) in region-ablation mode where they differ (``mean IoU`` is NaN there).
ABLATION_ROWS: dict[str, tuple[str, str]] = {
    "foreground": (
        "foreground-driven",
        "hiding the object lowers the logit at least as much as hiding the background",
    ),
    "background": (
        "background-driven",
        "hiding the background lowers the logit more than hiding the object",
    ),
    "unknown": ("not decided", "object mask covers no or every patch (ViT) / pixel"),
    "mean_fg_share": (
        "mean fg_share",
        "object's share of the positive logit drops: fg+ / (fg+ + bg+)",
    ),
}
CAVEAT = (
    "Caveat: 'driven' is a threshold on an attribution share (fg_share >= tau = {tau}), not a "
    "causal test. The share grows with the object's area and differs between attribution "
    "methods, so the background-driven count can be far from the causal truth; compare "
    "models at one tau, and on the testbed check it with --causal (interventional labels)."
)
ABLATION_CAVEAT = (
    "Caveat: 'driven' compares what hiding the object and hiding the background (attention "
    "masking at patch resolution on ViTs, mean-colour pixels otherwise) cost the predicted "
    "class's logit; it is an intervention on this model's inputs, not on the scene. On the "
    "testbed check it with --causal (interventional labels)."
)


def caveat(mode: str, tau: float) -> str:
    """The caveat printed under a summary of a diagnosis in ``mode`` (``Diagnosis.mode``)."""
    return ABLATION_CAVEAT if mode == DIAGNOSES[0] else CAVEAT.format(tau=tau)


def add_diagnosis_arg(p: argparse.ArgumentParser) -> None:
    """``--diagnosis {region_ablation,cci}``."""
    p.add_argument("--diagnosis", choices=DIAGNOSES, default=DIAGNOSES[0], help=DIAGNOSIS_HELP)


def warn_unused(args: argparse.Namespace, k: int, cci_boxes: bool = False) -> None:
    """Warns (stderr) when ``--tau`` / ``--n-clusters`` are set but ``--diagnosis`` does not
    use them (``--n-clusters`` still picks SAM's boxes when ``cci_boxes``)."""
    if args.diagnosis == "cci":
        return
    unused = [name for name, changed in (("--n-clusters", args.n_clusters != k and not cci_boxes),
                                         ("--tau", args.tau != 0.5)) if changed]  # fmt: skip
    if unused:
        print(
            f"warning: {'/'.join(unused)} only apply to --diagnosis cci (the diagnosis is "
            f"{args.diagnosis})",
            file=sys.stderr,
        )


def add_method_args(p: argparse.ArgumentParser, k: int = 7) -> None:
    """``--diagnosis``, ``--tau``, ``--fine-threshold``, ``--n-clusters``, ``--batch-size``."""
    add_diagnosis_arg(p)
    p.add_argument(
        "--tau",
        type=float,
        default=0.5,
        help="fg_share threshold of 'foreground-driven' (--diagnosis cci)",
    )
    p.add_argument(
        "--fine-threshold",
        type=float,
        default=0.8,
        help="text-embedding cosine above which two classes are close (Fine-Er)",
    )
    p.add_argument(
        "--n-clusters",
        type=int,
        default=k,
        help="CCI clusters K (--diagnosis cci; also the CCI box heuristic of SAM without "
        "--grounding-dino)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")


def add_sam_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--sam-checkpoint``, ``--sam-model-type``, ``--grounding-dino``."""
    p.add_argument("--sam-checkpoint", help=f"SAM checkpoint file ({what})")
    p.add_argument(
        "--sam-model-type",
        default="vit_b",
        help="SAM architecture of --sam-checkpoint (vit_b, vit_l, vit_h)",
    )
    p.add_argument("--grounding-dino", help="local Grounding DINO folder (GroundedSAM boxes)")


def default_method(clf: Any, n_clusters: int) -> Any:
    """:meth:`CCI.default_for <captum_clip.attr.cci.CCI.default_for>` with ``K = n_clusters``."""
    from captum_clip.attr.cci import CCI

    return CCI.default_for(clf, n_clusters)


def method(args: argparse.Namespace, clf: Any) -> Any:
    """``diagnose``'s ``method=`` for ``--diagnosis``: ``"region_ablation"``, or the paper's
    CCI with ``K = --n-clusters`` (:func:`default_method`)."""
    if args.diagnosis == "cci":
        return default_method(clf, args.n_clusters)
    return args.diagnosis


def describe(args: argparse.Namespace) -> str:
    """One phrase saying how the driver was decided (for the printed header)."""
    if args.diagnosis == "cci":
        return f"CCI (K={args.n_clusters}) explains the predicted class, tau={args.tau}"
    return "region ablation (the object, then the background hidden) decides the driver"


CONCEPT_HELP = (
    "--masks concepts: no segmenter; a CLIP (--namer, default the explained model) names the "
    "regions of its own k-means clustering with --vocabulary + the class names, and the "
    "regions named as the class form the object mask (docs/concepts.md); the table gains "
    "concept_fallback and shortcut_share"
)


def add_concept_args(p: argparse.ArgumentParser) -> None:
    """``--namer SPEC``, ``--vocabulary FILE``, ``--concept-clusters K`` (``--masks concepts``)."""
    g = p.add_argument_group("concept masks", CONCEPT_HELP)
    g.add_argument(
        "--namer",
        metavar="SPEC",
        help="model that names the regions (a reference CLIP; default: the explained model): "
        + _common.SPEC_HELP,
    )
    g.add_argument(
        "--vocabulary",
        metavar="FILE",
        default="general",
        help="context words, one per line ('#' comments); default 'general': the bundled list "
        "of visual concepts (docs/concepts.md); the class names are added",
    )
    g.add_argument(
        "--concept-clusters", type=int, default=8, help="K of the namer's regions (default 8)"
    )


def concept_masks(args: argparse.Namespace, explained: Any, device: Any) -> Any:
    """The :class:`~captum_clip.masks.ConceptMasks` of the arguments: ``--namer`` loaded on
    ``device`` (default: the ``explained`` LoadedClip itself; None: ``--namer`` needed)."""
    from captum_clip.masks import ConceptMasks

    _common.check_positive(args, "concept_clusters")
    namer = explained
    if args.namer or explained is None:
        from captum_clip.models.spec import parse_model_spec, resolve_device

        spec = parse_model_spec(args.namer)
        namer = spec.load(resolve_device(device))
        if namer.random_weights:
            print(_common.random_weights_warning(spec.text), file=sys.stderr)
    return ConceptMasks(namer, args.vocabulary, n_clusters=args.concept_clusters)


def warn_concept_args(args: argparse.Namespace) -> None:
    """Warns (stderr) when concept options are set without ``--masks concepts``."""
    set_ = [f"--{n.replace('_', '-')}" for n, d in (("namer", None), ("vocabulary", "general"),
            ("concept_clusters", 8)) if getattr(args, n, d) != d]  # fmt: skip
    if set_ and getattr(args, "masks", None) != "concepts":  # counteranimals: None
        print(f"warning: {'/'.join(set_)} only apply to --masks concepts", file=sys.stderr)


def sam_masker(args: argparse.Namespace, clf: Any, device: Any) -> Any:
    """The SAM / GroundedSAM mask provider of the arguments (None without SAM)."""
    from captum_clip.masks import GroundedSamMasker, SamMasker

    if args.grounding_dino and not args.sam_checkpoint:
        raise ValueError("--grounding-dino needs --sam-checkpoint as well")
    if not args.sam_checkpoint:
        return None
    if args.grounding_dino:
        return GroundedSamMasker(
            args.grounding_dino, args.sam_checkpoint, args.sam_model_type, str(device)
        )
    return SamMasker(
        args.sam_checkpoint,
        args.sam_model_type,
        str(device),
        classifier=clf,
        cci_kwargs={"n_clusters": args.n_clusters},
    )


def _value(summary: dict, key: str) -> Any:
    v = summary.get(key)
    if key in ("bg_er", "fine_er", "fg_er") and isinstance(v, int):
        rate = summary.get(f"{key}_rate")
        if isinstance(rate, float) and not math.isnan(rate):
            return f"{v} ({rate:.0%} of errors)"
    if key in ("foreground", "background") and isinstance(v, int) and summary.get("n"):
        return f"{v} ({v / summary['n']:.0%})"
    return v


def summary_table(summary: dict, tau: float, fine_threshold: float) -> str:
    """The diagnosis summary (``Diagnosis.summary()``, its ``mode`` included) as a Markdown
    table with a 'meaning' column and the caveat."""
    mode = summary.get("mode", "attribution")
    ablation = mode == DIAGNOSES[0]
    rows = []
    for key, name, meaning in ROWS:
        if key not in summary:
            continue
        v = summary[key]
        if isinstance(v, float) and math.isnan(v):
            continue  # e.g. no labels: no accuracy, no error split; no IoU without a map
        if ablation:
            name, meaning = ABLATION_ROWS.get(key, (name, meaning))
        rows.append(
            {
                "quantity": name,
                "value": _value(summary, key),
                "meaning": meaning.format(tau=tau, fine=fine_threshold),
            }
        )
    table = _common.markdown_table(rows, ["quantity", "value", "meaning"])
    return table + "\n\n" + caveat(mode, tau)


def causal_table(agreement: dict, mode: str = "attribution") -> str:
    """:func:`captum_clip.diagnosis.causal_agreement` as a Markdown table (``mode``: the
    ``Diagnosis.mode`` it scored)."""
    score, call = "fg_share", "fg_share >= tau"
    if mode == DIAGNOSES[0]:
        score, call = "fg_effect - bg_effect", "fg_effect >= bg_effect"
    rows = [
        {"quantity": "causally foreground", "value": agreement["n_foreground"],
         "meaning": "prediction survives a background swap, not removing the object"},
        {"quantity": "causally background", "value": agreement["n_background"],
         "meaning": "prediction survives removing the object, not a background swap"},
        {"quantity": "agreement", "value": agreement["accuracy"],
         "meaning": f"share of these images where {call} gives the causal label"},
        {"quantity": "majority baseline", "value": agreement["majority"],
         "meaning": "agreement of always answering the larger causal class"},
        {"quantity": "AUROC", "value": agreement["auroc"],
         "meaning": f"{score} as a score for 'causally foreground' (threshold-free)"},
    ]  # fmt: skip
    return _common.markdown_table(rows, ["quantity", "value", "meaning"])
