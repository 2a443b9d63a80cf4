"""Interaction figures and the ``captum-clip interactions`` command."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from conftest import TINY_VIT, make_tiny_vit

from captum_clip.attr import InteractionResult
from captum_clip.viz.interactions import caption_positions, plot_interactions


def _result() -> InteractionResult:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1, 6, 1 + 16, generator=g)
    a[0, 5:] = 0
    tokens = [["<sot>", "red", "circle", "on", "<eot>", ""]]
    return InteractionResult(
        a, tokens, (4, 4), torch.tensor([0.3]), torch.tensor([1e-7]), torch.zeros(1, 3), (32, 32)
    )


def test_figure_has_one_map_per_word_and_token_bars():
    import matplotlib.pyplot as plt

    res = _result()
    assert caption_positions(res.tokens[0]) == [1, 2, 3]
    image = torch.rand(3, 32, 32)
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[:2, :2] = True
    fig = plot_interactions(res, image, region=region)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 1 + 3  # the picture + one map per word
    for ax, pos in zip(images[1:], [1, 2, 3]):
        shown = ax.images[-1].get_array()
        expected = res.image_map(pos, size=(32, 32)).numpy()
        np.testing.assert_allclose(np.asarray(shown), expected, rtol=1e-6)
        assert ax.get_title().startswith(res.tokens[0][pos])
    bars = [ax for ax in fig.axes if ax.patches]
    assert len(bars) == 1
    heights = [p.get_height() for p in bars[0].patches]
    expected = res.token_scores(region)[:5].numpy()
    np.testing.assert_allclose(heights, expected, rtol=1e-6)
    plt.close(fig)
    fig = plot_interactions(res, image, words=["circle", slice(1, 3)])
    assert [ax.get_title().split("\n")[0] for ax in fig.axes if ax.images][1:] == [
        "circle",
        "red circle",
    ]
    plt.close(fig)


def test_normalised_image_is_shown_in_true_colours_and_errors():
    import matplotlib.pyplot as plt

    pixels = torch.rand(3, 32, 32)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalised = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    fig = plot_interactions(_result(), normalised, mean=mean, std=std)
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(shown), pixels.permute(1, 2, 0).numpy(), atol=1e-6)
    plt.close(fig)
    with pytest.raises(ValueError, match="3, H, W"):
        plot_interactions(_result(), torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="pair"):
        plot_interactions(_result(), torch.rand(3, 32, 32), pair=3)


def test_cli_writes_figure(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from captum_clip.cli import main

    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "tiny-cli-vit.json").write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(cfg_dir)
    ckpt = tmp_path / "tiny.pt"
    torch.save(make_tiny_vit().state_dict(), ckpt)
    picture = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
        picture
    )
    out = tmp_path / "fig.png"
    code = main(
        [
            "interactions",
            str(picture),
            "a red circle",
            "--out",
            str(out),
            "--model",
            f"tiny-cli-vit:{ckpt}",
            "--n-steps",
            "4",
        ]
    )
    assert code == 0 and out.is_file() and out.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "delta" in printed and "circle" in printed
    missing = main(
        ["interactions", str(tmp_path / "nope.png"), "x", "--out", str(out), "--model", "testbed"]
    )
    assert missing == 2
    assert "not found" in capsys.readouterr().err


def test_cli_default_is_the_testbed_model(tmp_path, capsys):
    from PIL import Image

    from captum_clip.cli import main
    from captum_clip.models import load_clip
    from captum_clip.testbed.shapes import generate_scenes

    try:
        load_clip("testbed")
    except ValueError as err:
        pytest.skip(f"testbed model not available: {err}")
    scenes = generate_scenes(1, seed=3, caption_probs=(0, 1, 0, 0))
    picture = tmp_path / "scene.png"
    Image.fromarray((scenes.images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
        picture
    )
    out = tmp_path / "fig.png"
    assert (
        main(
            ["interactions", str(picture), scenes.captions[0], "--out", str(out), "--n-steps", "4"]
        )
        == 0
    )
    assert out.is_file()
    assert main(["interactions", str(picture), "a purple elephant", "--out", str(out)]) == 2
    assert "unknown word" in capsys.readouterr().err
