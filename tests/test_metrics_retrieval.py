"""Retrieval recall@k under deletion/insertion on a toy gallery, against a plain loop."""

from __future__ import annotations

import math

import pytest
import torch

from captum_clip.metrics import GRAD_ECLIP, recall_at_k, retrieval_auc, retrieval_curve

N, C, H, W, D = 6, 3, 4, 4, 8


def toy():
    gen = torch.Generator().manual_seed(0)
    proj = torch.randn(C * H * W, D, generator=gen, dtype=torch.float64)
    images = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    attributions = torch.randn(N, H, W, generator=gen, dtype=torch.float64)

    def encoder(x):
        return x.flatten(1) @ proj

    text_to_image = torch.arange(N).repeat_interleave(2)  # two captions per image
    texts = encoder(images)[text_to_image] + 0.3 * torch.randn(
        2 * N, D, generator=gen, dtype=torch.float64
    )
    return encoder, images, attributions, texts, text_to_image


def ref_recall(img_emb, txt_emb, t2i, k, direction):
    img = torch.nn.functional.normalize(img_emb.float(), dim=-1)
    txt = torch.nn.functional.normalize(txt_emb.float(), dim=-1)
    sim = txt @ img.T
    hits = []
    if direction == "image":
        for t in range(len(txt)):
            row = sim[t].tolist()
            pos = row[t2i[t]]
            g = sum(v > pos for v in row)
            e = sum(v == pos for v in row)
            hits.append(sum(p < k for p in range(g, g + e)) / e)
    else:
        for i in range(len(img)):
            col = sim[:, i].tolist()
            best = max(col[t] for t in range(len(txt)) if t2i[t] == i)
            g = sum(v > best for v in col)
            e = sum(v == best for v in col)
            m = sum(col[t] == best for t in range(len(txt)) if t2i[t] == i)
            r = min(max(k - g, 0), e)
            hits.append(1 - math.comb(e - m, r) / math.comb(e, r))
    return sum(hits) / len(hits)


@pytest.mark.parametrize("direction", ["image", "text"])
@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_retrieval_curve_equals_loop(mode, direction):
    encoder, images, attributions, texts, t2i = toy()
    n_steps = 4
    fr, rec = retrieval_curve(
        encoder,
        images,
        attributions,
        texts,
        t2i,
        mode=mode,
        direction=direction,
        baselines="zeros",
        n_steps=n_steps,
        max_examples_per_batch=7,
    )
    n = H * W
    for s in range(n_steps + 1):
        k_units = math.floor(s * n / n_steps + 0.5)
        assert fr[s].item() == pytest.approx(k_units / n)
        pert = []
        for b in range(N):
            order = torch.argsort(attributions[b].flatten(), descending=True)[:k_units]
            img = images[b].clone().view(C, -1)
            sel = torch.zeros(n, dtype=torch.bool)
            sel[order] = True
            img = (
                torch.where(sel, torch.zeros_like(img), img)
                if mode == "deletion"
                else torch.where(sel, img, 0.0)
            )
            pert.append(img.view(C, H, W))
        emb = encoder(torch.stack(pert))
        for k in (1, 5):
            assert rec[k][s].item() == pytest.approx(
                ref_recall(emb, texts, t2i.tolist(), k, direction), abs=1e-6
            )
    # fully deleted gallery: identical (zero) images -> chance level, not a perfect score
    end = rec[1][-1] if mode == "deletion" else rec[1][0]
    assert end.item() == pytest.approx(1 / N if direction == "image" else 2 / (2 * N))
    start = rec[1][0] if mode == "deletion" else rec[1][-1]
    assert start.item() > 0.8  # the captions match their clean images


def test_recall_at_k_hand_example():
    img = torch.eye(3)
    txt = torch.tensor(
        [[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.2]]
    )  # 3rd text wrongly nearest image 0
    t2i = torch.tensor([0, 1, 2])
    r = recall_at_k(img, txt, t2i, ks=(1, 2))
    assert r[1].item() == pytest.approx(2 / 3) and r[2].item() == pytest.approx(1.0)
    rt = recall_at_k(img, txt, t2i, ks=(1,), direction="text")
    # image 0: cos(t0) = 0.995 > cos(t2) = 0.981; image 1: t1 = 1; image 2: only t2 > 0
    assert rt[1].item() == pytest.approx(1.0)


