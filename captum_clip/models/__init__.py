"""The model side: loading CLIPs, the Captum forward functions, and one adapter per family.

Layout (adding a model family is adding one tower module and one line in :mod:`.adapter`):

- :mod:`.loading` -- :func:`load_clip`, the one entry point; :mod:`.spec` the model-spec
  grammar; :mod:`.loaders`, :mod:`.checkpoints`, :mod:`.pretrained`, :mod:`.registry` the
  sources behind it; :mod:`.errors` its exceptions.
- :mod:`.identity` -- :class:`ModelEntry`, :func:`resolve_model` and
  :func:`weights_fingerprint`: a model spec as a lazily loaded entry with the identity of
  its weights (what the long runs store with their rows).
- :mod:`.heads` -- :class:`ClipClassifier` and :class:`ClipSimilarity`, the forward
  functions every attribution method takes.
- :mod:`.adapter` -- :class:`ClipAdapter` and :func:`resolve_tower`: the only place that
  recognises model types. :mod:`.base` declares the tower contract (``VisionTower``,
  ``ViTTower``, ``TextTower``), :mod:`.blocks` the one decoder of transformer blocks, and
  each family has its module: :mod:`.open_clip_vit`, :mod:`.open_clip_text`,
  :mod:`.timm_vit`, :mod:`.conv`, :mod:`.hf_clip`, :mod:`.hf_siglip`.
"""

from captum_clip._validate import check_images
from captum_clip.models.adapter import ClipAdapter, resolve_tower
from captum_clip.models.errors import (
    CheckpointNotFoundError,
    ModelLoadError,
    PretrainedUnavailableError,
)
from captum_clip.models.heads import (
    DEFAULT_TEMPLATES,
    ClipClassifier,
    ClipSimilarity,
    ZeroShotHead,
    check_context_length,
    token_strings,
    tokenize,
)
from captum_clip.models.identity import ModelEntry, resolve_model, weights_fingerprint
from captum_clip.models.loaders import LoadedClip
from captum_clip.models.loading import load_clip

__all__ = [
    "CheckpointNotFoundError",
    "ClipAdapter",
    "ClipClassifier",
    "ClipSimilarity",
    "DEFAULT_TEMPLATES",
    "LoadedClip",
    "ModelEntry",
    "ModelLoadError",
    "PretrainedUnavailableError",
    "check_context_length",
    "check_images",
    "load_clip",
    "ZeroShotHead",
    "resolve_model",
    "resolve_tower",
    "token_strings",
    "tokenize",
    "weights_fingerprint",
]
