"""Attribution methods for CLIP models, Captum-style."""

from captum_clip.attr._conv_lrp import check_conv_lrp
from captum_clip.attr._kmeans import cluster_grid
from captum_clip.attr._phrases import phrase_positions
from captum_clip.attr._region_games import check_regions, grid_regions, patch_partition
from captum_clip.attr._region_scores import variant_scores
from captum_clip.attr._regions import ESTIMATORS
from captum_clip.attr.attnlrp import AttnLRP
from captum_clip.attr.cci import CCI, CCIResult, ClusterConceptImportance
from captum_clip.attr.cross_games import CrossModalInteractions
from captum_clip.attr.grad_eclip import GradECLIP
from captum_clip.attr.gradcam import ViTGradCam, vit_gradcam
from captum_clip.attr.interactions import IntegratedInteractions, InteractionResult
from captum_clip.attr.legrad import LeGrad
from captum_clip.attr.maskclip import MaskCLIP
from captum_clip.attr.rollout import GradientRollout

__all__ = [
    "check_conv_lrp",
    "check_regions",
    "cluster_grid",
    "patch_partition",
    "CCI",
    "AttnLRP",
    "CrossModalInteractions",
    "LeGrad",
    "CCIResult",
    "ESTIMATORS",
    "ClusterConceptImportance",
    "GradECLIP",
    "GradientRollout",
    "IntegratedInteractions",
    "InteractionResult",
    "MaskCLIP",
    "ViTGradCam",
    "grid_regions",
    "phrase_positions",
    "variant_scores",
    "vit_gradcam",
]
