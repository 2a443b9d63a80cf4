"""Retrieval harness: recall against a brute force, the 0 % point, resume, identity, CLI."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from captum_clip.benchmark.methods import MethodSettings, build_method
from captum_clip.benchmark.retrieval import (
    CaptionSetSimilarity,
    RetrievalSettings,
    evaluate_retrieval,
)
from captum_clip.cli import main as cli_main
from captum_clip.datasets import load_captions
from captum_clip.storage import state_dict_digest
from captum_clip.testbed import load_testbed
from captum_clip.testbed.captions import write_caption_gallery

SETTINGS = RetrievalSettings(
    protocol="none", n_steps=4, deletion_baseline="zeros", insertion_baseline="zeros",
    ks=(1, 3),
)  # fmt: skip
METHODS = ["Saliency", "InputXGradient"]  # pixel maps: no ties, so the order is the argsort


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    images, captions = write_caption_gallery(root, 10, seed=3, captions_per_image=2)
    return load_captions(captions, images)


def _brute_recall(img, txt, t2i, k, direction, tol=1e-6):
    """Recall@k by loops: expected hit of a uniformly random order among tied items.

    Cosines within ``tol`` are ties (identical images differ by ~1e-7 with their batch
    position; the harness documents the same tolerance).
    """
    sim = (txt / txt.norm(dim=1, keepdim=True)) @ (img / img.norm(dim=1, keepdim=True)).T
    hits = []
    if direction == "image":
        for t in range(sim.shape[0]):
            row = sim[t].tolist()
            pos = row[t2i[t]]
            g, e = sum(v > pos + tol for v in row), sum(abs(v - pos) <= tol for v in row)
            hits.append(sum(p < k for p in range(g, g + e)) / e)
    else:
        for i in range(sim.shape[1]):
            col = sim[:, i].tolist()
            own = [t for t in range(len(col)) if t2i[t] == i]
            best = max(col[t] for t in own)
            g, e = sum(v > best + tol for v in col), sum(abs(v - best) <= tol for v in col)
            m = sum(abs(col[t] - best) <= tol for t in own)
            r = min(max(k - g, 0), e)
            hits.append(1 - math.comb(e - m, r) / math.comb(e, r))
    return sum(hits) / len(hits)


def test_recall_equals_brute_force_and_starts_at_clean(gallery, tmp_path):
    res = evaluate_retrieval("testbed", gallery, tmp_path / "out", methods=METHODS,
                             settings=SETTINGS, batch_size=4, show_progress=False)  # fmt: skip
    model, preprocess, tok = load_testbed("default")
    sim = CaptionSetSimilarity(model, tok, gallery)
    x = gallery.load_images(range(len(gallery)), preprocess)
    t2i = gallery.text_to_image.tolist()
    with torch.no_grad():
        caps = model.encode_text(tok(gallery.captions)).double()
        clean = model.encode_image(x).double()
    for (d, k), r in res.clean.set_index(["direction", "k"])["recall"].items():
        assert r == pytest.approx(_brute_recall(clean, caps, t2i, k, d), abs=1e-6)
    n_pix = 64 * 64
    for name in METHODS:
        fn = build_method(name, sim, MethodSettings())
        maps = torch.cat([fn(x[s : s + 4], torch.arange(s, min(s + 4, 10))) for s in (0, 4, 8)])
        order = maps.detach().sum(1).flatten(1).argsort(dim=1, descending=True)
        for mode in ("deletion", "insertion"):
            for step in range(5):
                sel = torch.zeros(10, n_pix, dtype=torch.bool)
                sel.scatter_(1, order[:, : math.floor(step * n_pix / 4 + 0.5)], True)
                sel = sel.view(10, 1, 64, 64)
                pert = torch.where(sel, 0.0, x) if mode == "deletion" else torch.where(sel, x, 0.0)
                with torch.no_grad():
                    emb = model.encode_image(pert).double()
                for d in ("image", "text"):
                    for k in (1, 3):
                        got = res.curves.query(
                            "method == @name and mode == @mode and direction == @d and k == @k "
                            "and step == @step"
                        )["recall"].item()
                        assert got == pytest.approx(_brute_recall(emb, caps, t2i, k, d), abs=1e-6)
    # the curve at 0 % removed is the unperturbed gallery's recall
    start = res.summary[res.summary["mode"] == "deletion"]
    clean = res.clean.set_index(["direction", "k"])["recall"]
    for row in start.itertuples():
        assert row.start == clean[(row.direction, row.k)]
    assert (res.summary.query("mode == 'insertion'")["start"] < 0.5).all()  # all-baseline start
    assert res.computed == 2 * 10 and res.n_captions == 20
    assert set(res.cost.index) == set(METHODS) and (res.cost["forwards_per_image"] == 1).all()


def test_killed_run_resumes_without_recomputing_or_losing_rows(gallery, tmp_path):
    kw = dict(methods=["Saliency", "MaskCLIP"], settings=SETTINGS, batch_size=3,
              show_progress=False)  # fmt: skip
    written = []

    class Killed(Exception):
        pass

    def kill_after_three(path):
        written.append(path)
        if len(written) == 3:
            raise Killed

    with pytest.raises(Killed):
        evaluate_retrieval("testbed", gallery, tmp_path / "run", on_part=kill_after_three, **kw)
    first = {p: p.stat().st_mtime_ns for p in written}
    again = []
    res = evaluate_retrieval("testbed", gallery, tmp_path / "run", on_part=again.append, **kw)
    assert not set(again) & set(first)  # nothing written twice
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    assert len(written) + len(again) == 2 * 4  # 4 batches of 3 images per method
    assert res.computed == 2 * 10 - 9  # three parts of 3 images were done
    full = evaluate_retrieval("testbed", gallery, tmp_path / "straight", **kw)
    pd.testing.assert_frame_equal(res.curves, full.curves)
    pd.testing.assert_frame_equal(res.summary, full.summary)
    # a third call computes nothing and gives the same tables
    assert evaluate_retrieval("testbed", gallery, tmp_path / "run", **kw).computed == 0


def test_parts_of_another_model_or_a_corrupt_part_are_refused(gallery, tmp_path):
    kw = dict(methods=["Saliency"], settings=SETTINGS, batch_size=5, show_progress=False)
    evaluate_retrieval("testbed", gallery.head(5), tmp_path / "out", **kw)
    with pytest.raises(ValueError, match=r"b0000000\.pt' was written by another model"):
        evaluate_retrieval("testbed:shortcut", gallery.head(5), tmp_path / "out", **kw)
    part = tmp_path / "out" / "parts" / "Saliency" / "b0000000.pt"
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cannot read part file '.*b0000000\.pt'"):
        evaluate_retrieval("testbed", gallery.head(5), tmp_path / "out", **kw)


def test_limit_reuses_parts_and_identity_ignores_ks(gallery, tmp_path):
    kw = dict(methods=["Saliency"], batch_size=4, show_progress=False)
    a = evaluate_retrieval("testbed", gallery.head(8), tmp_path / "o", settings=SETTINGS, **kw)
    assert a.computed == 8 and a.n_images == 8
    wider = RetrievalSettings(**{**SETTINGS.__dict__, "ks": (1, 2, 5)})
    b = evaluate_retrieval("testbed", gallery, tmp_path / "o", settings=wider, **kw)
    assert b.computed == 2  # only the last, new batch
    assert sorted(b.summary["k"].unique()) == [1, 2, 5]


def test_fingerprint_is_exact():
    model, _, _ = load_testbed("default")
    f = state_dict_digest(model)
    assert f == state_dict_digest(load_testbed("default")[0])
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-7
    assert state_dict_digest(model) != f


def test_bad_arguments(gallery, tmp_path):
    with pytest.raises(ValueError, match="unknown methods"):
        evaluate_retrieval("testbed", gallery, tmp_path, methods=["Nope"])
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_retrieval("testbed", gallery, tmp_path, batch_size=0)
    with pytest.raises(TypeError, match="CaptionGallery"):
        evaluate_retrieval("testbed", [1, 2], tmp_path)
    with pytest.raises(ValueError, match="protocol must be one of"):
        RetrievalSettings(protocol="coco")
    with pytest.raises(ValueError, match="ks"):
        RetrievalSettings(ks=(0,))


def test_cli_runs_and_reports_bad_inputs(gallery, tmp_path, capsys):
    images, captions = gallery.paths[0].parent, gallery.source
    out = tmp_path / "cli"
    argv = ["faithfulness", "retrieval", str(images), str(captions), "--model", "testbed",
            "--methods", "Saliency", "GradECLIP", "--limit", "6", "--ks", "1", "5",
            "--batch-size", "4", "--device", "cpu", "--out", str(out), "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 0
    text = (out / "retrieval.md").read_text()
    assert "del. IR@5 ↓" in text and "| GradECLIP |" in text and "6 images, 12 captions" in text
    assert (out / "retrieval.png").stat().st_size > 10_000
    assert f"wrote {out / 'retrieval.md'}" in capsys.readouterr().out
    bad = tmp_path / "empty.json"
    bad.write_text("")
    assert cli_main(argv[:3] + [str(bad)] + argv[4:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("captum-clip faithfulness retrieval: error: ")
    assert "empty.json" in err[0]


def test_cli_defaults_match_the_harness():
    from captum_clip.benchmark import retrieval
    from captum_clip.commands import _faithfulness_retrieval as cli

    assert cli.DEFAULT_METHODS == retrieval.DEFAULT_METHODS
    assert set(cli.PROTOCOL_NAMES) == set(retrieval.PROTOCOLS)


def _subprocess(cmd, cwd):
    import os
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")  # fmt: skip
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=540)


def test_hard_kill_mid_run_resumes(gallery, tmp_path):
    """A process SIGKILLed after its 3rd part: the rerun computes the rest, rewrites none."""
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from captum_clip.benchmark.retrieval import RetrievalSettings, evaluate_retrieval
        from captum_clip.datasets import load_captions
        g = load_captions({str(gallery.source)!r}, {str(gallery.paths[0].parent)!r})
        n = []
        def on_part(path):
            n.append(path)
            if len(n) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        evaluate_retrieval("testbed", g, {str(tmp_path / "run")!r}, methods=["Saliency"],
                           settings=RetrievalSettings(protocol="none", n_steps=4,
                               deletion_baseline="zeros", insertion_baseline="zeros", ks=(1, 3)),
                           batch_size=2, show_progress=False, on_part=on_part)
    """)
    proc = _subprocess([sys.executable, "-c", script], tmp_path)
    assert proc.returncode == -9, proc.stderr[-3000:]  # killed, no cleanup ran
    parts = sorted((tmp_path / "run" / "parts" / "Saliency").glob("*.pt"))
    assert len(parts) == 3 and not list((tmp_path / "run").glob("*.csv"))
    assert not list((tmp_path / "run" / "parts").rglob(".*.tmp"))  # no half-written part
    before = {p: p.stat().st_mtime_ns for p in parts}
    again = []
    kw = dict(methods=["Saliency"], settings=SETTINGS, batch_size=2, show_progress=False)
    torch.set_num_threads(1)
    res = evaluate_retrieval("testbed", gallery, tmp_path / "run", on_part=again.append, **kw)
    assert res.computed == 10 - 6 and len(again) == 2
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    straight = evaluate_retrieval("testbed", gallery, tmp_path / "straight", **kw)
    pd.testing.assert_frame_equal(res.curves, straight.curves)


