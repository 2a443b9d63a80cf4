"""Vocabularies that name regions: the user's list, a file, or the bundled general list.

:func:`general_vocabulary` reads ``concepts/data/visual_concepts.txt``: colours (Berlin &
Kay's basic colour terms), textures (DTD's 47 categories), materials (MINC), stuff
(COCO-Stuff), scenes (60 of Places365's categories) and object parts (PASCAL-Part); the
file says where each section came from. :func:`check_vocabulary` is the one validator of a
vocabulary argument, :func:`encodable` drops the words a tokenizer cannot encode (with one
warning naming them).

Example:
    >>> words = general_vocabulary(sections=["textures", "materials"])
    >>> words = check_vocabulary(["grass", "sky", "dots"])
    >>> words = read_vocabulary("my_words.txt")        # one word per line, "#" comments
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "GENERAL",
    "check_vocabulary",
    "encodable",
    "general_sections",
    "general_vocabulary",
    "read_vocabulary",
    "resolve_vocabulary",
]

GENERAL = "general"
"""The ``vocabulary=`` string that selects :func:`general_vocabulary`."""


def _general_file() -> str:
    return resources.files("captum_clip.concepts").joinpath("data/visual_concepts.txt").read_text()


def general_sections() -> dict[str, tuple[str, list[str]]]:
    """``{section: (source, words)}`` of the bundled general vocabulary, in file order."""
    sections: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in _general_file().splitlines():
        line = line.strip()
        if line.startswith("##"):
            name, _, source = line[2:].partition(":")
            current = name.strip()
            sections[current] = (source.strip(), [])
        elif line and not line.startswith("#") and current is not None:
            sections[current][1].append(line)
    return sections


def general_vocabulary(sections: Sequence[str] | None = None) -> list[str]:
    """The bundled general list of visual concepts (``docs/concepts.md``).

    Args:
        sections: Section names to keep (default all): ``"colours"``, ``"textures"``,
            ``"materials"``, ``"stuff"``, ``"scenes"``, ``"object parts"``.

    Returns:
        The concepts, each once, in file order.
    """
    table = general_sections()
    if sections is None:
        sections = list(table)
    if isinstance(sections, str):
        sections = [sections]
    unknown = [s for s in sections if s not in table]
    if unknown:
        raise ValueError(f"unknown vocabulary section(s) {unknown}; the sections are {list(table)}")
    words: list[str] = []
    for s in sections:
        words += [w for w in table[s][1] if w not in words]
    return words


def read_vocabulary(path: str | os.PathLike) -> list[str]:
    """A vocabulary file: one concept per line; blank lines and ``#`` comments skipped."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"vocabulary file not found: {os.fspath(path)!r}")
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    return check_vocabulary([w for w in lines if w and not w.startswith("#")], str(p))


def check_vocabulary(words: Any, what: str = "vocabulary") -> list[str]:
    """Validate a vocabulary: a non-empty list of distinct, non-empty strings.

    Raises:
        TypeError: Not a list/tuple of strings (a single string is refused too: pass
            ``[word]``, or ``"general"`` to :func:`resolve_vocabulary`).
        ValueError: Empty, an empty word, or a word given twice (named, with positions).
    """
    if isinstance(words, (str, bytes)) or not isinstance(words, Sequence):
        raise TypeError(
            f"{what} must be a list of strings, got {type(words).__name__}"
            + (" (wrap one word in a list)" if isinstance(words, str) else "")
        )
    words = list(words)
    if not words:
        raise ValueError(f"{what} is empty; give at least one word")
    for i, w in enumerate(words):
        if not isinstance(w, str):
            raise TypeError(f"{what} entries must be strings, got {type(w).__name__} at {i}")
        if not w.strip():
            raise ValueError(f"{what} entry {i} is an empty string")
    first: dict[str, int] = {}
    for i, w in enumerate(words):
        key = w.strip().lower()
        if key in first:
            raise ValueError(
                f"{what} lists {w!r} twice (positions {first[key]} and {i}); give each concept once"
            )
        first[key] = i
    return [w.strip() for w in words]


def resolve_vocabulary(vocabulary: Any, extra: Sequence[str] = ()) -> list[str]:
    """A vocabulary argument as a list: a list of words, ``"general"``, or a file path;
    ``extra`` words (class names) are added where missing (case-insensitive)."""
    if isinstance(vocabulary, str) and vocabulary == GENERAL:
        words = general_vocabulary()
    elif isinstance(vocabulary, (str, os.PathLike)):
        words = read_vocabulary(vocabulary)
    else:
        words = check_vocabulary(vocabulary)
    have = {w.lower() for w in words}
    return words + [w for w in extra if w.lower() not in have and not have.add(w.lower())]


def _fits(tokenizer: Callable, text: str, context_length: int | None) -> bool:
    """The tokenizer encodes ``text`` without an error, an unknown token or truncation."""
    from captum_clip.models.heads import _n_tokens

    try:
        ids = tokenizer([text])
    except (ValueError, KeyError, TypeError):
        return False
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    ids = torch.as_tensor(ids)
    inner = getattr(tokenizer, "tokenizer", tokenizer)
    unk = getattr(inner, "unk_token_id", None)
    if unk is not None and bool((ids == unk).any()):
        return False
    n = _n_tokens(tokenizer, text)
    return not (n is not None and context_length is not None and n > context_length)


def encodable(
    words: Sequence[str],
    templates: Sequence[str],
    tokenizer: Callable,
    context_length: int | None = None,
    known: dict[str, bool] | None = None,
) -> list[str]:
    """The words every template encodes; the others are dropped with one ``UserWarning``.

    A word is dropped when the tokenizer raises on it (the testbed's word-level tokenizer
    knows only its own words), maps part of it to an unknown token (Hugging Face
    tokenizers) or needs more than ``context_length`` tokens in some template.

    Args:
        known: ``{word: encodable}`` of words checked before (updated in place): they are
            neither tokenized nor warned about again -- a namer called once per batch warns
            once.

    Raises:
        ValueError: No word is left.
    """
    known = {} if known is None else known
    dropped = []
    for w in dict.fromkeys(words):
        if w not in known:
            known[w] = all(_fits(tokenizer, t.format(w), context_length) for t in templates)
            if not known[w]:
                dropped.append(w)
    if dropped:
        shown = ", ".join(repr(w) for w in dropped[:20]) + (" ..." if len(dropped) > 20 else "")
        warnings.warn(
            f"the tokenizer cannot encode {len(dropped)} vocabulary word(s) in the templates "
            f"{list(templates)}; skipped: {shown}",
            UserWarning,
            stacklevel=3,
        )
    kept = [w for w in words if known[w]]
    if not kept:
        raise ValueError(
            f"no vocabulary word can be encoded by this tokenizer with the templates "
            f"{list(templates)}; give words the model's tokenizer knows"
        )
    return kept
