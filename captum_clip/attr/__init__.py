"""Attribution methods for CLIP models, Captum-style."""

from captum_clip.attr.grad_eclip import GradECLIP
from captum_clip.attr.interactions import IntegratedInteractions, InteractionResult
from captum_clip.attr.maskclip import MaskCLIP
from captum_clip.attr.rollout import GradientRollout

__all__ = [
    "GradECLIP",
    "GradientRollout",
    "IntegratedInteractions",
    "InteractionResult",
    "MaskCLIP",
]
