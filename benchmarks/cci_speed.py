"""Speed of CCI against its forward limit and Captum's FeatureAblation / Occlusion / IG.

Random-initialised open_clip ViTs in float32 at their native size, a zero-shot
``ClipClassifier`` over 5 classes (target = predicted class), K=7, photos from scikit-image
(8 photos; larger batches add their flipped copies). Everything below comes from one run
on one device (``--device cpu|cuda``); each row is wall clock with the device synchronised:

* ``forward, B(K+1) images``: one plain batched forward of B x (K+1) images -- the limit of
  CCI, which needs K+1 passes per image (one unmasked, K with a cluster hidden).
* ``CCI``: ``CCI(clf, n_clusters=K, estimator="occlusion").attribute(x, target)`` (the
  paper's leave-one-out, attention mode, the default batched torch k-means); below it, measured separately, its parts: the unmasked pass of B
  images, the k-means of all images (share of CCI in brackets) and the masked forward of
  B x K rows (all images and clusters in one batch); on a GPU also, in brackets, the plain
  forward of the same B x K rows without a mask, with PyTorch's MultiheadAttention fast path
  on (as in the plain forward) and off (as under a float attention mask).
* ``CCI, pixel mode`` and ``CCI, scikit-learn KMeans`` (``clusterer=KMeans(n_init=4)``,
  one fit per image on the CPU: the clusterer before the batched one).
* Captum ``FeatureAblation`` on CCI's own clusters (the cluster map as ``feature_mask``,
  pixels replaced by 0, ``perturbations_per_eval=K``: the same rows per forward as CCI);
  ``Occlusion`` with patch-sized windows at patch stride (one window per patch,
  ``perturbations_per_eval=K+1``); ``IntegratedGradients`` (50 steps, zero baseline,
  ``internal_batch_size=B(K+1)/2``).

forward, CCI and CCI's parts are the median of ``--repeats`` interleaved runs (load changes
hit both alike); FeatureAblation and the extra CCI rows the median of ``--repeats-captum``
runs (default: 1 on the CPU, 3 on a GPU); Occlusion and IntegratedGradients one run (on a
GPU after a warm-up on 2 images).

Usage::

    python benchmarks/cci_speed.py --device cpu     # ViT-B-16, B=8 -> results/cci_speed.md
    python benchmarks/cci_speed.py --device cuda    # ViT-B-16 B=32, ViT-L-14 B=16
                                                    #   -> results/cci_speed_cuda.md
    python benchmarks/cci_speed.py --device cpu --skip occlusion,ig   # quick look
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from _photos import photo_batch  # benchmarks/ is on sys.path (run as a script)
from captum.attr import FeatureAblation, IntegratedGradients, Occlusion

from captum_clip.attr._kmeans import batched_kmeans
from captum_clip.attr.cci import CCI
from captum_clip.models import ClipClassifier

RESULTS = Path(__file__).parent / "results"
DEFAULTS = {"cpu": ("ViT-B-16:8",), "cuda": ("ViT-B-16:32", "ViT-L-14:16")}
OPTIONAL = ("fa", "occlusion", "ig", "pixel", "sklearn")


class Timer:
    """Wall clock around device-synchronised calls."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def median(self, fn, n: int) -> float:
        return statistics.median(self(fn) for _ in range(n))


def _tokenizer(name: str):
    """open_clip's tokenizer, or for the SigLIP family (a hub download, not possible offline)
    a word -> id tokenizer over the context length: the texts only set the class rows."""
    from captum_clip.models import registry

    if not registry.hub_tokenizer(name):
        return open_clip.get_tokenizer(name)
    text_cfg = registry.model_config(name)["text_cfg"]
    ctx, vocab = int(text_cfg["context_length"]), int(text_cfg["vocab_size"])

    def tokenize(texts):
        ids = torch.ones(len(texts), ctx, dtype=torch.long)  # pad id 1
        for i, t in enumerate(texts):
            words = t.split()[: ctx - 1]
            ids[i, : len(words)] = torch.tensor([2 + sum(map(ord, w)) % (vocab - 3) for w in words])
            ids[i, len(words)] = vocab - 1  # end of text
        return ids

    return tokenize


