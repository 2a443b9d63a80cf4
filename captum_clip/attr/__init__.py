"""Attribution methods for CLIP models, Captum-style."""

from captum_clip.attr.cci import CCI, CCIResult, ClusterConceptImportance
from captum_clip.attr.grad_eclip import GradECLIP
from captum_clip.attr.gradcam import ViTGradCam, vit_gradcam
from captum_clip.attr.interactions import IntegratedInteractions, InteractionResult
from captum_clip.attr.maskclip import MaskCLIP
from captum_clip.attr.rollout import GradientRollout

__all__ = [
    "CCI",
    "CCIResult",
    "ClusterConceptImportance",
    "GradECLIP",
    "GradientRollout",
    "IntegratedInteractions",
    "InteractionResult",
    "MaskCLIP",
    "ViTGradCam",
    "vit_gradcam",
]
