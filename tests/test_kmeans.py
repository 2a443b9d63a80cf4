"""Batched torch k-means: quality against scikit-learn on real patch tokens, fixed points,
seeds, batch split, float32 vs float64, empty clusters; CCI's use of it."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from captum_clip.attr._kmeans import batched_kmeans, consecutive_labels
from captum_clip.attr.cci import CCI
from captum_clip.models import ClipAdapter, ClipClassifier, load_clip

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick")


def _photos(preprocess) -> torch.Tensor:
    out = []
    for name in PHOTOS:
        a = getattr(data, name)()
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        out.append(preprocess(Image.fromarray(a[..., :3])))
    return torch.stack(out)


@pytest.fixture(scope="module")
def tokens() -> dict[str, torch.Tensor]:
    """``(B, N, d)`` last-block patch tokens of the photos through three models."""
    out = {}
    torch.manual_seed(0)
    vit, _, pre = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None)
    models = {"ViT-B-16 random": (vit.eval(), pre)}
    for variant in ("default", "shortcut"):
        model, pre, _ = load_clip("testbed", variant=variant)
        models[f"testbed {variant}"] = (model, pre)
    with torch.no_grad():
        for name, (model, pre) in models.items():
            f = ClipAdapter(model).vision.patch_features(_photos(pre), -1)
            out[name] = f.reshape(f.shape[0], -1, f.shape[-1]).float()
    return out


def _inertia(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Independent inertia: squared distances to the mean of each point's cluster."""
    x = F.normalize(x.double(), dim=-1)
    out = []
    for xi, li in zip(x, labels):
        means = torch.stack([xi[li == c].mean(0) for c in range(int(li.max()) + 1)])
        out.append(((xi - means[li]) ** 2).sum())
    return torch.stack(out)


@pytest.mark.parametrize("model", ["ViT-B-16 random", "testbed default", "testbed shortcut"])
@pytest.mark.parametrize("k", [3, 7])
def test_inertia_within_one_percent_of_sklearn(tokens, model, k):
    x = tokens[model]
    res = batched_kmeans(x, k, seed=0)
    mine = _inertia(x, res.labels)
    torch.testing.assert_close(res.inertia.double(), mine, rtol=1e-4, atol=1e-6)
    pts = F.normalize(x.double(), dim=-1).numpy()
    with threadpool_limits(1):
        ref = [KMeans(k, n_init=4, random_state=0).fit(p).inertia_ for p in pts]
    ratio = mine.numpy() / np.array(ref)
    assert np.median(ratio) <= 1.01, ratio
    assert (res.n_found == k).all()


def test_converged_labels_are_a_lloyd_fixed_point(tokens):
    x = tokens["ViT-B-16 random"]
    res = batched_kmeans(x, 5, max_iter=300, seed=3)
    assert res.n_iter < 300  # converged
    xn = F.normalize(x.double(), dim=-1)
    for xi, li in zip(xn, res.labels):
        means = torch.stack([xi[li == c].mean(0) for c in range(5)])
        assert torch.equal(torch.cdist(xi, means).argmin(1), li)


def test_seed_batch_split_and_precision(tokens):
    x = tokens["testbed default"]
    threads = torch.get_num_threads()
    a = batched_kmeans(x, 6, seed=7)
    assert torch.get_num_threads() == threads  # the CPU thread limit is undone
    assert torch.equal(a.labels, batched_kmeans(x, 6, seed=7).labels)
    parts = [batched_kmeans(x[i : i + 2], 6, seed=7) for i in range(0, len(x), 2)]
    assert torch.equal(torch.cat([p.labels for p in parts]), a.labels)
    torch.testing.assert_close(torch.cat([p.inertia for p in parts]), a.inertia)
    single = batched_kmeans(x[4:5], 6, seed=7)  # an image alone, at position 0
    assert torch.equal(single.labels, a.labels[4:5])
    d = batched_kmeans(x.double(), 6, seed=7)
    assert d.inertia.dtype == torch.float64
    assert torch.equal(d.labels, a.labels)
    torch.testing.assert_close(d.inertia.float(), a.inertia, rtol=1e-5, atol=1e-6)


