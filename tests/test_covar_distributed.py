"""``covar eval`` under ``torchrun``: 2 processes (gloo, CPU) give the 1-process table."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch

from captum_clip import covar
from captum_clip.cli import main as cli_main
from captum_clip.covar.distributed import init_from_env, shard
from captum_clip.storage import find_table, read_table
from captum_clip.testbed import zoo


def test_shard_is_a_partition():
    for world in (1, 2, 3, 5):
        got = sorted(b for r in range(world) for b in shard(11, r, world))
        assert got == list(range(11))
    assert shard(7, 1, 3) == [1, 4]
    assert shard(3, 0, 1) == [0, 1, 2]


def test_no_process_group_without_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_from_env("cpu")
    assert (ctx.rank, ctx.world_size, ctx.owns_group, ctx.is_main) == (0, 1, False, True)
    assert not torch.distributed.is_initialized()
    ctx.barrier()  # no-op
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK"):
        init_from_env("cpu")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="integer"):
        init_from_env("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], tmp_path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")  # fmt: skip
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=540)
    assert proc.returncode == 0, (
        f"{cmd}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    )


def test_torchrun_two_processes_match_one(tmp_path):
    inst = covar.testbed_instances(1, classes=["dots", "checks", "solid"], seed=1)
    bgs = covar.testbed_backgrounds(1, seed=1)
    root = tmp_path / "data"
    covar.build(root, inst, bgs, size=64, object_size=None, show_progress=False)  # 36 images
    cfg = zoo.load_config("default")
    torch.manual_seed(0)
    ckpt = zoo.save_weights(zoo.build_model(cfg), cfg, {}, tmp_path / "tiny.safetensors")
    args = ["eval", str(root), "--models", f"testbed:default:{ckpt}", "--batch-size", "4",
            "--chunk-batches", "2", "--n-clusters", "3", "--device", "cpu", "--no-progress"]  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # like the torchrun workers (OMP_NUM_THREADS=1)
    try:
        assert cli_main(["covar", *args, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(before)
    _run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
         "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
         "-m", "captum_clip", "covar", *args, "--out", str(tmp_path / "two")],
        tmp_path,
    )  # fmt: skip
    for stem in ("results", "summary"):
        one = read_table(find_table(tmp_path / "one", stem))
        two = read_table(find_table(tmp_path / "two", stem))
        pd.testing.assert_frame_equal(one, two)
    assert len(one) == 13 and len(read_table(find_table(tmp_path / "one", "results"))) == 36
    assert not any((tmp_path / "two" / "parts").glob("*/*"))
    assert (tmp_path / "two" / "covar_eval.png").is_file()
