"""Caption grounding: exact table values on a closed-form toy, aggregates, testbed roles."""

from __future__ import annotations

import math

import pytest
import torch

from captum_clip import grounding as G
from captum_clip.attr import IntegratedInteractions
from captum_clip.attr.interactions import TokenEncoder
from captum_clip.testbed import shapes

WORDS = ["<sot>", "a", "horizontal", "stripes", "on", "grass", "<eot>"]


class Linear(TokenEncoder):
    """``f(x) = W vec(x)`` with the inputs as hidden states; fixed token labels."""

    def __init__(self, w: torch.Tensor, words: list[str] | None = None) -> None:
        self.w, self.words = w, words

    def hidden(self, inputs, index):
        return inputs

    def from_hidden(self, x, inputs, index):
        return torch.einsum("ktd,ntd->nk", self.w, x)

    def labels(self, inputs):
        if self.words is None:
            return super().labels(inputs)
        return [list(self.words) for _ in range(inputs.shape[0])]


def toy(w, v, a, b, grid=(2, 2), words=WORDS):
    """Interactions of the bilinear toy: ``A[s, p] = (W_s dx_s) . (V_p dy_p)`` exactly."""
    ii = IntegratedInteractions.from_encoders(Linear(w, words), Linear(v), patch_grid=grid)
    kw = dict(text_layer=0, image_layer=0, similarity="dot", n_steps=3)
    return ii.explain(b, a, **kw)


def rank_one(text_coef, image_coef):
    """D = 1 toy whose A[s, p] = text_coef[s] * image_coef[p] (zero references)."""
    t, p = len(text_coef), len(image_coef)
    w = torch.ones(1, t, 1, dtype=torch.float64)
    v = torch.ones(1, p, 1, dtype=torch.float64)
    a = torch.tensor(text_coef, dtype=torch.float64).reshape(1, t, 1)
    b = torch.tensor(image_coef, dtype=torch.float64).reshape(1, p, 1)
    return toy(w, v, a, b)


def test_toy_table_exact_values():
    # A = outer(text, image): image tokens [CLS, p00, p01, p10, p11]
    text = [0.0, 0.0, 1.0, 1.0, 0.0, -1.0, 0.0]
    image = [0.5, 3.0, -1.0, 1.0, 0.0]
    res = rank_one(text, image)
    expected_a = torch.outer(torch.tensor(text), torch.tensor(image)).double()
    torch.testing.assert_close(res.attributions[0], expected_a)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    rows = G.measure(
        res, [mask], [{"object": "horizontal stripes", "context": "grass"}], [{"class": "h"}]
    )
    obj, ctx = rows
    # "horizontal stripes" = rows 2 and 3: map 2 * [[3, -1], [1, 0]]
    assert obj["positions"] == "2 3" and obj["role"] == "object" and obj["class"] == "h"
    assert obj["area_share"] == pytest.approx(0.25)
    assert obj["positive_mass"] == pytest.approx(8.0)
    assert obj["object_share"] == pytest.approx(6 / 8)
    assert obj["lift"] == pytest.approx(3.0)
    # whole caption: text coefficients sum to 1, so its map is the image's [[3, -1], [1, 0]]
    assert obj["caption_share"] == ctx["caption_share"] == pytest.approx(3 / 4)
    assert obj["pointing"] == 1
    assert obj["total"] == pytest.approx(2 * 3.5)  # CLS column included
    assert obj["object_total"] == pytest.approx(6.0)
    assert obj["misplaced"] is False
    # "grass" = -1 * image: map [[-3, 1], [-1, 0]]: all positive mass on the background
    assert ctx["object_share"] == pytest.approx(0.0)
    assert ctx["pointing"] == 0
    assert ctx["total"] == pytest.approx(-3.5)
    assert ctx["object_total"] == pytest.approx(-3.0)
    assert ctx["misplaced"] is False
    # the context word on the object / the object word off it are misplaced
    swapped = G.measure(res, [1 - mask], [{"object": "horizontal stripes", "context": "grass"}])
    assert swapped[0]["object_share"] == pytest.approx(2 / 8) and swapped[0]["misplaced"]
    assert swapped[1]["object_share"] == pytest.approx(1.0) and swapped[1]["misplaced"]


def test_toy_no_positive_mass_gives_nan_share():
    res = rank_one([0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0], [1.0, -1.0, -2.0, 0.0, -1.0])
    (row,) = G.measure(
        res, [torch.tensor([[1, 0], [0, 0]], dtype=torch.bool)], [{"object": "grass"}]
    )
    assert math.isnan(row["object_share"]) and row["misplaced"] is None
    assert row["positive_mass"] == 0.0


