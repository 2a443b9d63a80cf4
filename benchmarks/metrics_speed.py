"""Speed of captum_clip deletion/insertion curves vs Quantus ``PixelFlipping``.

Same curve on both sides: pixel deletion to a 0.0 baseline (normalised-space zero), logit of
a fixed target, ``n_steps`` equal steps of ``H*W/n_steps`` pixels (98 steps of 512 pixels
at 224 px, because Quantus needs equal steps and 224*224 is not divisible by 100).
Quantus does not compute the unperturbed point, so its curve is ours without step 0.

Usage::

    python benchmarks/metrics_speed.py              # 32 images, ViT-B-16 + cheap model
    python benchmarks/metrics_speed.py --n-images 8 # fewer images (ViT-B-16 on CPU is slow)
    python benchmarks/metrics_speed.py --quick      # 2 images, smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if not hasattr(np, "trapz"):  # quantus 0.6.0 calls np.trapz, removed in numpy 2.4
    np.trapz = np.trapezoid

from captum_clip.metrics import (
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    deletion_curve,
    insertion_curve,
)

RESULTS = Path(__file__).parent / "results" / "metrics_speed.md"


class ZeroShot(torch.nn.Module):
    """``images -> encode_image(images) @ T.T`` with fixed random text embeddings."""

    def __init__(self, encoder: torch.nn.Module, dim: int, n_classes: int = 10) -> None:
        super().__init__()
        self.encoder = encoder
        gen = torch.Generator().manual_seed(1)
        self.register_buffer(
            "text", F.normalize(torch.randn(n_classes, dim, generator=gen), dim=-1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(x), dim=-1) @ self.text.T * 100


class Cheap(torch.nn.Module):
    """A near-free image encoder (16x16 average pooling + linear) to expose overheads."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(3 * 16 * 16, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.adaptive_avg_pool2d(x, 16).flatten(1))


def photos(n: int, size: int = 224) -> torch.Tensor:
    """``n`` normalised 224 px crops of the skimage sample photos."""
    from skimage import data

    srcs = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        img = torch.from_numpy(srcs[i % len(srcs)]).permute(2, 0, 1).float()[None] / 255
        h, w = img.shape[-2:]
        s = int(torch.randint(size, min(h, w) + 1, (1,), generator=gen))
        y = int(torch.randint(0, h - s + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - s + 1, (1,), generator=gen))
        out.append(
            F.interpolate(img[..., y : y + s, x : x + s], size=(size, size), mode="bilinear")
        )
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (torch.cat(out) - mean) / std


def run_quantus(model, x, a, target, n_steps):
    import quantus

    class PixelFlippingAnySize(quantus.PixelFlipping):
        # Quantus asserts H*W % features_in_step == 0 although features are C*H*W once the
        # (B, 1, H, W) map is broadcast; a step of 3*m features is m whole pixels.
        def custom_preprocess(self, x_batch, **kwargs):
            return None

    h, w = x.shape[-2:]
    metric = PixelFlippingAnySize(
        features_in_step=3 * (h * w // n_steps),
        perturb_baseline=0.0,
        normalise=False,
        abs=False,
        disable_warnings=True,
    )
    scores = metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=target.numpy(),
        a_batch=a.numpy(),
        channel_first=True,
        softmax=False,
        device="cpu",
        batch_size=len(x),
    )
    return torch.tensor(np.asarray(scores))


