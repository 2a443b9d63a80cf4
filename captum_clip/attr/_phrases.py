"""Naming caption tokens by text: one rule for every place that takes a word or phrase.

The rule (:func:`phrase_positions`): a phrase selects every run of consecutive tokens
whose texts, joined without spaces, spell the phrase without spaces -- case-insensitive,
sub-word markers (``</w>``, ``##``, ``Ġ``, ``▁``) ignored -- and all occurrences of it. So
``"vertical stripes"`` selects both tokens of "vertical stripes", ``"grass"`` selects
``["gra", "ss</w>"]`` and ``"dots"`` selects both "dots" of "dots and dots". Used by
:meth:`~captum_clip.attr.InteractionResult.image_map` / ``token_scores`` / ``token_indices``,
the grounding table and figures (:mod:`captum_clip.grounding`) and the CLI's word
arguments (``interactions --words``, the ``grounding folder`` CSV columns).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["phrase_positions"]


def _clean(token: str) -> str:
    """A token as plain lower-case text: BPE/WordPiece markers and spaces removed."""
    t = token.lower().replace("</w>", "").replace("\u0120", "").replace("\u2581", "")
    return re.sub(r"\s+", "", t.removeprefix("##"))


def phrase_positions(tokens: Sequence[str], phrase: str) -> list[int]:
    """Token positions of every occurrence of ``phrase`` in ``tokens`` (sorted, unique).

    A phrase matches a run of consecutive tokens whose texts, joined without spaces, equal
    the phrase without spaces (case-insensitive, sub-word markers ignored), so
    ``"horizontal stripes"`` matches ``["horizontal", "stripes"]`` and ``"grass"`` matches
    ``["grass</w>"]``.

    Raises:
        ValueError: The phrase is empty or does not occur in ``tokens``.
    """
    if not isinstance(phrase, str) or not _clean(phrase):
        raise ValueError(f"a word must be a non-empty string, got {phrase!r}")
    target = _clean(phrase)
    clean = [_clean(t) for t in tokens]
    found: list[int] = []
    for start in range(len(clean)):
        text = ""
        for end in range(start, len(clean)):
            text += clean[end]
            if not target.startswith(text) or not clean[end]:
                break
            if text == target:
                found.extend(range(start, end + 1))
                break
    if not found:
        shown = [t for t in tokens if t]
        raise ValueError(
            f"word {phrase!r} is not in the caption (no token or run of tokens spells it); "
            f"its tokens are {shown}"
        )
    return sorted(set(found))
