"""Caption grounding: from interaction maps to per-word, per-class grounding and failures.

:func:`measure` turns an :class:`~captum_clip.attr.InteractionResult`, object masks and
the captions' word roles into one row per image and word (share of the word's positive
interaction mass inside the object, pointing, total interaction; definitions in
:mod:`captum_clip.grounding.table`). :mod:`captum_clip.grounding.summary` aggregates the
rows per class and into the three failure categories (*coverage*, *unusual scenes*,
*correlated contexts*); :mod:`captum_clip.grounding.testbed` builds the testbed's scenes
and word roles; :mod:`captum_clip.grounding.plots` draws the figures. See
``docs/grounding.md``.

Example:
    >>> from captum_clip.attr import IntegratedInteractions
    >>> from captum_clip import grounding
    >>> scenes = grounding.testbed_scenes(8, seed=0)
    >>> rows, _ = grounding.analyse(ii, preprocess(scenes.images), scenes.captions,
    ...                             scenes.masks, scenes.roles, scenes.meta)  # doctest: +SKIP
    >>> grounding.by_class(rows)  # doctest: +SKIP
"""

from captum_clip.grounding.analyse import analyse, prepare_pil
from captum_clip.grounding.summary import (
    DEFAULT_BINS,
    STATS,
    by_class,
    correlated_contexts,
    coverage,
    markdown,
    summarise,
    unusual_scenes,
    write_csv,
)
from captum_clip.grounding.table import (
    ROLES,
    measure,
    normalise_roles,
    patch_weights,
    phrase_positions,
)
from captum_clip.grounding.testbed import (
    CONDITIONS,
    NEUTRAL_BACKGROUNDS,
    TestbedScenes,
    testbed_roles,
    testbed_scenes,
)

__all__ = [
    "CONDITIONS",
    "DEFAULT_BINS",
    "NEUTRAL_BACKGROUNDS",
    "ROLES",
    "STATS",
    "TestbedScenes",
    "analyse",
    "by_class",
    "correlated_contexts",
    "coverage",
    "markdown",
    "measure",
    "normalise_roles",
    "patch_weights",
    "phrase_positions",
    "prepare_pil",
    "summarise",
    "testbed_roles",
    "testbed_scenes",
    "unusual_scenes",
    "write_csv",
]
