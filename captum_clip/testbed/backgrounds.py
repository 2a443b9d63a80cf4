"""Backgrounds of the testbed scenes: real scikit-image textures and procedural noise.

Every background is a pure function of its kind (index into :data:`BACKGROUND_NAMES`)
and a per-image integer seed, computed with a vectorised integer hash (no Python loop
over pixels or images), so scenes can be re-rendered exactly for interventions.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

BACKGROUND_NAMES: tuple[str, ...] = (
    "brick",
    "grass",
    "gravel",
    "water",
    "sky",
    "sand",
    "snow",
    "lava",
)
"""Backgrounds. Class ``i`` owns background ``i % len(BACKGROUND_NAMES)``; the last two
("snow", "lava") are owned by no class (the *neutral* backgrounds)."""


def _hash_uniform(*ints: torch.Tensor) -> torch.Tensor:
    """Deterministic uniform [0, 1) values from integer tensors (broadcast), vectorised."""
    mask = 0xFFFFFFFF
    h = torch.zeros((), dtype=torch.int64)
    for k, x in zip((0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F), ints):
        h = (h ^ (x.to(torch.int64) * k)) & mask
        h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & mask
        h = ((h ^ (h >> 12)) * 0x297A2D39) & mask
        h = h ^ (h >> 15)
    return (h & 0xFFFFFF).to(torch.float32) / float(1 << 24)


def _value_noise(seed: torch.Tensor, size: int, cells: int, channel: int = 0) -> torch.Tensor:
    """Smooth noise in [0, 1], ``(B, size, size)``: hashed ``cells x cells`` grid, bilinear."""
    b = seed.shape[0]
    gy = torch.arange(cells + 1).view(1, -1, 1)
    gx = torch.arange(cells + 1).view(1, 1, -1)
    grid = _hash_uniform(seed.view(-1, 1, 1), gy, gx, torch.tensor(channel))
    grid = grid.expand(b, cells + 1, cells + 1).unsqueeze(1)
    out = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)
    return out[:, 0]


@lru_cache(maxsize=16)
def _texture(name: str, side: int) -> torch.Tensor:
    """A skimage texture, tinted and resized to ``(3, side, side)``; cached in memory."""
    import skimage.data

    grey = torch.from_numpy(getattr(skimage.data, name)().astype("float32") / 255.0)
    grey = F.interpolate(grey[None, None], size=(side, side), mode="area")[0, 0]
    grey = (grey - grey.mean()) / (grey.std() + 1e-6)
    tint = {
        "brick": ([0.62, 0.30, 0.22], 0.12),
        "grass": ([0.25, 0.55, 0.18], 0.12),
        "gravel": ([0.52, 0.50, 0.47], 0.14),
    }[name]
    base = torch.tensor(tint[0]).view(3, 1, 1)
    return (base + tint[1] * grey).clamp(0, 1)


def _textured(name: str, seed: torch.Tensor, size: int) -> torch.Tensor:
    tex = _texture(name, 2 * size)
    oy = (_hash_uniform(seed, torch.tensor(11)) * size).long()
    ox = (_hash_uniform(seed, torch.tensor(13)) * size).long()
    windows = tex.unfold(1, size, 1).unfold(2, size, 1)  # (3, S+1, S+1, S, S), a view
    return windows[:, oy, ox].transpose(0, 1)  # random crops, (B, 3, S, S)


def _procedural(name: str, seed: torch.Tensor, size: int) -> torch.Tensor:
    def noise(cells: int, channel: int) -> torch.Tensor:
        return _value_noise(seed, size, cells, channel)

    y = torch.linspace(0, 1, size).view(1, size, 1)
    fine = max(size // 2, 2)
    if name == "water":
        base, amp, field = (
            [0.05, 0.30, 0.45],
            [0.05, 0.15, 0.20],
            noise(4, 1) * 0.6 + noise(12, 2) * 0.4,
        )
    elif name == "sky":
        base, amp, field = (
            [0.45, 0.70, 0.95],
            [0.40, 0.25, 0.05],
            (noise(4, 1) - 0.3).clamp(min=0) + 0.3 * y,
        )
    elif name == "sand":
        base, amp, field = (
            [0.85, 0.72, 0.45],
            [0.12, 0.10, 0.08],
            noise(fine, 3) * 0.6 + noise(4, 1) * 0.4,
        )
    elif name == "snow":
        base, amp, field = (
            [0.88, 0.90, 0.95],
            [0.10, 0.10, 0.08],
            noise(12, 2) * 0.5 + noise(fine, 3) * 0.5,
        )
    elif name == "lava":
        base, amp, field = (
            [0.35, 0.05, 0.02],
            [0.60, 0.45, 0.05],
            (noise(4, 1) * 0.7 + noise(fine, 3) * 0.3) ** 2,
        )
    else:
        raise ValueError(f"unknown procedural background {name!r}")
    base_t = torch.tensor(base).view(1, 3, 1, 1)
    amp_t = torch.tensor(amp).view(1, 3, 1, 1)
    return (base_t + amp_t * field.unsqueeze(1)).clamp(0, 1)


def render_backgrounds(background: torch.Tensor, bg_seed: torch.Tensor, size: int) -> torch.Tensor:
    """Backgrounds alone, ``(B, 3, size, size)``, a pure function of index and seed."""
    out = torch.empty(background.shape[0], 3, size, size)
    for k, name in enumerate(BACKGROUND_NAMES):
        sel = (background == k).nonzero().flatten()
        if sel.numel() == 0:
            continue
        if name in ("brick", "grass", "gravel"):
            out[sel] = _textured(name, bg_seed[sel], size)
        else:
            out[sel] = _procedural(name, bg_seed[sel], size)
    return out
