"""The ``captum-clip`` command line.

Each subcommand lives in ``captum_clip/commands/<name>.py`` (found automatically) and
provides ``add_parser(subparsers)``, which registers its subparser and sets
``func(args) -> int`` as the default.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from captum_clip import commands
from captum_clip._version import __version__


def _command_modules() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captum-clip",
        description="Explain CLIP-style vision-language models inside Captum.",
    )
    parser.add_argument("--version", action="version", version=f"captum-clip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _command_modules():
        importlib.import_module(f"captum_clip.commands.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``captum-clip`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_usage(sys.stderr)
        print("captum-clip: error: name a COMMAND (captum-clip --help lists them)", file=sys.stderr)
        return 2
    return run_command(args, f"captum-clip {command_path(args)}")


def command_path(args: argparse.Namespace) -> str:
    """``"faithfulness testbed"``-style name of the parsed (sub)command."""
    parts = [args.command] + [
        str(v) for k, v in sorted(vars(args).items()) if k.endswith("_command") and v
    ]
    return " ".join(p for p in parts if p)


def run_command(args: argparse.Namespace, prog: str) -> int:
    """Runs ``args.func``; bad input becomes one ``PROG: error: ...`` line and exit code 2."""
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        message = err.cli_message() if hasattr(err, "cli_message") else str(err)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
