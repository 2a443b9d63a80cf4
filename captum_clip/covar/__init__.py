"""COVAR-style benchmarks: vary foreground and background independently, with exact masks.

* :func:`build` — composites of foreground instances on backgrounds under 1 + 11
  structural variants, a manifest and exact object masks;
* :func:`evaluate` — zero-shot accuracy, foreground/background diagnosis and error
  categories (BG-Er / FG-Er / Fine-Er) per model and subset; resumable, and runs sharded
  under ``torchrun``.

(The function :func:`evaluate` shadows the submodule of the same name as an attribute;
reach the module with ``importlib.import_module("captum_clip.covar.evaluate")``.)
"""

from captum_clip.covar.build import BuildResult, build, load_manifest
from captum_clip.covar.evaluate import EvalResult, evaluate
from captum_clip.covar.plots import plot_summary
from captum_clip.covar.sources import (
    Background,
    Instance,
    folder_backgrounds,
    folder_instances,
    testbed_backgrounds,
    testbed_instances,
)
from captum_clip.covar.summary import summarise_results
from captum_clip.covar.transforms import TRANSFORMS, TransformSpec
from captum_clip.models import ModelEntry

__all__ = [
    "TRANSFORMS",
    "Background",
    "BuildResult",
    "EvalResult",
    "Instance",
    "ModelEntry",
    "TransformSpec",
    "build",
    "evaluate",
    "folder_backgrounds",
    "folder_instances",
    "load_manifest",
    "plot_summary",
    "summarise_results",
    "testbed_backgrounds",
    "testbed_instances",
]
