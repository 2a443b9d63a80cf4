"""Figures: attribution overlays, cluster maps, method comparisons, interaction maps."""
