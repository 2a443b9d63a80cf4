"""The grounding example figure: per-row colour scales over a greyscale image."""

from __future__ import annotations

import numpy as np
import torch

from captum_clip.attr import InteractionResult
from captum_clip.grounding import plots


def test_example_rows_have_their_own_scale_and_a_grey_background():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 5, 1 + 4, generator=g)
    a[1] *= 100  # the second pair is 100x stronger: a shared scale would wash out the first
    tokens = [["<sot>", "red", "dots", "grass", "<eot>"]] * 2
    res = InteractionResult(a, tokens, (2, 2), torch.ones(2), torch.zeros(2), torch.zeros(2, 3))
    images = torch.rand(2, 3, 8, 8, generator=g)
    masks = torch.zeros(2, 8, 8)
    masks[:, :4, :4] = 1
    roles = [{"object": "red dots", "context": "grass"}] * 2
    fig = plots.plot_examples(res, images, masks, roles, ["c0", "c1"])
    axes = np.array(fig.axes[:6]).reshape(2, 3)
    for i in range(2):
        maps = [res.image_map(w, pair=i, size=(8, 8)).numpy() for w in ("red dots", "grass")]
        lim = max(float(np.abs(m).max()) for m in maps)
        for j, m in enumerate(maps, start=1):
            background, overlay = axes[i, j].get_images()
            assert background.get_array().ndim == 2  # greyscale copy, not the colour image
            assert overlay.get_clim() == (-lim, lim)
            np.testing.assert_allclose(overlay.get_array(), m, rtol=1e-6)
    assert len(fig.axes) == 6 + 2  # one colour bar per row
