"""Speed of CCI against one plain batched forward and Captum's Occlusion / FeatureAblation.

Random-initialised open_clip ``ViT-B-16`` at 224 px on the CPU, a zero-shot
``ClipClassifier`` over 5 classes, batch of 8 images (real photos and textures from
scikit-image). Measured (wall clock, ``time.perf_counter``):

* ``forward(64)``: one plain batched forward of 64 images (8 images x 8 variants), the
  physical limit of CCI with K=7 (K + 1 = 8 passes per image).
* ``CCI``: ``CCI(clf, n_clusters=7, mask_mode="attention").attribute(x, target)`` (one
  unmasked forward of 8 images + k-means + one masked forward of 56 rows).
* ``Occlusion``: Captum, 16x16 windows, stride 16 (196 windows = the patch grid).
* ``FeatureAblation``: Captum, feature mask = the 14x14 patch grid (196 features).

Occlusion and FeatureAblation run with ``perturbations_per_eval=8`` (64 rows per forward,
the same batch size as the CCI forward) and are timed once (they take minutes); the
forward and CCI are the median of ``--repeats`` runs.

Usage::

    python benchmarks/cci_speed.py            # full run (several minutes on 2 cores)
    python benchmarks/cci_speed.py --quick    # skip Occlusion / FeatureAblation
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from captum.attr import FeatureAblation, Occlusion
from PIL import Image
from skimage import data

from captum_clip.attr.cci import CCI
from captum_clip.models import ClipClassifier

RESULTS = Path(__file__).parent / "results" / "cci_speed.md"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "grass", "gravel", "brick", "camera")


def _images(preprocess) -> torch.Tensor:
    out = []
    for name in PHOTOS:
        a = getattr(data, name)()
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        out.append(preprocess(Image.fromarray(a[..., :3])))
    return torch.stack(out)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="skip Occlusion/FeatureAblation")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=None)
    model.eval()
    clf = ClipClassifier(
        model, open_clip.get_tokenizer(args.model), ["cat", "person", "cup", "rocket", "grass"]
    )
    x = _images(preprocess)
    b = x.shape[0]
    with torch.no_grad():
        target = clf(x).argmax(1)
    x64 = x.repeat(8, 1, 1, 1)

    def forward():
        with torch.no_grad():
            return clf(x64)

    cci = CCI(clf, n_clusters=7)
    forward()  # warm-up
    cci.attribute(x[:2], target=target[:2])
    # interleaved so that load changes on the shared machine hit both alike
    t_fwd, t_cci, res = [], [], None
    for _ in range(args.repeats):
        t_fwd.append(_timed(forward))
        t0 = time.perf_counter()
        _, res = cci.attribute(x, target=target, return_clusters=True)
        t_cci.append(time.perf_counter() - t0)
    t_fwd, t_cci = statistics.median(t_fwd), statistics.median(t_cci)
    rows = [
        ("forward, 64 images (8 x 8 variants)", t_fwd, 1.0),
        ("CCI, K=7, attention mode", t_cci, t_cci / t_fwd),
    ]
    grid = torch.arange(196).reshape(1, 1, 14, 14)
    fmask = torch.nn.functional.interpolate(grid.float(), size=(224, 224), mode="nearest").long()
    if not args.quick:
        t0 = time.perf_counter()
        with torch.no_grad():
            Occlusion(clf).attribute(
                x,
                sliding_window_shapes=(3, 16, 16),
                strides=(3, 16, 16),
                target=target,
                perturbations_per_eval=8,
            )
        t_occ = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            FeatureAblation(clf).attribute(
                x, target=target, feature_mask=fmask, perturbations_per_eval=8
            )
        t_fa = time.perf_counter() - t0
        rows += [
            ("Captum Occlusion 16x16 / stride 16", t_occ, t_occ / t_fwd),
            ("Captum FeatureAblation, patch grid", t_fa, t_fa / t_fwd),
        ]
    n_clusters = int(torch.isfinite(res.scores).sum())
    lines = [
        "# CCI speed",
        "",
        f"Command: `python benchmarks/cci_speed.py{' --quick' if args.quick else ''}`",
        "",
        f"Settings: random-initialised open_clip `{args.model}`, 224 px, CPU, "
        f"torch {torch.__version__}, {args.threads} threads on a 2-core machine shared with "
        f"other jobs (timings are noisy); batch of {b} images; zero-shot ClipClassifier "
        f"(5 classes), target = predicted class; K=7 ({n_clusters} non-empty clusters over "
        f"the batch). forward and CCI: median of {args.repeats} runs; Occlusion and "
        "FeatureAblation: one run, perturbations_per_eval=8 (64 rows per forward).",
        "",
        "| method | seconds | / forward(64) |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {t:.2f} | {r:.2f} |" for name, t, r in rows]
    if not args.quick:
        lines += [
            "",
            f"CCI is {t_occ / t_cci:.1f}x faster than Occlusion and {t_fa / t_cci:.1f}x "
            "faster than FeatureAblation on the same images (both need 196 perturbations "
            "per image; CCI needs K = 7).",
        ]
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
