"""Benchmarks of attribution methods: the faithfulness benchmark (methods x metrics).

Example:
    >>> from captum_clip.benchmark import evaluate, run_testbed
    >>> results = run_testbed(n=48)                       # every available zoo model
    >>> results[0].summary()[["deletion_prob", "seconds_per_image"]]
"""

from captum_clip.benchmark.faithfulness import (
    METRIC_COLUMNS,
    FaithfulnessResult,
    MetricSettings,
    evaluate,
    scored_curves,
)
from captum_clip.benchmark.inputs import available_variants, load_folder, run_folder, run_testbed
from captum_clip.benchmark.methods import (
    METHODS,
    ForwardCounter,
    MethodSettings,
    build_method,
    slic_superpixels,
)
from captum_clip.benchmark.report import (
    markdown_report,
    reference_comparison,
    reference_method,
    save_curve_plots,
)

__all__ = [
    "METHODS",
    "METRIC_COLUMNS",
    "FaithfulnessResult",
    "ForwardCounter",
    "MethodSettings",
    "MetricSettings",
    "available_variants",
    "build_method",
    "evaluate",
    "load_folder",
    "markdown_report",
    "reference_comparison",
    "reference_method",
    "run_folder",
    "run_testbed",
    "save_curve_plots",
    "scored_curves",
    "slic_superpixels",
]
