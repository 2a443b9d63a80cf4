"""captum_clip: explain CLIP-style vision-language models inside Captum."""

from captum_clip._version import __version__
from captum_clip.models import ClipClassifier, ClipSimilarity, load_clip

__all__ = ["ClipClassifier", "ClipSimilarity", "__version__", "load_clip"]
