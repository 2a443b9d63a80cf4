"""What every subcommand shares: help formatting, the model/device/output arguments, model
loading with the random-weights warning, "wrote PATH" lines and Markdown/CSV tables.

The conventions these helpers implement are written down in ``docs/cli.md``. Nothing here
imports torch at module level, so ``captum-clip --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import numbers
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SPEC_HELP = (
    "model spec: testbed[:VARIANT] (bundled, offline), NAME (open_clip architecture with "
    "RANDOM weights), NAME:TAG (pretrained tag, downloads once, e.g. ViT-B-32:openai), "
    "NAME:/path/ckpt.pt (local checkpoint) or hf:DIR (Hugging Face CLIPModel folder)"
)
RANDOM_WEIGHTS = "RANDOM WEIGHTS"
"""The mark every figure title and terminal warning of a random-weights model carries."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` after every option with a real default; keeps epilog layout.

    Options whose default is ``None``/``False`` say in their help what happens without them.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text:
            return text
        if isinstance(action.default, list | tuple):
            return text + " (default: " + " ".join(map(str, action.default)) + ")"
        return super()._get_help_string(action)


def add_parser(subparsers: Any, name: str, help: str, description: str | None = None, **kw):
    """A subparser with :class:`HelpFormatter` and a description (``help`` if none)."""
    return subparsers.add_parser(
        name, help=help, description=description or help, formatter_class=HelpFormatter, **kw
    )


def add_model_args(p: argparse.ArgumentParser, default: str | None = "testbed") -> None:
    """``--model SPEC`` plus the old ``--pretrained TAG`` / ``--checkpoint FILE`` aliases."""
    p.add_argument("--model", default=default, metavar="SPEC", help=SPEC_HELP)
    p.add_argument(
        "--pretrained",
        metavar="TAG",
        help="old spelling of --model NAME:TAG (only with a bare --model NAME)",
    )
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="old spelling of --model NAME:FILE (only with a bare --model NAME)",
    )
    add_tokenizer_arg(p)


def add_tokenizer_arg(p: argparse.ArgumentParser) -> None:
    """``--tokenizer DIR``: a local tokenizer for models whose own one is a hub download."""
    p.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="folder with a saved Hugging Face tokenizer, used by models whose tokenizer "
        "downloads from the hub on first use (SigLIP family; needed offline); other models "
        "keep their own",
    )


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """``--device`` (``auto`` = CUDA when available, else CPU)."""
    p.add_argument(
        "--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda:N"
    )


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    """``--no-progress``."""
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def add_table_out_arg(p: argparse.ArgumentParser) -> None:
    """``--out TABLE`` (optional per-item table, .csv or .parquet)."""
    p.add_argument(
        "--out",
        metavar="TABLE",
        help="also write the per-image table here (.csv or .parquet; default: not written)",
    )


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """ValueError naming the option when an integer option is < 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def model_spec(args: argparse.Namespace):
    """The parsed :class:`~captum_clip.models.spec.ModelSpec` of ``--model`` (+ aliases)."""
    from captum_clip.models.spec import parse_model_spec

    return parse_model_spec(
        args.model, getattr(args, "pretrained", None), getattr(args, "checkpoint", None)
    )


def random_weights_warning(spec_text: str) -> str:
    """The terminal warning for a model with random weights."""
    return (
        f"WARNING: --model {spec_text} has {RANDOM_WEIGHTS} (no pretrained tag or checkpoint): "
        "predictions and maps are meaningless. Use NAME:TAG (e.g. ViT-B-32:openai) or "
        "NAME:/path/to/checkpoint.pt for real weights."
    )


def load_model(args: argparse.Namespace):
    """``(loaded, spec)`` for ``args.model``: :class:`LoadedClip` on ``args.device``.

    Prints the random-weights warning to stderr when the model has random weights.
    """
    from captum_clip.models.spec import resolve_device

    spec = model_spec(args)
    tokenizer = getattr(args, "tokenizer", None) if spec.hub_tokenizer else None
    loaded = spec.load(resolve_device(args.device), tokenizer=tokenizer)
    if loaded.random_weights:
        print(random_weights_warning(spec.text), file=sys.stderr)
    return loaded, spec


def classifier(args: argparse.Namespace, class_names: Sequence[str], templates=None):
    """``(ClipClassifier, loaded, spec)`` with the spec's default templates unless given."""
    from captum_clip.models.heads import ClipClassifier

    loaded, spec = load_model(args)
    clf = ClipClassifier(
        loaded.model, loaded.tokenizer, list(class_names), templates=templates or spec.templates
    )
    return clf, loaded, spec


def wrote(path: str | Path) -> None:
    """The one line every written file gets."""
    print(f"wrote {path}")


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Saves a matplotlib figure (creating parent folders) and prints ``wrote PATH``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    wrote(path)
    return path


def write_table(table: Any, path: str | Path) -> Path:
    """Writes a DataFrame as ``.csv`` or ``.parquet`` (by suffix) and prints ``wrote PATH``."""
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise ValueError(f"a table file must end in .csv or .parquet, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
    wrote(path)
    return path


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    if hasattr(value, "item") and not isinstance(value, str):
        return _cell(value.item(), digits)
    return str(value)


def markdown_table(
    rows: Iterable[Mapping[str, Any]] | Any,
    columns: Sequence[str] | None = None,
    digits: int = 3,
) -> str:
    """A Markdown table from dict rows or a DataFrame; floats to ``digits`` places.

    Numbers are right-aligned, text left-aligned; NaN prints as an empty cell.
    """
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    rows = list(rows)
    if columns is None:
        columns = list(rows[0]) if rows else []
    cells = [[_cell(r.get(c), digits) for c in columns] for r in rows]
    numeric = [
        all(isinstance(r.get(c), numbers.Number) and not isinstance(r.get(c), bool) for r in rows)
        for c in columns
    ]
    lines = ["| " + " | ".join(columns) + " |"]
    lines.append("| " + " | ".join("---:" if n else "---" for n in numeric) + " |")
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def require_subcommand(p: argparse.ArgumentParser, choices: str) -> None:
    """A command group run without its subcommand prints usage and exits 2."""

    def missing(args: argparse.Namespace) -> int:
        p.print_usage(sys.stderr)
        print(f"{p.prog}: error: name a subcommand: {choices}", file=sys.stderr)
        return 2

    p.set_defaults(func=missing)
