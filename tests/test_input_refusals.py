"""Inputs that would give a silently wrong answer: NaN embeddings, repeated class names."""

from __future__ import annotations

import warnings

import pytest
import torch

from captum_clip.metrics import recall_at_k
from captum_clip.metrics.retrieval import gallery_recall
from captum_clip.models import ClipClassifier


def _gallery():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(4, 8, generator=g), torch.randn(6, 8, generator=g)
    return img, txt, torch.tensor([0, 0, 1, 2, 3, 3])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", ["image", "text"])
def test_recall_refuses_non_finite_embeddings(bad, which):
    img, txt, t2i = _gallery()
    clean = recall_at_k(img, txt, t2i, ks=(1, 2))
    (img if which == "image" else txt)[2, 5] = bad
    name = "image_embeddings" if which == "image" else "text_embeddings"
    with pytest.raises(ValueError, match=rf"{name} must be finite.*1 row\(s\) \(first: \[2\]\)"):
        recall_at_k(img, txt, t2i, ks=(1, 2))
    # a finite gallery still gives a recall in [0, 1]
    assert all(0 <= float(v) <= 1 for v in clean.values())


def test_gallery_recall_refuses_a_non_finite_step():
    img, txt, t2i = _gallery()
    steps = torch.stack([img, img * 2, img], dim=1)
    ok = gallery_recall(steps, txt, t2i, ks=(1,))
    # scaling does not change cosines: every step has the clean recall
    assert torch.allclose(ok[1], recall_at_k(img, txt, t2i, ks=(1,))[1].expand(3))
    steps[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="image_embeddings must be finite"):
        gallery_recall(steps, txt, t2i, ks=(1,))


def test_repeated_class_names_warn_and_the_second_is_never_predicted(tiny_vit, tokenizer):
    names = ["dots", "stripes", "dots", "checks"]
    with pytest.warns(UserWarning, match=r"repeat 1 name\(s\): 'dots' at 0 and 2"):
        clf = ClipClassifier(tiny_vit, tokenizer, names)
    logits = clf(torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(logits[:, 0], logits[:, 2])  # identical columns
    assert not (logits.argmax(1) == 2).any()  # the repeated class can never win
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ClipClassifier(tiny_vit, tokenizer, ["dots", "stripes", "checks"])  # distinct: silent
