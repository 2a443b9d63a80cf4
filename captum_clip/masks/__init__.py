"""Object masks for the diagnosis: ground truth, SAM with box prompts, GroundedSAM.

Every provider follows one protocol, :class:`MaskProvider`:
``provider(images, class_names) -> (B, H, W) bool`` where ``images`` are the model's
(normalised) inputs ``(B, 3, H, W)`` and ``class_names`` names the object to segment in
each image. Providers that need pixels undo the normalisation with ``mean``/``std``
(open_clip's by default; ``mean=None`` for images already in ``[0, 1]``).

* :class:`GroundTruthMasks` — masks that come with the data (testbed, COVAR composites).
* :class:`SamMasker` — segment-anything's ``SamPredictor`` prompted with boxes from a
  detector callable or, without one, from the bounding box of the top CCI cluster.
  **The CCI box is a heuristic**: the mask then comes from the model's own attribution, so
  a diagnosis with it is biased towards "foreground"; use a detector or ground truth when
  you can.
* :class:`GroundedSamMasker` — Grounding DINO (``transformers``) from a local model folder
  + SAM: the text-prompted GroundedSAM pipeline.
* :class:`ConceptMasks` — no segmenter: a CLIP (the explained model or a reference) names
  the regions of its own k-means clustering, and those named as the class form the mask
  (``docs/concepts.md``).

Checkpoints are the user's files; nothing is downloaded.
"""

from captum_clip.masks._common import (
    Detector,
    GroundTruthMasks,
    MaskProvider,
    boxes_from_attributions,
    preprocess_mask,
    to_unit_images,
)
from captum_clip.masks.concepts import ConceptMasks
from captum_clip.masks.sam import GroundedSamMasker, GroundingDinoDetector, SamMasker

__all__ = [
    "ConceptMasks",
    "Detector",
    "GroundTruthMasks",
    "GroundedSamMasker",
    "GroundingDinoDetector",
    "MaskProvider",
    "SamMasker",
    "boxes_from_attributions",
    "preprocess_mask",
    "to_unit_images",
]
