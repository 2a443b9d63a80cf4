"""Optional ``torch.distributed`` for ``covar eval`` under ``torchrun``.

The process group is initialised only when the launcher's environment says there is more
than one process (``WORLD_SIZE > 1``); a plain ``python -m captum_clip covar eval`` never
touches ``torch.distributed``. Backend: ``nccl`` when CUDA is available, else ``gloo``.
Work is split deterministically: global batch ``b`` belongs to rank ``b % world_size``,
so every batch holds the same images whatever the number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_from_env", "shard"]


@dataclass
class DistContext:
    """Rank, world size and device of this process.

    Attributes:
        rank: This process's rank (0 without ``torchrun``).
        world_size: Number of processes (1 without ``torchrun``).
        device: Device for the models (``cuda:<LOCAL_RANK>`` under nccl).
        owns_group: Whether this context initialised the process group (and destroys it).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 (merges and writes the final tables)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Waits for every rank (no-op for a single process)."""
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def close(self) -> None:
        """Destroys the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from err


def init_from_env(device: str | torch.device | None = None) -> DistContext:
    """Reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and initialises the process group.

    Args:
        device: ``None``/``"auto"``: ``cuda:<LOCAL_RANK>`` if CUDA is available, else CPU.
            An explicit device is used as given (``"cuda"`` becomes ``cuda:<LOCAL_RANK>``).

    Returns:
        A :class:`DistContext` (``world_size=1`` outside ``torchrun``).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank} WORLD_SIZE={world}")
    if device in (None, "auto"):
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    ctx = DistContext(rank, world, dev)
    if world > 1:
        if not dist.is_available():
            raise ValueError("WORLD_SIZE > 1 but torch.distributed is not available")
        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
            ctx.owns_group = True
    return ctx


def shard(n_batches: int, rank: int, world_size: int) -> list[int]:
    """Global batch indices of ``rank``: ``b % world_size == rank``."""
    return [b for b in range(n_batches) if b % world_size == rank]