def bench_model(spec: str, device: torch.device, args, timer: Timer) -> tuple[list, dict]:
    """Rows ``(name, seconds)`` and settings of one ``MODEL:BATCH`` spec."""
    name, b = spec.split(":")
    b, k = int(b), args.k
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    model = model.to(device).eval()
    clf = ClipClassifier(model, _tokenizer(name), ["cat", "person", "cup", "rocket", "grass"])
    x = photo_batch(preprocess, b).to(device)
    with torch.no_grad():
        target = clf(x).argmax(1)
    x_all = x.repeat(k + 1, 1, 1, 1)
    vision = clf.vision
    patch = vision.image_size[0] // vision.grid_size[0]
    cci = CCI(clf, n_clusters=k, random_state=0, estimator="occlusion")

    def forward():
        with torch.no_grad():
            clf(x_all)

    def run_cci():
        return cci.attribute(x, target=target, return_clusters=True)

    forward()  # warm-up: kernels, handles, allocator
    _, res = run_cci()
    labels = res.labels.reshape(b, -1)
    with torch.no_grad():
        feats = vision.patch_features(x, -1).reshape(b, labels.shape[1], -1)
    ids = torch.arange(k, device=device)
    hidden = (labels[:, None, :] == ids[:, None]).reshape(b * k, -1)
    x_masked = x.repeat_interleave(k, 0)

    def base_pass():
        with torch.no_grad():
            clf(x)

    def kmeans():
        batched_kmeans(feats, k, seed=0)

    def masked():
        with torch.no_grad(), vision.hide_patches(hidden):
            clf(x_masked)

    parts = {"fwd": [], "cci": [], "base": [], "km": [], "masked": []}
    for _ in range(args.repeats):
        for key, fn in (
            ("fwd", forward),
            ("cci", run_cci),
            ("base", base_pass),
            ("km", kmeans),
            ("masked", masked),
        ):
            parts[key].append(timer(fn))
    t = {key: statistics.median(v) for key, v in parts.items()}
    n_found = int(torch.isfinite(res.scores).sum())
    rows = [
        (f"forward, {b * (k + 1)} images ({b} x {k + 1})", t["fwd"]),
        (f"**CCI**, K={k}, attention mode", t["cci"]),
        (f"&nbsp;&nbsp;unmasked pass, {b} images", t["base"]),
        (f"&nbsp;&nbsp;batched k-means ({100 * t['km'] / t['cci']:.1f} % of CCI)", t["km"]),
        (f"&nbsp;&nbsp;masked forward, {b * k} rows", t["masked"]),
    ]
    if args.diagnose if args.diagnose is not None else device.type == "cuda":
        # where a masking overhead comes from: a float attention mask turns off PyTorch's
        # fused MultiheadAttention fast path, which the plain forward uses
        def plain():
            with torch.no_grad():
                clf(x_masked)

        def plain_slow():
            with torch.no_grad():
                torch.backends.mha.set_fastpath_enabled(False)
                try:
                    clf(x_masked)
                finally:
                    torch.backends.mha.set_fastpath_enabled(True)

        diag = {"plain": [], "slow": []}
        for _ in range(args.repeats):
            diag["plain"].append(timer(plain))
            diag["slow"].append(timer(plain_slow))
        rows += [
            (
                f"&nbsp;&nbsp;(plain forward, {b * k} rows, no mask)",
                statistics.median(diag["plain"]),
            ),
            (
                f"&nbsp;&nbsp;(plain forward, {b * k} rows, MHA fast path off)",
                statistics.median(diag["slow"]),
            ),
        ]
    reps = args.repeats_captum or (1 if device.type == "cpu" else 3)
    skip = set(args.skip)
    if "pixel" not in skip:
        pix = CCI(clf, n_clusters=k, mask_mode="pixel", estimator="occlusion")
        rows.append(("CCI, pixel mode", timer.median(lambda: pix.attribute(x, target), reps)))
    if "sklearn" not in skip:
        from sklearn.cluster import KMeans

        skl = CCI(
            clf, n_clusters=k, estimator="occlusion", clusterer=KMeans(k, n_init=4, random_state=0)
        )
        t_skl = timer.median(lambda: skl.attribute(x, target), reps)
        rows.append(("CCI, scikit-learn KMeans(n_init=4) per image", t_skl))
    fmask = F.interpolate(res.labels[:, None].float(), size=x.shape[-2:], mode="nearest").long()
    if "fa" not in skip:

        def fa():
            with torch.no_grad():
                FeatureAblation(clf).attribute(
                    x, target=target, feature_mask=fmask, perturbations_per_eval=k
                )

        fa()  # Captum's own warm-up
        rows.append(("Captum FeatureAblation, CCI's clusters", timer.median(fa, reps)))
    # Occlusion and IG take long: one timed run each (after a 2-image warm-up on a GPU)
    warm = device.type == "cuda"
    if "occlusion" not in skip:

        def occ(imgs=x, tgt=target):
            with torch.no_grad():
                Occlusion(clf).attribute(
                    imgs,
                    sliding_window_shapes=(3, patch, patch),
                    strides=(3, patch, patch),
                    target=tgt,
                    perturbations_per_eval=k + 1,
                )

        if warm:
            occ(x[:2], target[:2])
        rows.append((f"Captum Occlusion {patch}x{patch} / stride {patch} (1 run)", timer(occ)))
    if "ig" not in skip:
        ibs = max(1, b * (k + 1) // 2)

        def ig(imgs=x, tgt=target):
            IntegratedGradients(clf).attribute(
                imgs, target=tgt, n_steps=50, internal_batch_size=ibs
            )

        if warm:
            ig(x[:2], target[:2])
        rows.append((f"Captum IntegratedGradients, 50 steps, ibs {ibs} (1 run)", timer(ig)))
    info = {"model": name, "batch": b, "clusters": n_found, "reps": reps}
    if device.type == "cuda":
        info["peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return rows, info


def _device_line(device: torch.device, threads: int, load0: str = "") -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"CPU, {threads} threads on a {os.cpu_count()}-core machine shared with other jobs "
        f"(load average at the start: {load0}, at the end: {load}; torch {torch.__version__})"
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", nargs="*", help="MODEL:BATCH (default per device)")
    parser.add_argument("--k", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=None, help="default 3 CPU, 10 GPU")
    parser.add_argument("--repeats-captum", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--skip",
        type=lambda s: [v for v in s.split(",") if v],
        default=[],
        help=f"comma-separated rows to skip: {','.join(OPTIONAL)}",
    )
    parser.add_argument(
        "--diagnose",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time the plain forward of the masked rows (default: on a GPU only)",
    )
    parser.add_argument("--out", type=Path, default=None, help="markdown file for the table")
    args = parser.parse_args(argv)
    if bad := set(args.skip) - set(OPTIONAL):
        parser.error(f"--skip takes {OPTIONAL}, got {sorted(bad)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (3 if device.type == "cpu" else 10)
    out = args.out or RESULTS / ("cci_speed.md" if device.type == "cpu" else "cci_speed_cuda.md")
    timer = Timer(device)
    load0 = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    cmd = " ".join(
        ["python benchmarks/cci_speed.py", *(argv if argv is not None else sys.argv[1:])]
    )
    tf32 = " (TF32 off)" if not torch.backends.cuda.matmul.allow_tf32 else " (TF32 on)"
    lines = [
        f"# CCI speed ({'GPU' if device.type == 'cuda' else 'CPU'})",
        "",
        f"Command: `{cmd}`",
        "",
        f"Device: {_device_line(device, args.threads, load0)}.",
        "",
        "Settings: random-initialised open_clip models, float32"
        + (tf32 if device.type == "cuda" else "")
        + ", native image size; zero-shot ClipClassifier (5 classes), target = predicted "
        f"class; K={args.k}. forward, CCI and CCI's parts: median of {args.repeats} "
        "interleaved runs; other rows: see each table. Ratios are to the forward of B(K+1) "
        "images, measured in the same run.",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    for spec in args.models or DEFAULTS[args.device]:
        print(f"[cci_speed] {spec} on {device} ...", file=sys.stderr, flush=True)
        rows, info = bench_model(spec, device, args, timer)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        fwd = rows[0][1]
        section = [
            "",
            f"## {info['model']}, B={info['batch']}",
            "",
            f"{info['clusters']} non-empty clusters over the batch; FeatureAblation and extra "
            f"CCI rows: median of {info['reps']} run(s)"
            + (f"; peak GPU memory {info['peak_gb']:.1f} GB" if "peak_gb" in info else "")
            + ".",
            "",
            "| method | seconds | / forward |",
            "| --- | ---: | ---: |",
        ]
        section += [f"| {name} | {sec:.3f} | {sec / fwd:.2f} |" for name, sec in rows]
        print("\n".join(section), flush=True)
        lines += section
        out.write_text("\n".join(lines) + "\n")  # written after every model
    lines[4] = f"Device: {_device_line(device, args.threads, load0)}."
    table = "\n".join(lines) + "\n"
    out.write_text(table)
    print(f"\nwrote {out}")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
