"""Figures: attribution overlays, cluster maps, method comparisons, interaction maps."""

from captum_clip.viz.interactions import plot_interactions
from captum_clip.viz.maps import compare_methods, overlay, plot_clusters, to_display

__all__ = ["compare_methods", "overlay", "plot_clusters", "plot_interactions", "to_display"]