def brute_force_row(a_row_block, w):
    """Independent loop implementation of one row's quantities (a_row_block: (k, 1+P))."""
    h, wd = w.shape
    m = [[0.0] * wd for _ in range(h)]
    for r in a_row_block.tolist():
        for p, val in enumerate(r[1:]):
            m[p // wd][p % wd] += val
    pos = sum(max(v, 0.0) for row in m for v in row)
    inside = sum(max(m[i][j], 0.0) * float(w[i, j]) for i in range(h) for j in range(wd))
    best = max(((m[i][j], i, j) for i in range(h) for j in range(wd)), key=lambda t: t[0])
    return {
        "object_share": inside / pos,
        "pointing": int(float(w[best[1], best[2]]) >= 0.5),
        "total": float(a_row_block.sum()),
        "area_share": float(w.mean()),
    }


def test_toy_matches_brute_force_with_pixel_masks():
    g = torch.Generator().manual_seed(3)
    t, p, d = len(WORDS), 1 + 3 * 4, 2
    w = torch.randn(4, t, d, generator=g, dtype=torch.float64)
    v = torch.randn(4, p, d, generator=g, dtype=torch.float64)
    a = torch.randn(2, t, d, generator=g, dtype=torch.float64)
    b = torch.randn(2, p, d, generator=g, dtype=torch.float64)
    res = toy(w, v, a, b, grid=(3, 4))
    masks = torch.rand(2, 6, 8, generator=g) > 0.6  # pixels: 2x2 per patch
    roles = [{"object": "stripes"}, {"object": "horizontal stripes", "context": "on"}]
    rows = G.measure(res, masks, roles)
    assert [r["pair"] for r in rows] == [0, 1, 1]
    for row in rows:
        i = row["pair"]
        frac = masks[i].double().reshape(3, 2, 4, 2).mean((1, 3))
        pos = [int(s) for s in row["positions"].split()]
        ref = brute_force_row(res.attributions[i, pos], frac)
        for key, value in ref.items():
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_bad_inputs():
    res = rank_one([0.0, 0.0, 1.0, 1.0, 0.0, -1.0, 0.0], [0.5, 3.0, -1.0, 1.0, 0.0])
    good = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"mask 0 has shape \(3, 3\)"):
        G.measure(res, [torch.ones(3, 3)], [{"object": "grass"}])
    with pytest.raises(ValueError, match="word 'dog' is not in the caption"):
        G.measure(res, [good], [{"object": "dog"}])
    with pytest.raises(ValueError, match="unknown word role 'subject'"):
        G.measure(res, [good], [{"subject": "grass"}])
    with pytest.raises(ValueError, match="some object and some background"):
        G.measure(res, [torch.zeros(2, 2)], [{"object": "grass"}])
    with pytest.raises(ValueError, match=r"one mask per pair \(1\), got 2"):
        G.measure(res, [good, good], [{"object": "grass"}])
    with pytest.raises(ValueError, match="bools or floats in"):
        G.measure(res, [good * 2], [{"object": "grass"}])
    with pytest.raises(ValueError, match="clashes"):
        G.measure(res, [good], [{"object": "grass"}], [{"lift": 1}])
    with pytest.raises(TypeError, match="roles must be a mapping"):
        G.measure(res, [good], [["grass"]])


def test_mask_must_match_a_known_image_size():
    assert G.patch_weights(torch.ones(64, 64).tril(), (8, 8), (64, 64)).shape == (8, 8)
    with pytest.raises(ValueError, match=r"\(32, 32\); expected the patch grid or the image"):
        G.patch_weights(torch.ones(32, 32).tril(), (8, 8), (64, 64))


def test_phrase_positions_sub_word_tokens():
    tokens = ["<start_of_text>", "a</w>", "hot</w>", "dog</w>", "on</w>", "gra", "ss</w>", ""]
    assert G.phrase_positions(tokens, "grass") == [5, 6]
    assert G.phrase_positions(tokens, "Hot Dog") == [2, 3]
    assert G.phrase_positions(["a", "dots", "and", "dots"], "dots") == [1, 3]
    with pytest.raises(ValueError, match="'cat' is not in the caption"):
        G.phrase_positions(tokens, "cat")


def rows_for_summary():
    rows = []
    for seed, shares in ((0, (0.2, 0.6)), (1, (0.4, 1.0))):
        for j, (share, area) in enumerate(zip(shares, (0.1, 0.5))):
            rows.append({"seed": seed, "role": "object", "class": "c", "object_share": share,
                         "area_share": area, "lift": share / area, "pointing": j,
                         "total": 1.0 + j, "misplaced": share < area, "unusual": j == 1})  # fmt: skip
        rows.append({"seed": seed, "role": "context", "class": "c", "object_share": 0.9,
                     "area_share": 0.5, "lift": 1.8, "pointing": 1, "total": 0.0,
                     "misplaced": True, "unusual": False})  # fmt: skip
    return rows


