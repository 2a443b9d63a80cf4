"""What ``diagnose`` and ``counteranimals`` share: the attribution method, the mask source
and the readable summary table (columns explained, threshold caveat)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from captum_clip.commands import _common

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
CAVEAT = (
    "Caveat: 'driven' is a threshold on an attribution share (fg_share >= tau = {tau}), not a "
    "causal test. The share grows with the object's area and differs between attribution "
    "methods, so the background-driven count can be far from the causal truth; compare "
    "models at one tau, and on the testbed check it with --causal (interventional labels)."
)


def add_method_args(p: argparse.ArgumentParser, k: int = 7) -> None:
    """``--tau``, ``--fine-threshold``, ``--n-clusters``, ``--batch-size``."""
    p.add_argument(
        "--tau", type=float, default=0.5, help="fg_share threshold of 'foreground-driven'"
    )
    p.add_argument(
        "--fine-threshold",
        type=float,
        default=0.8,
        help="text-embedding cosine above which two classes are close (Fine-Er)",
    )
    p.add_argument("--n-clusters", type=int, default=k, help="CCI clusters K")
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
    """The diagnosis summary as a Markdown table with a 'meaning' column and the caveat."""
    rows = []
    for key, name, meaning in ROWS:
        if key not in summary:
            continue
        v = summary[key]
        if isinstance(v, float) and math.isnan(v):
            continue  # e.g. no labels: no accuracy, no error split
        rows.append(
            {
                "quantity": name,
                "value": _value(summary, key),
                "meaning": meaning.format(tau=tau, fine=fine_threshold),
            }
        )
    table = _common.markdown_table(rows, ["quantity", "value", "meaning"])
    return table + "\n\n" + CAVEAT.format(tau=tau)


def causal_table(agreement: dict) -> str:
    """:func:`captum_clip.diagnosis.causal_agreement` as a Markdown table."""
    rows = [
        {"quantity": "causally foreground", "value": agreement["n_foreground"],
         "meaning": "prediction survives a background swap, not removing the object"},
        {"quantity": "causally background", "value": agreement["n_background"],
         "meaning": "prediction survives removing the object, not a background swap"},
        {"quantity": "agreement", "value": agreement["accuracy"],
         "meaning": "share of these images where fg_share >= tau gives the causal label"},
        {"quantity": "majority baseline", "value": agreement["majority"],
         "meaning": "agreement of always answering the larger causal class"},
        {"quantity": "AUROC", "value": agreement["auroc"],
         "meaning": "fg_share as a score for 'causally foreground' (threshold-free)"},
    ]  # fmt: skip
    return _common.markdown_table(rows, ["quantity", "value", "meaning"])