def test_separated_blobs_recovered_and_duplicates_dropped():
    g = torch.Generator().manual_seed(0)
    dirs = torch.eye(8)[:4]  # 4 orthogonal directions: far apart on the sphere
    truth = torch.randint(0, 4, (3, 60), generator=g)
    x = dirs[truth] + 0.05 * torch.randn(3, 60, 8, generator=g)
    res = batched_kmeans(x, 4, seed=0)
    for t, lab in zip(truth, res.labels):  # same partition, up to the cluster ids
        pairs = set(zip(t.tolist(), lab.tolist()))
        assert len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs}) == 4
    # 3 distinct points, 5 clusters asked: 3 found, identical points together
    dup = dirs[torch.tensor([[0, 1, 2, 0, 1, 2, 0, 0]])]
    res = batched_kmeans(dup, 5, seed=0)
    assert res.n_found.tolist() == [3]
    lab = res.labels[0]
    assert sorted(set(lab.tolist())) == [0, 1, 2]
    assert lab[0] == lab[3] == lab[6] == lab[7] and lab[1] == lab[4] and lab[2] == lab[5]
    assert res.inertia.abs().max() < 1e-6


def test_consecutive_labels_match_numpy():
    labels = torch.tensor([[4, 4, 1, 6], [0, 2, 2, 0]])
    out, n = consecutive_labels(labels, 7)
    for row, o in zip(labels, out):
        assert o.tolist() == np.unique(row.numpy(), return_inverse=True)[1].tolist()
    assert n.tolist() == [3, 2]


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"n_clusters must be an int in \[1, 4\]"):
        batched_kmeans(torch.randn(2, 4, 3), 5)
    with pytest.raises(ValueError, match="float tensor"):
        batched_kmeans(torch.randn(4, 3), 2)
    with pytest.raises(ValueError, match="n_init"):
        batched_kmeans(torch.randn(2, 4, 3), 2, n_init=0)


def test_cci_default_and_sklearn_clusterer(tiny_vit, tokenizer):
    clf = ClipClassifier(tiny_vit, tokenizer, ["cat", "dog"])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    _, res = CCI(clf, n_clusters=4, random_state=5).attribute(x, 0, return_clusters=True)
    with torch.no_grad():
        feats = clf.vision.patch_features(x, -1).reshape(3, 16, -1)
    ref = batched_kmeans(feats, 4, seed=5)
    assert torch.equal(res.labels.reshape(3, -1), ref.labels)
    # a scikit-learn estimator: per-image fit on the L2-normalised tokens, ids made consecutive
    est = KMeans(n_clusters=2, n_init=1, random_state=0)
    _, sk = CCI(clf, n_clusters=3, clusterer=est).attribute(x, 0, return_clusters=True)
    pts = F.normalize(feats, dim=-1).double().numpy()
    for i in range(3):
        raw = KMeans(n_clusters=3, n_init=1, random_state=0).fit_predict(pts[i])
        expected = np.unique(raw, return_inverse=True)[1]
        assert sk.labels[i].reshape(-1).tolist() == expected.tolist()


class TooMany:
    """Estimator that ignores n_clusters and returns one label per point."""

    def get_params(self, deep=True):
        return {}

    def fit_predict(self, x):
        return np.arange(len(x))


def test_clusterer_with_too_many_labels_is_an_error(tiny_vit, tokenizer):
    clf = ClipClassifier(tiny_vit, tokenizer, ["cat", "dog"])
    with pytest.raises(ValueError, match="found 16 clusters with n_clusters=3"):
        CCI(clf, n_clusters=3, clusterer=TooMany()).attribute(torch.randn(1, 3, 32, 32), 0)


def test_empty_clusters_move_to_the_farthest_points():
    from captum_clip.attr._kmeans import _reseed

    x = torch.arange(10.0).reshape(1, 5, 2)
    dist = torch.tensor([0.1, 0.5, 0.0, 0.9, 0.3]).reshape(1, 5, 1)
    empty = torch.tensor([[[False, True, True]]])
    new, old = torch.full((1, 3, 2), 7.0), torch.full((1, 3, 2), -1.0)
    out, moved = _reseed(x, dist, new, old, empty)
    assert moved
    assert out[0].tolist() == [[7.0, 7.0], x[0, 3].tolist(), x[0, 1].tolist()]
    out, moved = _reseed(x, torch.zeros(1, 5, 1), new, old, empty)  # nowhere to go
    assert not moved
    assert out[0].tolist() == [[7.0, 7.0], [-1.0, -1.0], [-1.0, -1.0]]
