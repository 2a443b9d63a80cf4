"""Faithfulness, localisation and trust metrics as Captum-style functions (one value per
example).

Also public, for the subsystems above that perturb images the same way: ``make_baseline``
(the replacement pixels), ``expand_args`` (additional forward arguments per variant),
``run_batched`` (chunked forwards), ``select_score`` (logit / prob / top-k of the target),
``importance_rank`` (the deletion order), ``check_inputs`` and the OpenAI normalisation
constants.
"""

from captum_clip.metrics._common import (
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    check_inputs,
    expand_args,
    importance_rank,
    make_baseline,
    run_batched,
    select_score,
)
from captum_clip.metrics.faithfulness import (
    GRAD_ECLIP,
    RISE,
    Protocol,
    curve_auc,
    deletion_auc,
    deletion_curve,
    insertion_auc,
    insertion_curve,
)
from captum_clip.metrics.localisation import mask_iou, mask_share, pointing_game
from captum_clip.metrics.plot import plot_curves
from captum_clip.metrics.retrieval import recall_at_k, retrieval_auc, retrieval_curve
from captum_clip.metrics.road import RoadResult, noisy_linear_impute, road
from captum_clip.metrics.trust import (
    complexity,
    edge_map,
    efficient_model_randomisation,
    histogram_entropy,
    local_lipschitz,
    model_randomisation,
    random_logit,
    rank_correlation,
    relative_input_stability,
    seed_stability,
    smooth_model_randomisation,
    sparseness,
)

__all__ = [
    "GRAD_ECLIP",
    "OPENAI_DATASET_MEAN",
    "OPENAI_DATASET_STD",
    "RISE",
    "Protocol",
    "RoadResult",
    "check_inputs",
    "complexity",
    "curve_auc",
    "deletion_auc",
    "deletion_curve",
    "edge_map",
    "efficient_model_randomisation",
    "expand_args",
    "histogram_entropy",
    "importance_rank",
    "insertion_auc",
    "insertion_curve",
    "local_lipschitz",
    "make_baseline",
    "mask_iou",
    "mask_share",
    "model_randomisation",
    "noisy_linear_impute",
    "plot_curves",
    "pointing_game",
    "random_logit",
    "rank_correlation",
    "recall_at_k",
    "relative_input_stability",
    "retrieval_auc",
    "retrieval_curve",
    "road",
    "run_batched",
    "seed_stability",
    "select_score",
    "smooth_model_randomisation",
    "sparseness",
]