def test_retrieval_auc_and_protocol():
    encoder, images, attributions, texts, t2i = toy()
    fr, rec = retrieval_curve(
        encoder, images, attributions, texts, t2i, baselines="zeros", n_steps=8
    )
    auc = retrieval_auc(encoder, images, attributions, texts, t2i, baselines="zeros", n_steps=8)
    for k in (1, 5):
        torch.testing.assert_close(auc[k], torch.trapezoid(rec[k], fr))
    big = torch.nn.functional.interpolate(images, size=(20, 20)).float()
    att = torch.nn.functional.interpolate(attributions[:, None], size=(20, 20))[:, 0]
    fr_p, rec_p = retrieval_curve(
        lambda x: encoder(torch.nn.functional.avg_pool2d(x.double(), 5)),
        big,
        att,
        texts,
        t2i,
        protocol=GRAD_ECLIP,
        ks=(1,),
    )
    assert len(fr_p) == 11 and fr_p[-1].item() == pytest.approx(0.5) and set(rec_p) == {1}


def test_retrieval_bad_inputs():
    encoder, images, attributions, texts, t2i = toy()
    with pytest.raises(ValueError, match="text_to_image values"):
        retrieval_curve(encoder, images, attributions, texts, t2i + N, n_steps=2)
    with pytest.raises(ValueError, match="text_to_image must be a tensor of 12"):
        retrieval_curve(encoder, images, attributions, texts, t2i[:3], n_steps=2)
    with pytest.raises(ValueError, match="direction"):
        retrieval_curve(encoder, images, attributions, texts, t2i, n_steps=2, direction="both")
    with pytest.raises(ValueError, match="mode"):
        retrieval_curve(encoder, images, attributions, texts, t2i, n_steps=2, mode="flip")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(direction="images"), ValueError, r"direction must be 'image' .* got 'images'"),
        (dict(direction="IR"), ValueError, "direction must be"),
        (
            dict(ks=(0,)),
            ValueError,
            r"ks must be a non-empty sequence of positive ints, got \(0,\)",
        ),
        (dict(ks=()), ValueError, "ks must be a non-empty"),
        (dict(ks=5), ValueError, "ks must be a non-empty sequence"),
        (dict(ks=(1.0,)), ValueError, "ks must be"),
        (dict(ks=(True,)), ValueError, "ks must be"),
        (dict(t2i=torch.tensor([0, 1, 3])), ValueError, r"must lie in \[0, 2\] .* got 3"),
        (dict(t2i=torch.tensor([0, -1, 2])), ValueError, r"must lie in \[0, 2\] .* got -1"),
        (dict(t2i=torch.tensor([0, 1])), ValueError, "tensor of 3 image indices"),
        (dict(t2i=[0, 1, 2]), ValueError, "tensor of 3 image indices"),
        (dict(t2i=torch.tensor([0.0, 1.0, 2.0])), TypeError, "must hold integers"),
        (dict(img=torch.eye(3)[:, :2]), ValueError, "D=3 but image_embeddings D=2"),
        (dict(img=torch.zeros(0, 3)), ValueError, "image_embeddings is empty"),
        (dict(img=torch.eye(3)[0]), ValueError, r"image_embeddings must be an \(N, D\)"),
        (dict(txt=torch.zeros(0, 3), t2i=torch.zeros(0, dtype=torch.long)), ValueError, "empty"),
        (dict(tie_tolerance=-1.0), ValueError, "tie_tolerance"),
    ],
)
def test_recall_at_k_validates(kwargs, error, match):
    img, txt, t2i = torch.eye(3), torch.eye(3), torch.arange(3)
    args = dict(img=img, txt=txt, t2i=t2i) | {
        k: kwargs.pop(k) for k in ("img", "txt", "t2i") if k in kwargs
    }
    with pytest.raises(error, match=match):
        recall_at_k(args["img"], args["txt"], args["t2i"], **kwargs)


def test_recall_at_k_tie_tolerance():
    """Two images 1e-8 apart are tied (recall@1 = 1/2 each), not ordered by float noise."""
    img = torch.tensor([[1.0, 0.0], [1.0, 1e-8]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t2i = torch.tensor([0, 1])
    assert recall_at_k(img, txt, t2i, ks=(1,))[1].item() == pytest.approx(0.5)
    assert recall_at_k(img, txt, t2i, ks=(1, 2), direction="text")[1].item() == pytest.approx(0.5)
    # 5e-7 apart: a tie by default, an order with exact comparison
    img2 = torch.tensor([[1.0, 0.0], [1.0, 1e-3]])
    both0 = torch.tensor([0, 0])
    assert recall_at_k(img2, txt, both0, ks=(1,))[1].item() == pytest.approx(0.5)
    assert recall_at_k(img2, txt, both0, ks=(1,), tie_tolerance=0.0)[1].item() == 1.0
