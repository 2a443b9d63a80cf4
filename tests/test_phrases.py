"""One rule for naming tokens by text: a phrase selects every token it spans."""

from __future__ import annotations

import pytest
import torch

from captum_clip.attr import InteractionResult
from captum_clip.attr._phrases import phrase_positions
from captum_clip.cli import main as cli_main
from captum_clip.testbed import shapes

TOKENS = ["<sot>", "vertical", "stripes", "and", "vertical", "<eot>"]


def _result(tokens=TOKENS, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(1, len(tokens), 1 + 6, generator=g)
    res = InteractionResult(
        a, [list(tokens)], (2, 3), torch.ones(1), torch.zeros(1), torch.zeros(1, 3)
    )
    return res, a


def test_image_map_of_two_words_is_the_sum_of_their_maps():
    res, a = _result()
    both = res.image_map("vertical stripes")
    # "vertical" occurs twice; the phrase "vertical stripes" only at positions 1-2
    torch.testing.assert_close(both, res.image_map([1]) + res.image_map([2]))
    torch.testing.assert_close(both, (a[0, 1, 1:] + a[0, 2, 1:]).reshape(2, 3))
    # a single word selects every occurrence
    torch.testing.assert_close(res.image_map("vertical"), (a[0, 1, 1:] + a[0, 4, 1:]).reshape(2, 3))
    # case and extra spaces do not matter
    torch.testing.assert_close(res.image_map("Vertical   Stripes"), both)


def test_phrases_over_sub_word_tokens():
    res, a = _result(["<sot>", "golden</w>", "retri", "ever</w>", "<eot>"], seed=1)
    torch.testing.assert_close(
        res.image_map("golden retriever"), a[0, 1:4, 1:].sum(0).reshape(2, 3)
    )
    torch.testing.assert_close(res.image_map("retriever"), a[0, 2:4, 1:].sum(0).reshape(2, 3))


def test_token_scores_per_phrase_are_sums_of_token_scores():
    res, _ = _result()
    region = torch.tensor([[True, False, True], [False, True, False]])
    per_token = res.token_scores(region)
    got = res.token_scores(region, words=["vertical stripes", "and", [2, 3], slice(1, 3)])
    expected = torch.stack([per_token[1] + per_token[2], per_token[3], per_token[2] + per_token[3],
                            per_token[1] + per_token[2]])  # fmt: skip
    torch.testing.assert_close(got, expected)
    with pytest.raises(TypeError, match="sequence of words"):
        res.token_scores(words="vertical")


def test_a_phrase_not_in_the_caption_names_the_tokens():
    res, _ = _result()
    with pytest.raises(ValueError, match=r"'stripes vertical' is not in the caption.*'and'"):
        res.image_map("stripes vertical")
    with pytest.raises(ValueError, match="non-empty"):
        phrase_positions(TOKENS, "  ")


def test_grounding_uses_the_same_rule():
    from captum_clip import grounding

    assert grounding.phrase_positions is phrase_positions


def test_cli_interactions_word_arguments_take_phrases(tmp_path, capsys):
    scenes = shapes.generate_scenes(1, seed=3, size=64)
    from torchvision.transforms.functional import to_pil_image

    img = tmp_path / "scene.png"
    to_pil_image(scenes.images[0]).save(img)
    argv = ["interactions", str(img), "red dots on grass", "--words", "red dots", "grass",
            "--n-steps", "1", "--device", "cpu", "--out", str(tmp_path / "f.png")]  # fmt: skip
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    per_token = {}
    for line in out.split("the same, summed")[0].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1][0] in "+-":
            per_token[parts[0].removesuffix("</w>")] = float(parts[1])
    phrase = [ln for ln in out.splitlines() if ln.strip().startswith("red dots")]
    assert len(phrase) == 1
    assert float(phrase[0].split()[-1]) == pytest.approx(
        per_token["red"] + per_token["dots"], abs=2e-5
    )
    assert (tmp_path / "f.png").is_file()
