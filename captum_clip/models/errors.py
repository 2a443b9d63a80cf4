"""The errors of model loading (all are ``ValueError`` subclasses: the CLI's exit code 2)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

__all__ = [
    "CheckpointNotFoundError",
    "ModelLoadError",
    "PretrainedUnavailableError",
    "check_known_model",
]


class ModelLoadError(ValueError):
    """A model could not be loaded; the message says what was tried and how to fix it."""


def check_known_model(name: str, known: Sequence[str], what: str, expected: str) -> None:
    """:class:`ModelLoadError` unless ``name`` is in ``known``, with up to 3 close matches.

    ``what`` names the model in the message (``"model name 'X'"``), ``expected`` says
    what would have been accepted.
    """
    if name in known:
        return
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelLoadError(f"unknown {what}: {expected}.{hint} See open_clip.list_models().")


class CheckpointNotFoundError(ModelLoadError, FileNotFoundError):
    """The checkpoint file given to :func:`load_clip` does not exist."""


class PretrainedUnavailableError(ModelLoadError):
    """Pretrained weights are neither cached nor downloadable (offline, or download failed).

    Attributes:
        name: The open_clip architecture.
        pretrained: The pretrained tag.
        reason: Why they could not be fetched (one line).
    """

    def __init__(self, name: str, pretrained: str, reason: str) -> None:
        self.name, self.pretrained, self.reason = name, pretrained, reason
        super().__init__(
            f"could not load open_clip {name!r} with pretrained={pretrained!r}: {reason}. "
            "Pretrained weights download on first use and need internet access; offline, "
            f"download the file elsewhere and pass load_clip({name!r}, "
            "checkpoint='path/to/file.pt'), or pretrained=None for random weights."
        )

    def cli_message(self) -> str:
        """The same error, with advice in command-line terms."""
        return (
            f"could not load --model {self.name}:{self.pretrained}: {self.reason}. Pretrained "
            "weights download on first use and need internet access. Offline: download the "
            f"checkpoint on a machine with internet and pass --model {self.name}:/path/to/"
            f"checkpoint.pt, or --model {self.name} for random weights (meaningless maps)."
        )
