"""By-layer speed and peak memory of IntegratedInteractions (``interactions_speed.py --by-layer``).

Every row runs in a fresh subprocess (so its peak memory is its own): load a random-init
open_clip model on ``--device``, warm up (one call at the default layers, one forward),
measure the *forward-equivalent limit*, then time one ``explain`` call at the row's
``(text_layer, image_layer)``.

Forward-equivalent limit of a row: a side attributed at hidden index ``L`` of a tower with
``n`` blocks runs ``K`` tangents (its active tokens) at each of ``N`` steps through the
last ``n - L`` blocks; a JVP costs about two forwards, so its limit is
``2 * N * K * (n - L) / n * t``, with ``t`` the per-example time of the tower's forward in
one large batch (measured in the same process). At the default layer (``L = n - 1``) the
fast route evaluates all tangents of a step at about the cost of one block, so that
side's limit is taken as ``2 * N * t / n``. Every call also runs each tower on the input
and the reference up to the layer and then from the layer to the embedding: ``2 t (1 + (n -
L) / n)`` per tower. The row's limit is the sum over both towers.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _setup(name: str, device: torch.device, caption: str):
    import open_clip
    import skimage.data
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval().to(device)
    tok = open_clip.get_tokenizer(name)
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    img = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 255
    img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
    img = (img - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return model, tok, img.to(device), [caption]


def worker(name: str, layers: tuple[int, int], n_steps: int, device_name: str, caption: str,
           chunk: int | None, batch: int) -> dict:  # fmt: skip
    """One row: returns the measurements as a dict."""
    from captum_clip.attr import IntegratedInteractions
    from captum_clip.attr import _interaction_paths as paths
    from captum_clip.attr._interaction_sides import layer_to_index
    from captum_clip.models import ClipAdapter

    device = torch.device(device_name)
    model, tok, img, texts = _setup(name, device, caption)
    ii = IntegratedInteractions(model, tok)
    ii.explain(img, texts, n_steps=2)  # warm-up: kernels, allocator, lazy imports
    ad = ClipAdapter(model)
    ids = ii.text_encoder.prepare(texts)
    with torch.no_grad():
        imgs = img.expand(batch, -1, -1, -1).contiguous()
        t_img = _timed(lambda: model.encode_image(imgs), device) / batch
        many = ids.expand(batch, -1).contiguous()
        t_txt = _timed(lambda: model.encode_text(many), device) / batch
    limit, tokens = 0.0, {}
    for side, layer, t, enc in (
        ("text", layers[0], t_txt, ii.text_encoder),
        ("image", layers[1], t_img, ii.image_encoder),
    ):
        inputs = ids if side == "text" else img
        index = layer_to_index(layer, enc.n_blocks, side)
        k = int(enc.active(inputs, index)[0].sum())
        tokens[side] = k
        n = enc.n_blocks
        fraction = (n - index) / n
        # hidden states of input and reference, their embeddings, then the tangents
        limit += 2 * t + 2 * fraction * t
        limit += 2 * n_steps * t * (1 / n if index == n - 1 else k * fraction)
    general = []  # pairs per pass of the sides below the last block (the fast route has its own)
    for side, layer, tower, inputs in (
        ("text", layers[0], ad.text, ids),
        ("image", layers[1], ad.vision, img),
    ):
        index = layer_to_index(layer, tower.n_blocks, side)
        if index != tower.n_blocks - 1:
            with torch.no_grad():
                hidden = tower.hidden_state(inputs, index)[0]
            general.append(f"{side} {paths.auto_chunk(hidden) if chunk is None else chunk}")
    auto = ", ".join(general) or "fast route"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    _sync(device)
    t0 = time.perf_counter()
    res = ii.explain(img, texts, n_steps=n_steps, text_layer=layers[0], image_layer=layers[1],
                     internal_batch_size=chunk)  # fmt: skip
    _sync(device)
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 1024**3
        peak_text = f"{peak:.2f} GB (CUDA, above the model)"
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        peak_text = f"{rss:.2f} GB (peak RSS, process)"
    return {
        "layers": list(layers), "seconds": seconds, "limit": limit, "t_img": t_img,
        "t_txt": t_txt, "tokens": tokens, "chunk": auto, "peak": peak_text,
        "delta": float(res.delta.abs().max()),
    }  # fmt: skip


def device_label(device_name: str) -> str:
    device = torch.device(device_name)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    threads = os.environ.get("BENCH_THREADS", str(torch.get_num_threads()))
    return f"CPU {platform.machine()}, {threads} thread(s)"


def run_rows(args, script: str) -> list[dict]:
    """Run every ``--layers`` row (and the old-default rows) in subprocesses."""
    rows = []
    chunks = [None] + ([16] if args.old_default else [])
    for spec in args.layers:
        t, v = (int(s) for s in spec.split(","))
        for chunk in chunks:
            cmd = [sys.executable, script, f"--by-layer-worker={t},{v}", "--model", args.model,
                   "--n-steps", str(args.n_steps), "--device", args.device,
                   "--forward-batch", str(args.forward_batch)]  # fmt: skip
            if chunk is not None:
                cmd += ["--internal-batch-size", str(chunk)]
            try:
                out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                     timeout=args.timeout)  # fmt: skip
                row = json.loads(out.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                row = {"layers": [t, v], "error": f"> {args.timeout:.0f} s (timed out)"}
            except subprocess.CalledProcessError as err:
                tail = (err.stderr or "").strip().splitlines()[-1:]
                row = {"layers": [t, v], "error": f"failed: {' '.join(tail)[:120]}"}
            row["old_default"] = chunk is not None
            rows.append(row)
            print(row, flush=True)
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| text_layer, image_layer | pairs per pass | seconds | forward-equivalent "
        "limit (s) | ratio | peak memory | max abs delta |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        t, v = r["layers"]
        name = f"{t}, {v}" + (" (old default: 16 pairs per pass)" if r.get("old_default") else "")
        if "error" in r:
            lines.append(f"| {name} | | {r['error']} | | | | |")
            continue
        lines.append(
            f"| {name} | {r['chunk']} | {r['seconds']:.2f} | {r['limit']:.2f} | "
            f"{r['seconds'] / r['limit']:.2f}x | {r['peak']} | {r['delta']:.1e} |"
        )
    return lines


def write_section(path: Path, key: str, text: str) -> None:
    """Replace (or append) the section between ``<!-- key -->`` markers in ``path``."""
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    old = path.read_text() if path.is_file() else ""
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) + 1 :]
    else:
        new = old.rstrip() + "\n\n" + block if old else block
    path.write_text(new)
