"""Peak host memory and time of AttnLRP (with ``internal_batch_size``) against the forward and CCI.

A random-initialised open_clip ViT-B-16 in float32 on the CPU, a zero-shot
``ClipClassifier`` over 5 classes, B photos from scikit-image (8 photos; larger batches add
their flipped copies), targets fixed in advance (``i % 5``: no forward before the baseline).
Every configuration runs in a fresh subprocess, once:

* the baseline is the resident set size (``VmRSS``) after the model, the classifier and the
  images are built; the kernel's peak RSS (``VmHWM``) is then reset (``/proc/self/clear_refs``)
  so that a transient of the model load cannot hide the peak of the measured call;
* the peak is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the call; the table
  shows peak - baseline, in GB (1e9 bytes), and the peak itself;
* seconds are the wall clock of the call (one run: the interleaved timing below is the
  one to compare sizes with).

Then, in one more process, ``AttnLRP(clf, attention="cp")`` runs every ``--ibs`` in a
rotating order for ``--time-rounds`` rounds (median seconds): the cost of chunking in time,
measured so that load changes of the shared machine hit every size alike.

Rows: the plain forward of the B images (``torch.no_grad``), ``AttnLRP(clf,
attention=...).attribute(x, target, internal_batch_size=...)`` for ``attention`` in
``attnlrp`` / ``cp`` and each ``--ibs`` (``none`` = all images at once), and ``CCI(clf)``
with its defaults.

Usage::

    python benchmarks/lrp_memory.py                 # B=32, ibs none,16,8,4, 1 thread
                                                    #   -> results/lrp_memory.md
    python benchmarks/lrp_memory.py --n 8 --ibs none,4 --out /tmp/lrp_memory.md   # quick look
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CLASSES = ["cat", "person", "cup", "rocket", "grass"]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _run_worker(cfg: dict, env: dict, what: str) -> dict:
    """One configuration in a fresh subprocess; its JSON result (last line of stdout)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker(config: dict) -> dict:
    """Run one configuration in this process; peak RSS above the post-load baseline."""
    import open_clip
    import torch
    from _photos import photo_batch  # benchmarks/ is on sys.path (run as a script)

    from captum_clip.attr.attnlrp import AttnLRP
    from captum_clip.attr.cci import CCI
    from captum_clip.models import ClipClassifier

    try:  # on a shared machine the out-of-memory killer should pick this run, not a neighbour
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(config["model"], pretrained=None)
    clf = ClipClassifier(model.eval(), open_clip.get_tokenizer(config["model"]), CLASSES)
    n = config["n"]
    x = photo_batch(preprocess, n).contiguous()
    target = torch.arange(n) % len(CLASSES)
    kind, ibs = config["kind"], config["ibs"]
    if kind == "forward":

        def call():
            with torch.no_grad():
                clf(x)
    elif kind == "timing":  # every ibs in rotating order, seconds per round
        lrp = AttnLRP(clf, attention=config["attention"])
        sizes, seconds = config["sizes"], {str(v): [] for v in config["sizes"]}
        lrp.attribute(x[:2], target=target[:2])  # warm-up
        for r in range(config["rounds"]):
            for ibs in sizes[r % len(sizes) :] + sizes[: r % len(sizes)]:
                t0 = time.perf_counter()
                lrp.attribute(x, target=target, internal_batch_size=ibs)
                seconds[str(ibs)].append(time.perf_counter() - t0)
        return {**config, "seconds": seconds}
    elif kind == "cci":
        cci = CCI(clf)

        def call():
            cci.attribute(x, target=target)
    else:
        lrp = AttnLRP(clf, attention=kind)

        def call():
            lrp.attribute(x, target=target, internal_batch_size=ibs)

    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak()
    baseline = _status_kb("VmRSS")
    t0 = time.perf_counter()
    call()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        **config,
        "seconds": seconds,
        "baseline_kb": baseline,
        "load_peak_kb": load_peak,
        "peak_kb": peak,
        "hwm_kb": _status_kb("VmHWM"),
        "reset": reset,
    }


