"""Concepts: CCI's regions (or any regions) named in words by a CLIP.

- :mod:`.naming` -- :func:`name_regions` and its result :class:`NamedRegions` (table, figure);
- :mod:`.namer` -- :class:`Namer`: the CLIP that embeds regions and words (the explained
  model, or a reference model with its own input size and normalisation);
- :mod:`.vocabulary` -- the user's words, a file, or the bundled general list of visual
  concepts (:func:`general_vocabulary`; sources in ``docs/concepts.md``);
- :mod:`.evidence` -- :func:`shortcut_evidence`: the share of the decision carried by
  regions the explained model names as its prediction but a reference names as context.

The mask provider built on it, :class:`captum_clip.masks.ConceptMasks`, turns the regions a
namer names as the class into object masks for the diagnosis.
"""

from captum_clip.concepts.evidence import EVIDENCE_K, ShortcutEvidence, shortcut_evidence
from captum_clip.concepts.namer import DEFAULT_TEMPLATES, EMBEDDINGS, Namer, as_namer
from captum_clip.concepts.naming import NamedRegions, name_regions, name_with, pixel_regions
from captum_clip.concepts.vocabulary import (
    GENERAL,
    check_vocabulary,
    encodable,
    general_sections,
    general_vocabulary,
    read_vocabulary,
    resolve_vocabulary,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "EMBEDDINGS",
    "EVIDENCE_K",
    "GENERAL",
    "NamedRegions",
    "Namer",
    "ShortcutEvidence",
    "as_namer",
    "check_vocabulary",
    "encodable",
    "general_sections",
    "general_vocabulary",
    "name_regions",
    "name_with",
    "pixel_regions",
    "read_vocabulary",
    "resolve_vocabulary",
    "shortcut_evidence",
]
