"""The shapes testbed: procedural scenes with exact masks, a planted background shortcut,
tiny CLIP models trained on them, and causal foreground/background labels.

See ``captum_clip/testbed/MODEL_CARD.md`` for the bundled models.
"""

from captum_clip.testbed import shapes
from captum_clip.testbed.causal import LABELS, CausalLabels, causal_labels
from captum_clip.testbed.shapes import (
    BACKGROUND_NAMES,
    CLASS_NAMES,
    COLOUR_NAMES,
    Scenes,
    class_prompts,
    generate_scenes,
    normalize,
    render,
    sample_factors,
)
from captum_clip.testbed.tokenizer import TestbedTokenizer
from captum_clip.testbed.zoo import (
    TestbedPreprocess,
    build_model,
    list_variants,
    load_testbed,
)

__all__ = [
    "BACKGROUND_NAMES",
    "CLASS_NAMES",
    "COLOUR_NAMES",
    "LABELS",
    "CausalLabels",
    "Scenes",
    "TestbedPreprocess",
    "TestbedTokenizer",
    "build_model",
    "causal_labels",
    "class_prompts",
    "generate_scenes",
    "list_variants",
    "load_testbed",
    "normalize",
    "render",
    "sample_factors",
    "shapes",
]
