"""Figures: un-normalisation, overlays through Captum, cluster maps, comparisons."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from captum_clip.viz.maps import (
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    compare_methods,
    overlay,
    plot_clusters,
    to_display,
)


@pytest.fixture
def pixels():
    return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))


def normalised(pixels):
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
    return (pixels - mean) / std


def test_to_display_undoes_normalisation(pixels):
    out = to_display(normalised(pixels)[None])
    np.testing.assert_allclose(out, pixels.permute(1, 2, 0).numpy(), atol=1e-6)
    np.testing.assert_allclose(to_display(pixels, mean=None), out, atol=1e-6)
    u8 = (pixels.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    np.testing.assert_allclose(to_display(u8), u8 / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        to_display(torch.zeros(2, 3, 8, 8))


def test_overlay_draws_the_map(pixels, tmp_path):
    attr = torch.zeros(3, 32, 32)
    attr[:, :16] = 1.0  # top half positive
    fig = overlay(normalised(pixels), attr, method="heat_map", sign="positive", title="t")
    assert isinstance(fig, Figure)
    drawn = fig.axes[0].get_images()[-1].get_array()
    # the heat map keeps the attribution's layout: top half hot, bottom half zero
    assert np.asarray(drawn)[:16].mean() > 0.9 and np.abs(np.asarray(drawn)[16:]).max() == 0
    fig.savefig(tmp_path / "o.png")
    assert (tmp_path / "o.png").stat().st_size > 0
    assert isinstance(overlay(pixels, torch.zeros(32, 32), mean=None), Figure)  # all-zero map
    with pytest.raises(ValueError, match="32x32"):
        overlay(pixels, torch.zeros(3, 16, 16), mean=None)


def test_plot_clusters_labels_every_region(pixels):
    labels = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    weights = torch.tensor([0.5, -0.25, 0.25, float("nan")])
    fig = plot_clusters(pixels, labels, weights, mean=None)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["+0.25", "+0.50", "-0.25"]
    tint = np.asarray(fig.axes[0].get_images()[1].get_array())
    assert tint[0, 0] == pytest.approx(1.0) and tint[0, 31] == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="one weight per cluster"):
        plot_clusters(pixels, labels, weights[:2], mean=None)


def test_compare_methods_layout(pixels):
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:24, 8:24] = True
    maps = {"CCI": torch.randn(3, 32, 32), "GradCAM": torch.rand(1, 32, 32)}
    fig = compare_methods(normalised(pixels), maps, mask=mask)
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert [a.get_title() for a in panels] == ["image", "object mask", "CCI", "GradCAM"]
    assert len(fig.axes) == len(panels) + 1  # its own figure: one signed colour bar
    fig = compare_methods(normalised(pixels), maps)
    assert len(fig.axes) == 3 + 1
    with pytest.raises(ValueError, match="non-empty"):
        compare_methods(pixels, {})