def _label(cfg: dict) -> str:
    if cfg["kind"] == "forward":
        return f"forward, {cfg['n']} images (no grad)"
    if cfg["kind"] == "cci":
        return "CCI() (defaults)"
    ibs = "None" if cfg["ibs"] is None else cfg["ibs"]
    return f"AttnLRP attention={cfg['kind']!r}, internal_batch_size={ibs}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--n", type=int, default=32, help="number of images")
    parser.add_argument(
        "--ibs",
        type=lambda s: [None if v == "none" else int(v) for v in s.split(",") if v],
        default=[None, 16, 8, 4],
        help="comma-separated internal_batch_size values of AttnLRP ('none': all at once)",
    )
    parser.add_argument("--attention", default="attnlrp,cp", help="comma-separated rules")
    parser.add_argument("--no-cci", action="store_true", help="skip the CCI row")
    parser.add_argument(
        "--time-rounds",
        type=int,
        default=2,
        help="rounds of the interleaved timing (attention='cp', every --ibs; 0: none)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine 2 threads wait on each "
        "other at every operation, and more, smaller chunks then look slower than they are)",
    )
    parser.add_argument("--out", type=Path, default=None, help="markdown file for the table")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return ""
    argv = argv if argv is not None else sys.argv[1:]
    common = {"model": args.model, "n": args.n, "threads": args.threads, "ibs": None}
    configs = [{**common, "kind": "forward"}]
    configs += [
        {**common, "kind": rule, "ibs": ibs}
        for rule in args.attention.split(",")
        for ibs in args.ibs
    ]
    if not args.no_cci:
        configs.append({**common, "kind": "cci"})
    out = args.out or RESULTS / "lrp_memory.md"
    load0 = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    results = []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for cfg in configs:
        print(f"[lrp_memory] {_label(cfg)} ...", file=sys.stderr, flush=True)
        results.append(_run_worker(cfg, env, _label(cfg)))
    timing = None
    if args.time_rounds > 0:
        cfg = {**common, "kind": "timing", "attention": "cp", "sizes": args.ibs}
        cfg["rounds"] = args.time_rounds
        print("[lrp_memory] interleaved timing ...", file=sys.stderr, flush=True)
        timing = _run_worker(cfg, env, "the timing")
    import torch  # for the version line only

    from captum_clip.attr.attnlrp import AttnLRP

    default = inspect.signature(AttnLRP.attribute).parameters["internal_batch_size"].default

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    fwd = results[0]
    gb = 1024 / 1e9  # kB -> GB
    rows = []
    for r in results:
        extra = (r["peak_kb"] - r["baseline_kb"]) * gb
        mark = " (the default)" if r["kind"] in ("attnlrp", "cp") and r["ibs"] == default else ""
        rows.append(
            f"| {_label(r)}{mark} | {extra:.2f} | {r['peak_kb'] * gb:.2f} | "
            f"{extra / ((fwd['peak_kb'] - fwd['baseline_kb']) * gb):.1f} | {r['seconds']:.1f} |"
        )
    cmd = " ".join(["python benchmarks/lrp_memory.py", *argv])
    reset = all(r["reset"] for r in results)
    lines = [
        "# AttnLRP host memory (CPU)",
        "",
        f"Command: `{cmd}`",
        "",
        f"Device: CPU, {args.threads} threads on a {os.cpu_count()}-core machine shared with "
        f"other jobs (load average at the start: {load0}, at the end: {load}; "
        f"torch {torch.__version__}).",
        "",
        f"Settings: random-initialised open_clip {args.model}, float32, native image size; "
        f"zero-shot ClipClassifier (5 classes), {args.n} images, target = image index mod 5. "
        "Each row is one run in a fresh subprocess; peak = ru_maxrss after the call minus the "
        "RSS after the model load"
        + (" (kernel peak reset after the load)" if reset else " (peak reset not available)")
        + f". Baseline RSS after the load: {fwd['baseline_kb'] * gb:.2f} GB.",
        "",
        "| configuration | peak above baseline (GB) | peak RSS (GB) | / forward | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    if timing is not None:
        sec = {k: statistics.median(v) for k, v in timing["seconds"].items()}
        ref = sec[str(args.ibs[0])]
        lines += [
            "",
            f"## Time of AttnLRP cp by internal_batch_size, interleaved ({args.n} images)",
            "",
            f"One process, every internal_batch_size in a rotating order for {args.time_rounds} "
            "rounds after a warm-up (load changes of the shared machine hit all alike); "
            "median seconds of the call.",
            "",
            "| internal_batch_size | seconds (median) | runs | / first row |",
            "| --- | ---: | --- | ---: |",
        ]
        for ibs in args.ibs:
            runs = ", ".join(f"{v:.1f}" for v in timing["seconds"][str(ibs)])
            lines.append(
                f"| {'None' if ibs is None else ibs}{' (the default)' if ibs == default else ''}"
                f" | {sec[str(ibs)]:.1f} | {runs} | {sec[str(ibs)] / ref:.2f} |"
            )
    table = "\n".join(lines) + "\n"
    print(table, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"wrote {out}")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