def bench(name, model, x, a, target, n_steps, batch, with_quantus, repeats=1):
    """Best of ``repeats`` interleaved runs (ours deletion, ours insertion, Quantus)."""
    f = model.eval()
    t_del = t_ins = t_q = float("inf")
    diff = float("nan")
    kw = dict(target=target, baselines="zeros", n_steps=n_steps, max_examples_per_batch=batch)
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, dele = deletion_curve(f, x, a, **kw)
        t_del = min(t_del, time.perf_counter() - t0)
        t0 = time.perf_counter()
        insertion_curve(f, x, a, **kw)
        t_ins = min(t_ins, time.perf_counter() - t0)
        if with_quantus:
            t0 = time.perf_counter()
            q = run_quantus(f, x, a, target, n_steps)
            t_q = min(t_q, time.perf_counter() - t0)
            diff = (q - dele[:, 1:].double()).abs().max().item()
    return {
        "model": name,
        "ours_del": t_del,
        "ours_ins": t_ins,
        "q": t_q if with_quantus else float("nan"),
        "diff": diff,
    }


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=32)
    p.add_argument("--n-steps", type=int, default=98, help="must divide 224*224 for Quantus")
    p.add_argument("--batch", type=int, default=64, help="max_examples_per_batch (ours)")
    p.add_argument("--quick", action="store_true", help="2 images, smoke run")
    p.add_argument(
        "--vit-images", type=int, default=None, help="images for ViT-B-16 (default --n-images)"
    )
    p.add_argument("--repeats", type=int, default=3, help="best-of repeats for the cheap model")
    p.add_argument("--skip-vit", action="store_true")
    p.add_argument("--skip-quantus", action="store_true")
    args = p.parse_args(argv)
    n = 2 if args.quick else args.n_images
    torch.set_num_threads(2)
    x = photos(n)
    # distinct values (a permutation): float32 torch.rand maps have ties, which Quantus breaks
    # by position and we by a seeded random order; the curves would then differ.
    gen = torch.Generator().manual_seed(2)
    a = torch.stack([torch.randperm(224 * 224, generator=gen) for _ in range(n)]).float()
    a = a.view(n, 1, 224, 224)
    target = torch.arange(n) % 10
    models = [("cheap (pool16+linear)", ZeroShot(Cheap(), 512), n)]
    if not args.skip_vit:
        import open_clip

        vit = open_clip.create_model("ViT-B-16", pretrained=None).eval()
        nv = n if args.vit_images is None or args.quick else args.vit_images
        models.append(("open_clip ViT-B-16 (random init)", ZeroShot(vit.visual, 512), nv))
    load_start = os.getloadavg()[0]
    rows = []
    for name, f, m in models:
        rows.append(
            bench(
                name, f, x[:m], a[:m], target[:m], args.n_steps, args.batch, not args.skip_quantus
            )
        )
        rows[-1]["n"] = m
    fw = args.n_steps + 1
    qver = "-" if args.skip_quantus else version("quantus")
    lines = [
        "# Deletion/insertion speed: captum_clip vs Quantus PixelFlipping",
        "",
        f"Command: `python benchmarks/metrics_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        f"Settings: 3x224x224 crops of skimage photos, random (B,1,H,W) attributions without ties, "
        f"{args.n_steps} steps of {224 * 224 // args.n_steps} pixels to the 0.0 baseline, logit of a fixed "
        f"target of a zero-shot head `100 * normalize(encode_image(x)) @ T.T` (10 random texts); "
        f"ours with max_examples_per_batch={args.batch}; Quantus {qver} "
        f"batch_size=all images. torch {torch.__version__}, 2 threads on a 2-core CPU **shared with other jobs** "
        "(timings are noisy). Forward passes per image: ours deletion "
        f"{fw}, insertion {fw}; Quantus deletion {args.n_steps} (it skips the unperturbed point); the "
        f"minimum for one curve is n_steps = {args.n_steps} (ratio ours/min = {fw / args.n_steps:.2f}).",
        "",
        "| model | images | ours deletion (s) | ours insertion (s) | Quantus PixelFlipping deletion (s) | speed-up (deletion) | max abs diff of curves |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['n']} | {r['ours_del']:.2f} | {r['ours_ins']:.2f} | {r['q']:.2f} | "
            f"{r['q'] / r['ours_del']:.1f}x | {r['diff']:.2e} |"
        )
    lines += [
        "",
        f"Times: best of {args.repeats} interleaved runs for the cheap model, one run for ViT-B-16. "
        f"Load average (1 min) at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f} on 2 cores.",
        "",
        "Notes: both implementations run (almost) the minimum number of forward passes, so with a",
        "real CLIP tower the forward dominates and the ratio is ~1x: a 10x speed-up over Quantus",
        "is not possible for the same curve. With the near-free model the cost is building the",
        "perturbed images; both sides must write every (image, step) image once, so this is",
        "memory-bound too (ours: one comparison of a precomputed pixel-rank map plus one masked",
        "copy per image on the inputs' device, batched over example x step; Quantus: one numpy",
        "copy of the batch per step, cumulative). What ours adds is insertion, patches, other",
        "baselines and scores, seeded tie-breaking, devices and bounded batches, not raw speed.",
        "Deletion and insertion together cost 2 x (n_steps + 1) forwards per image.",
        "Differences of ~1e-5 on logits of scale 100 come from float32 batch composition.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)
    return table


if __name__ == "__main__":
    main()