def test_torchrun_two_processes_match_one(gallery, tmp_path):
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["faithfulness", "retrieval", str(gallery.paths[0].parent), str(gallery.source),
            "--model", "testbed", "--methods", "Saliency", "MaskCLIP", "--protocol", "none",
            "--n-steps", "4", "--ks", "1", "3", "--batch-size", "3", "--device", "cpu",
            "--no-progress"]  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # like the torchrun workers (OMP_NUM_THREADS=1)
    try:
        assert cli_main([*args, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(before)
    proc = _subprocess(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
         "--master_addr=127.0.0.1", f"--master_port={port}",
         "-m", "captum_clip", *args, "--out", str(tmp_path / "two")],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    for stem in ("summary", "curves", "clean"):
        one = pd.read_csv(tmp_path / "one" / f"{stem}.csv")
        two = pd.read_csv(tmp_path / "two" / f"{stem}.csv")
        pd.testing.assert_frame_equal(one, two)
    # 4 batches: rank 0 wrote 0 and 2, rank 1 wrote 1 and 3 (every part exactly once)
    for method in ("Saliency", "MaskCLIP"):
        parts = sorted(p.name for p in (tmp_path / "two" / "parts" / method).glob("*.pt"))
        assert parts == [f"b{b:07d}.pt" for b in range(4)]
    assert (tmp_path / "two" / "retrieval.md").is_file()


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """A tiny open_clip architecture registered under a name (real BPE tokenizer, ViT)."""
    import json

    import open_clip
    from conftest import TINY_VIT, make_tiny_vit

    root = tmp_path_factory.mktemp("tiny_cfg")
    (root / "tiny-retrieval-test.json").write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(root)
    ckpt = root / "tiny.pt"
    torch.save(make_tiny_vit(seed=4).state_dict(), ckpt)
    return "tiny-retrieval-test", ckpt


def test_open_clip_random_weights_and_local_checkpoint(gallery, tmp_path, capsys, tiny_open_clip):
    name, ckpt = tiny_open_clip
    images, captions = gallery.paths[0].parent, gallery.source
    base = ["faithfulness", "retrieval", str(images), str(captions), "--methods", "GradECLIP",
            "CCI", "--limit", "4", "--ks", "1", "--protocol", "none", "--n-steps", "2",
            "--batch-size", "2", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert cli_main([*base, "--model", name, "--out", str(tmp_path / "rand")]) == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().err
    assert cli_main([*base, "--model", f"{name}:{ckpt}", "--out", str(tmp_path / "ckpt")]) == 0
    assert "RANDOM WEIGHTS" not in capsys.readouterr().err
    for out in ("rand", "ckpt"):
        s = pd.read_csv(tmp_path / out / "summary.csv")
        assert set(s["method"]) == {"GradECLIP", "CCI"} and s["auc"].between(0, 1).all()
    # the checkpoint's run refuses to continue into the random model's folder
    argv = [*base, "--model", f"{name}:{ckpt}", "--out", str(tmp_path / "rand")]
    assert cli_main(argv) == 2
    assert "written by another model" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing image", "empty file", "unknown image id", "unreadable"])
def test_cli_bad_inputs_one_error_line(tmp_path, capsys, case):
    import json

    images, captions = write_caption_gallery(tmp_path / "g", 3, captions_per_image=1)
    data = json.loads(captions.read_text())
    if case == "missing image":
        (images / "000002.png").unlink()
    elif case == "empty file":
        captions.write_text("")
    elif case == "unknown image id":
        data["annotations"].append({"id": 99, "image_id": 12, "caption": "a photo of dots"})
        captions.write_text(json.dumps(data))
    else:
        (images / "000001.png").write_bytes(b"\x89PNG broken")
    argv = ["faithfulness", "retrieval", str(images), str(captions), "--model", "testbed",
            "--methods", "Saliency", "--protocol", "none", "--n-steps", "2", "--device", "cpu",
            "--out", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("captum-clip faithfulness retrieval: error: ")
    named = {"missing image": "000002.png", "unreadable": "000001.png"}.get(case, "captions.json")
    assert named in err[0]