def test_summary_aggregates():
    rows = rows_for_summary()
    (obj,) = [r for r in G.by_class(rows) if r["role"] == "object"]
    assert obj["n"] == 4
    assert obj["object_share"] == pytest.approx(0.55)
    assert obj["object_share_sd"] == pytest.approx(torch.tensor([0.2, 0.6, 0.4, 1.0]).std().item())
    assert obj["background_share"] == pytest.approx(0.45)
    assert obj["misplaced"] == pytest.approx(0.0)
    per_seed = G.summarise([r for r in rows if r["role"] == "object"], spread_over="seed")[0]
    assert per_seed["n_seeds"] == 2
    assert per_seed["object_share"] == pytest.approx(0.55)  # mean of 0.4 and 0.7
    assert per_seed["object_share_sd"] == pytest.approx(math.sqrt(0.045))
    curve = G.coverage(rows, bins=(0.0, 0.3, 1.0))
    assert [c["area_bin"] for c in curve] == ["0.00-0.30", "0.30-1.00"]
    assert [c["object_share"] for c in curve] == pytest.approx([0.3, 0.8])
    unusual = {r["unusual"]: r for r in G.unusual_scenes(rows)}
    assert unusual[True]["object_share"] == pytest.approx(0.8)
    corr = {r["role"]: r for r in G.correlated_contexts(rows)}
    assert corr["context"]["misplaced"] == 1.0 and corr["object"]["misplaced"] == 0.0
    with pytest.raises(ValueError, match="outside the bins"):
        G.coverage(rows, bins=(0.0, 0.3))
    with pytest.raises(ValueError, match="no column 'condition'"):
        G.summarise(rows, ("condition",))
    assert "0.550 ± " in G.markdown(G.by_class(rows))


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("a red dots on grass", {"object": "dots", "attribute": ["red"], "context": "grass"}),
        ("a photo of horizontal stripes", {"object": "horizontal stripes"}),
        ("diagonal stripes on snow", {"object": "diagonal stripes", "context": "snow"}),
        ("a white and black checks", {"object": "checks", "attribute": ["white", "black"]}),
        ("A Blue solid on lava.", {"object": "solid", "attribute": ["blue"], "context": "lava"}),
    ],
)
def test_testbed_roles(caption, expected):
    assert G.testbed_roles(caption) == expected


def test_testbed_roles_errors():
    with pytest.raises(ValueError, match="exactly one pattern class"):
        G.testbed_roles("a red stripes on grass")
    with pytest.raises(ValueError, match="exactly one pattern class"):
        G.testbed_roles("dots and checks")
    with pytest.raises(ValueError, match="several backgrounds"):
        G.testbed_roles("dots on grass and sky")


def test_testbed_scenes_conditions():
    sc = G.testbed_scenes(5, seed=3)
    assert len(sc) == 15 and sc.images.shape == (15, 3, 64, 64)
    names = shapes.BACKGROUND_NAMES
    for j in range(5):
        trio = sc.meta[3 * j : 3 * j + 3]
        assert [m["condition"] for m in trio] == list(G.CONDITIONS)
        cls = shapes.CLASS_NAMES.index(trio[0]["class"])
        own = names[cls % len(names)]
        assert trio[0]["background"] == own
        assert trio[1]["background"] != own
        assert names.index(trio[1]["background"]) < shapes.OWNED_BACKGROUNDS
        assert trio[2]["background"] in ("snow", "lava") and trio[2]["unusual"]
        for k, m in enumerate(trio):
            assert torch.equal(sc.masks[3 * j + k], sc.masks[3 * j])  # one object, 3 scenes
            assert sc.roles[3 * j + k]["context"] == m["background"]
            assert sc.captions[3 * j + k].endswith(" on " + m["background"])
    again = G.testbed_scenes(5, seed=3)
    assert torch.equal(again.images, sc.images) and again.captions == sc.captions


def test_from_encoders_patch_grid_checked():
    w = torch.ones(1, 3, 1)
    with pytest.raises(ValueError, match="pair of positive ints"):
        IntegratedInteractions.from_encoders(Linear(w), Linear(w), patch_grid=(0, 2))
    ii = IntegratedInteractions.from_encoders(Linear(w), Linear(w), patch_grid=(2, 2))
    with pytest.raises(ValueError, match=r"has 4 patches but the image encoder gives 3"):
        ii.explain(torch.ones(1, 3, 1), torch.ones(1, 3, 1), text_layer=0, image_layer=0)
