"""Agreement with Quantus PixelFlipping / RegionPerturbation where the settings coincide."""

from __future__ import annotations

import numpy as np
import pytest
import torch

if not hasattr(np, "trapz"):  # quantus 0.6.0 calls np.trapz, removed in numpy 2.4
    np.trapz = np.trapezoid

quantus = pytest.importorskip("quantus")

from captum_clip.metrics import deletion_curve  # noqa: E402

B, C, H, W = 4, 3, 12, 12


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(C, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 16, 5)

    def forward(self, x):
        return self.fc(
            torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1)
        )


def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=gen)
    # distinct values (a permutation): ties would be broken differently (position vs seeded random)
    a = (
        torch.stack([torch.randperm(H * W, generator=gen) for _ in range(B)])
        .float()
        .view(B, 1, H, W)
    )
    y = torch.tensor([0, 1, 2, 4])
    return x, a, y


@pytest.mark.parametrize("softmax,score", [(False, "logit"), (True, "prob")])
def test_pixel_flipping(softmax, score):
    x, a, y = data()
    model = Toy().eval()
    pixels_per_step = 4
    # the (B, 1, H, W) map is broadcast over channels: one Quantus step of 3*m features = m pixels
    metric = quantus.PixelFlipping(
        features_in_step=C * pixels_per_step,
        perturb_baseline=0.0,
        normalise=False,
        abs=False,
        disable_warnings=True,
    )
    q = np.asarray(
        metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=a.numpy(),
            channel_first=True,
            softmax=softmax,
            device="cpu",
        )
    )
    n_steps = H * W // pixels_per_step
    _, ours = deletion_curve(model, x, a, target=y, baselines="zeros", n_steps=n_steps, score=score)
    assert q.shape == (B, n_steps)  # Quantus has no unperturbed point
    np.testing.assert_allclose(ours[:, 1:].numpy(), q, atol=1e-5, rtol=0)


def test_region_perturbation():
    x, a, y = data()
    model = Toy().eval()
    patch = 4
    n_patches = (H // patch) * (W // patch)
    metric = quantus.RegionPerturbation(
        patch_size=patch,
        regions_evaluation=n_patches,
        order="morf",
        perturb_baseline=0.0,
        normalise=False,
        abs=False,
        disable_warnings=True,
    )
    q = np.asarray(
        metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=a.numpy(),
            channel_first=True,
            softmax=False,
            device="cpu",
        )
    )
    _, ours = deletion_curve(
        model, x, a, target=y, baselines="zeros", unit="patch", patch_size=patch, n_steps=n_patches
    )
    # Quantus reports the drop f(x) - f(x_t) for t = 1..n_patches
    np.testing.assert_allclose((ours[:, :1] - ours[:, 1:]).numpy(), q, atol=1e-5, rtol=0)
