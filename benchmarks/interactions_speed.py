"""Speed and peak memory of IntegratedInteractions vs the naive dense algorithm.

Model: random-initialised open_clip ``ViT-B-16`` (224 px, D = 512), a 12-word caption,
``n_steps`` Gauss-Legendre points, CPU. Methods (each in a fresh subprocess, so its peak
resident memory ``ru_maxrss`` is its own; the model itself is ~0.6 GB of it):

* ``ours``        -- ``IntegratedInteractions`` at the default layers (input of the last
  block in each tower; the fast pooled-row route).
* ``ours_layer0`` -- the same at the embeddings (``text_layer=0, image_layer=0``).
* ``naive``       -- the algorithm of the second-order paper's code (in
  ``benchmarks/_interactions_naive.py``): per tower and per
  embedding dimension ``k`` one backward pass over the ``n_steps`` interpolation points
  (2 x 512 passes) to build the integrated Jacobians ``(D, T, d)``, then the dense
  ``(S d_t) x ((1+P) d_v)`` product, one text token block at a time (the full dense
  matrix of the caption is 4.6 GB), contracted with the two hidden-state differences.

Both compute the same ``A`` (checked: max relative difference is printed).

Usage::

    python benchmarks/interactions_speed.py                 # all methods
    python benchmarks/interactions_speed.py --methods ours  # just ours
    python benchmarks/interactions_speed.py --timeout 1800  # cap per method (seconds)
    # the naive comparison in results/interactions_speed.md (layer 0 estimated):
    BENCH_THREADS=1 python benchmarks/interactions_speed.py --layer0-sample 2 --workdir DIR
    # by-layer table (seconds, forward-equivalent limit, peak memory), CPU or GPU:
    python benchmarks/interactions_speed.py --by-layer --device cuda --model ViT-B-16
    python benchmarks/interactions_speed.py --by-layer --device cuda --model ViT-L-14 --layers=6,6
    BENCH_THREADS=1 python benchmarks/interactions_speed.py --by-layer --device cpu \
        --model ViT-B-32 --n-steps 2 --forward-batch 16
    # --old-default adds a row per layer setting with the old 16 pairs per pass

Each mode replaces only its own section of ``results/interactions_speed.md`` (between
``<!-- ... -->`` markers), so the CPU and GPU tables live side by side. The by-layer
mode is described in ``benchmarks/_interactions_by_layer.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "interactions_speed.md"
CAPTION = "a photo of an astronaut in a white suit holding a flag proudly"  # 12 words
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _setup():
    import open_clip
    import skimage.data
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    tok = open_clip.get_tokenizer("ViT-B-16")
    img = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 255
    img = F.interpolate(img, size=(224, 224), mode="bilinear", align_corners=False)
    img = (img - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return model, tok, img


def _worker(method: str, n_steps: int, out: str) -> None:
    import _interactions_naive as reference

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    from captum_clip.attr import IntegratedInteractions

    model, tok, img = _setup()
    setup_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    t0 = time.perf_counter()
    estimate = None
    if method == "naive":
        dims = int(os.environ["NAIVE_DIMS"]) if os.environ.get("NAIVE_DIMS") else None
        a, estimate = reference.naive(model, tok, img, CAPTION, n_steps, dims)
        estimate = estimate if dims else None
    elif method == "ours_layer0" and os.environ.get("LAYER0_SAMPLE"):
        sample = int(os.environ["LAYER0_SAMPLE"])
        estimate = reference.layer0_sample(model, tok, img, CAPTION, n_steps, sample)
        a = torch.zeros(1)
    else:
        layer = 0 if method == "ours_layer0" else -1
        ii = IntegratedInteractions(model, tok)
        a = ii.attribute(img, [CAPTION], n_steps=n_steps, text_layer=layer, image_layer=layer)
    seconds = time.perf_counter() - t0
    torch.save(a, out + ".pt")
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    Path(out + ".json").write_text(
        json.dumps(
            {
                "seconds": seconds,
                "peak_gb": rss_gb,
                "setup_gb": setup_gb,
                "estimate": estimate,
                "load": os.getloadavg()[1],
            }
        )
    )


def by_layer(args) -> None:
    """The by-layer table: rows in subprocesses, one Markdown section per device and model."""
    import _interactions_by_layer as bl

    args.layers = args.layers.split()
    rows = bl.run_rows(args, __file__)
    label = bl.device_label(args.device)
    threads = os.environ.get("BENCH_THREADS", "1")
    text = "\n".join(
        [
            f"## By layer: {args.model} on {label}, N={args.n_steps}",
            "",
            f"Command: `BENCH_THREADS={threads} python benchmarks/interactions_speed.py "
            f"--by-layer --device {args.device} --model {args.model} --n-steps {args.n_steps} "
            f"--forward-batch {args.forward_batch} --layers='{' '.join(args.layers)}'"
            + (" --old-default" if args.old_default else "")
            + "`",
            "",
            f"Random-init open_clip {args.model}, caption {CAPTION!r}, batch 1, fp32, "
            f"torch {torch.__version__}; one warm-up call first; one timed call per row, each "
            "row in a fresh process. Limit: 2 x N x (active tokens) x (share of the tower "
            "after the layer) x (per-example forward time in a batch of "
            f"{args.forward_batch}), plus the plain forwards of input and reference every "
            "call makes, summed over both towers (a side at the default layer counts one "
            "block per step); see `benchmarks/_interactions_by_layer.py`.",
            "",
            *bl.table(rows),
        ]
    )
    print(text)
    key = f"by-layer {torch.device(args.device).type} {args.model} N={args.n_steps}"
    bl.write_section(RESULTS, key, text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--by-layer", action="store_true", help="the by-layer table (see above)")
    p.add_argument("--device", default="cpu", help="by-layer mode: cpu or cuda[:N]")
    p.add_argument("--model", default="ViT-B-16", help="by-layer mode: open_clip architecture")
    p.add_argument(
        "--layers",
        default="-1,-1 6,6 0,-1 -1,0 0,0",
        help="by-layer mode: space-separated text_layer,image_layer rows; write "
        "--layers='0,0 -1,0' (with '=': the values start with '-')",
    )
    p.add_argument(
        "--forward-batch",
        type=int,
        default=None,
        help="batch of the limit's forward (256 GPU, 16 CPU)",
    )
    p.add_argument("--old-default", action="store_true", help="also time 16 pairs per pass")
    p.add_argument("--internal-batch-size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--by-layer-worker", help=argparse.SUPPRESS)
    p.add_argument("--methods", default="ours,naive,ours_layer0")
    p.add_argument("--n-steps", type=int, default=10)
    p.add_argument(
        "--layer0-steps",
        type=int,
        default=None,
        help="n_steps for ours_layer0 (default: --n-steps)",
    )
    p.add_argument(
        "--naive-dims",
        type=int,
        default=None,
        help="run the naive backward passes for only this many of the D dimensions and "
        "extrapolate its time linearly (default: all, no extrapolation)",
    )
    p.add_argument(
        "--layer0-sample",
        type=int,
        default=None,
        help="estimate ours_layer0 from this many tangent passes of one step per tower "
        "(default: run it in full)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per method")
    p.add_argument(
        "--workdir", help="keep per-method results here; methods already measured are reused"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.forward_batch is None:
        args.forward_batch = 256 if args.device.startswith("cuda") else 16
    if args.by_layer_worker:
        import _interactions_by_layer as bl

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
        t, v = (int(s) for s in args.by_layer_worker.split(","))
        row = bl.worker(args.model, (t, v), args.n_steps, args.device, CAPTION,
                        args.internal_batch_size, args.forward_batch)  # fmt: skip
        print(json.dumps(row))
        return
    if args.by_layer:
        by_layer(args)
        return
    if args.device != "cpu":
        raise SystemExit(
            "the naive comparison runs on the CPU only; use --by-layer for --device cuda"
        )
    if args.worker:
        _worker(args.worker, args.n_steps, args.out)
        return
    tmp = args.workdir or tempfile.mkdtemp(prefix="interactions_speed_")
    os.makedirs(tmp, exist_ok=True)
    rows, results = [], {}
    start_load = os.getloadavg()
    for method in args.methods.split(","):
        out = os.path.join(tmp, method)
        steps = args.n_steps
        if method == "ours_layer0" and args.layer0_steps is not None:
            steps = args.layer0_steps
        cmd = [sys.executable, __file__, "--worker", method, "--n-steps", str(steps)]
        try:
            if not Path(out + ".json").is_file():
                env = dict(os.environ)
                if args.naive_dims:
                    env["NAIVE_DIMS"] = str(args.naive_dims)
                if args.layer0_sample:
                    env["LAYER0_SAMPLE"] = str(args.layer0_sample)
                subprocess.run(cmd + ["--out", out], check=True, timeout=args.timeout, env=env)
            info = json.loads(Path(out + ".json").read_text())
            setup = f"{info['setup_gb']:.2f}" if info.get("setup_gb") else "n/a"
            gb = f"{info['peak_gb']:.2f} (setup {setup})"
            load = f"{info['load']:.1f}" if info.get("load") else "n/a"
            secs, raw = f"{info['seconds']:.1f}", info["seconds"]
            if info.get("estimate"):
                raw = info["estimate"]
                secs = f"~{raw:.0f} (extrapolated; measured {info['seconds']:.0f} s for a part)"
            else:
                results[method] = torch.load(out + ".pt")
            rows.append((method, secs, gb, raw, steps, load))
        except subprocess.TimeoutExpired:
            rows.append((method, f"> {args.timeout:.0f} (timed out)", "n/a", None, steps, "n/a"))
        except subprocess.CalledProcessError as err:
            rows.append((method, f"failed (exit {err.returncode})", "n/a", None, steps, "n/a"))
        print(rows[-1][:3], flush=True)
    base = {r[0]: r[3] for r in rows}
    lines = [
        "| method | layers | n_steps | time (s) | peak RSS, GB (before the method) "
        "| speed-up vs naive | 5-min load avg at end |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, secs, gb, raw, steps, load in rows:
        layers = "embeddings (0, 0)" if method == "ours_layer0" else "last-block input (-1, -1)"
        speed = "-"
        if raw and base.get("naive") and method == "ours" and steps == args.n_steps:
            speed = f"{base['naive'] / raw:.1f}x"
        lines.append(f"| {method} | {layers} | {steps} | {secs} | {gb} | {speed} | {load} |")
    if "ours" in results and "naive" in results:
        a, b = results["ours"], results["naive"]
        rel = ((a - b).abs().max() / b.abs().max()).item()
        lines.append("")
        lines.append(f"Max |A_ours - A_naive| / max |A_naive| = {rel:.2e}.")
    threads = os.environ.get("BENCH_THREADS", "1")
    if args.workdir:
        lines.append("")
        lines.append(
            f"Rows were measured in separate runs and collected from `--workdir` (a method "
            "already measured there is not rerun); thread count via `BENCH_THREADS` "
            f"(here {os.environ.get('BENCH_THREADS', '1')})."
        )
    if args.layer0_sample:
        lines.append("")
        lines.append(
            f"The ours_layer0 row timed {args.layer0_sample} tangent passes (one step, the "
            "forward route that `route='auto'` picks at layer 0) per tower plus the hidden "
            "states, and scales the per-tangent time to all active tokens (15 text, 197 image) "
            "and n_steps steps: every tangent pass is one full-tower JVP of the same cost."
        )
    if args.naive_dims:
        lines.append("")
        lines.append(
            f"The naive row ran the per-dimension backward passes for {args.naive_dims} of "
            "the 512 embedding dimensions per tower (all other work, memory and the dense "
            "product in full) and scales the time of those loops by 512 / "
            f"{args.naive_dims}; each pass costs the same, so the estimate is linear."
        )
    text = "\n".join(
        [
            "# IntegratedInteractions speed (ViT-B-16, CPU)",
            "",
            f"Command: `BENCH_THREADS={os.environ.get('BENCH_THREADS', '1')} python "
            f"benchmarks/interactions_speed.py --methods {args.methods} "
            f"--n-steps {args.n_steps} --timeout {args.timeout:.0f}"
            + (f" --naive-dims {args.naive_dims}" if args.naive_dims else "")
            + (f" --layer0-steps {args.layer0_steps}" if args.layer0_steps else "")
            + (f" --layer0-sample {args.layer0_sample}" if args.layer0_sample else "")
            + "`",
            "",
            f"Settings: open_clip ViT-B-16 random init (224 px, D=512, 197 image tokens), "
            f"caption {CAPTION!r} (12 words), n_steps={args.n_steps} Gauss-Legendre, "
            f"cosine similarity, batch 1, torch {torch.__version__}, {threads} thread(s) "
            f"per method. The machine has 2 CPU cores shared with other jobs "
            f"(load average at start: {start_load[0]:.1f}); timings are wall clock and noisy. "
            "Peak RSS is `ru_maxrss` of a fresh subprocess per method; it includes Python, "
            "torch, open_clip and the model, which take the 'setup' amount before the method "
            "starts.",
            "",
            *lines,
            "",
        ]
    )
    print(text)
    import _interactions_by_layer as bl

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    bl.write_section(
        RESULTS,
        "naive comparison",
        text.replace(
            "# IntegratedInteractions speed (ViT-B-16, CPU)",
            "## Against the naive algorithm (ViT-B-16, CPU)",
        ),
    )


if __name__ == "__main__":
    main()
