"""Procedural pattern scenes with exact object masks and a planted background shortcut.

Every scene shows one large disc (the *object*) filled with a surface pattern (the
*class*: solid, horizontal / vertical / diagonal stripes, dots, checks) in one or two
colours, on one of eight backgrounds (three real scikit-image textures and five
procedural ones). With probability ``rho`` class ``i`` is drawn on its "own"
background ``i % n_backgrounds``; otherwise the background is uniform at random. The
class evidence lies only inside the object mask, the shortcut only outside it.

Scenes are a pure function of their *factors* (a dict of tensors), so the same object
can be re-rendered on another background or the background alone
(:func:`render`) for causal interventions. Everything is vectorised over the batch and
deterministic from a seed.

Example:
    >>> from captum_clip.testbed import shapes
    >>> s = shapes.generate_scenes(8, seed=0, rho=0.9)
    >>> s.images.shape, s.masks.shape, s.captions[0]  # doctest: +SKIP
    (torch.Size([8, 3, 64, 64]), torch.Size([8, 64, 64]), 'a red dots on grass')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from captum_clip.testbed.backgrounds import BACKGROUND_NAMES, render_backgrounds

CLASS_NAMES: tuple[str, ...] = (
    "solid",
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "dots",
    "checks",
)
"""Object classes: the surface pattern inside the object mask."""

COLOUR_NAMES: tuple[str, ...] = (
    "red",
    "green",
    "blue",
    "yellow",
    "magenta",
    "cyan",
    "white",
    "black",
)
"""Object colours (pure RGB)."""

COLOUR_RGB = torch.tensor(
    [
        [0.9, 0.1, 0.1],
        [0.1, 0.8, 0.1],
        [0.1, 0.2, 0.95],
        [0.95, 0.9, 0.1],
        [0.9, 0.1, 0.9],
        [0.1, 0.9, 0.9],
        [0.97, 0.97, 0.97],
        [0.05, 0.05, 0.05],
    ]
)

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of {pattern}",
    "a {colour} {pattern} on {background}",
    "{pattern} on {background}",
    "a {colour} and {colour2} {pattern}",
)
"""Training caption forms; ``caption_template`` in the factors indexes this tuple."""

PROMPT_TEMPLATE = "a photo of {pattern}"
"""Zero-shot class prompt (matches the first training caption form)."""

OWNED_BACKGROUNDS = 6
FACTOR_KEYS = (
    "class",
    "colour",
    "colour2",
    "background",
    "cx",
    "cy",
    "radius",
    "period",
    "phase_x",
    "phase_y",
    "bg_seed",
    "caption_template",
)


@dataclass
class Scenes:
    """A batch of scenes.

    Attributes:
        images: ``(B, 3, H, W)`` float images in ``[0, 1]``.
        masks: ``(B, H, W)`` bool, exactly the pixels painted by the object.
        factors: dict of ``(B,)`` tensors (see :data:`FACTOR_KEYS`).
        captions: list of ``B`` training captions.
    """

    images: torch.Tensor
    masks: torch.Tensor
    factors: dict[str, torch.Tensor]
    captions: list[str]

    @property
    def labels(self) -> torch.Tensor:
        """Class index per scene, ``(B,)`` long."""
        return self.factors["class"]

    def __len__(self) -> int:
        return self.images.shape[0]


def own_background(classes: torch.Tensor) -> torch.Tensor:
    """The background each class owns: ``class % len(BACKGROUND_NAMES)``."""
    return classes % len(BACKGROUND_NAMES)


def class_prompts(template: str = PROMPT_TEMPLATE) -> list[str]:
    """Zero-shot prompts, one per class in :data:`CLASS_NAMES` order."""
    return [template.format(pattern=c) for c in CLASS_NAMES]


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    return size


def sample_factors(
    n: int,
    seed: int = 0,
    rho: float = 0.0,
    size: int = 64,
    radius_range: tuple[float, float] = (20 / 64, 30 / 64),
    caption_probs: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0),
) -> dict[str, torch.Tensor]:
    """Draws scene factors deterministically from ``seed``.

    Args:
        n: Number of scenes.
        seed: Random seed (same seed → identical factors).
        rho: Shortcut strength in ``[0, 1]``: probability that a class appears on its own
            background; otherwise the background is uniform over all backgrounds.
        size: Image side in pixels; positions, radii and pattern periods scale with it.
        radius_range: Object radius range as a fraction of ``size``.
        caption_probs: Probabilities of the :data:`CAPTION_TEMPLATES` forms.

    Returns:
        Dict of ``(n,)`` tensors keyed by :data:`FACTOR_KEYS` (``cx, cy, radius, period``
        in pixels).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not 0.0 <= float(rho) <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho!r}")
    size = _check_size(size)
    lo, hi = float(radius_range[0]), float(radius_range[1])
    if not 0.0 < lo <= hi <= 0.5:
        raise ValueError(f"radius_range must satisfy 0 < lo <= hi <= 0.5, got {radius_range!r}")
    probs = torch.tensor(caption_probs, dtype=torch.float64)
    if probs.numel() != len(CAPTION_TEMPLATES) or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(
            f"caption_probs must be {len(CAPTION_TEMPLATES)} non-negative weights, got {caption_probs!r}"
        )
    g = torch.Generator().manual_seed(int(seed))
    n_cls, n_bg, n_col = len(CLASS_NAMES), len(BACKGROUND_NAMES), len(COLOUR_NAMES)
    cls = torch.randint(n_cls, (n,), generator=g)
    colour = torch.randint(n_col, (n,), generator=g)
    colour2 = (colour + torch.randint(1, n_col, (n,), generator=g)) % n_col
    aligned = torch.rand(n, generator=g) < float(rho)
    random_bg = torch.randint(n_bg, (n,), generator=g)
    background = torch.where(aligned, own_background(cls), random_bg)
    radius = size * (lo + (hi - lo) * torch.rand(n, generator=g))
    # centre keeps at least 60 % of the radius inside the image
    margin = torch.minimum(0.6 * radius, torch.full_like(radius, size / 2))
    cx = margin + (size - 2 * margin) * torch.rand(n, generator=g)
    cy = margin + (size - 2 * margin) * torch.rand(n, generator=g)
    period = size * (0.11 + 0.05 * torch.rand(n, generator=g))
    phase_x = torch.rand(n, generator=g)
    phase_y = torch.rand(n, generator=g)
    bg_seed = torch.randint(0, 2**30, (n,), generator=g)
    template = torch.multinomial(probs.float(), n, replacement=True, generator=g)
    return {
        "class": cls,
        "colour": colour,
        "colour2": colour2,
        "background": background,
        "cx": cx,
        "cy": cy,
        "radius": radius,
        "period": period,
        "phase_x": phase_x,
        "phase_y": phase_y,
        "bg_seed": bg_seed,
        "caption_template": template,
    }


# ---------------------------------------------------------------- objects
def object_masks(factors: dict[str, torch.Tensor], size: int = 64) -> torch.Tensor:
    """Exact object masks ``(B, size, size)``: pixel centres within ``radius`` of the centre."""
    ar = torch.arange(size, dtype=torch.float32) + 0.5
    dx = ar.view(1, 1, -1) - factors["cx"].float().view(-1, 1, 1)
    dy = ar.view(1, -1, 1) - factors["cy"].float().view(-1, 1, 1)
    return dx * dx + dy * dy <= factors["radius"].float().view(-1, 1, 1) ** 2


def _patterns(factors: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """Bool ``(B, size, size)``: True where the pattern shows ``colour`` (else ``colour2``)."""
    cls = factors["class"]
    out = torch.ones(cls.shape[0], size, size, dtype=torch.bool)
    ar = torch.arange(size, dtype=torch.float32) + 0.5
    for k in range(1, len(CLASS_NAMES)):
        sel = (cls == k).nonzero().flatten()
        if sel.numel() == 0:
            continue
        p = factors["period"][sel].float().view(-1, 1, 1)
        u = ar.view(1, 1, -1) / p + factors["phase_x"][sel].float().view(-1, 1, 1)
        v = ar.view(1, -1, 1) / p + factors["phase_y"][sel].float().view(-1, 1, 1)
        if k == 1:  # horizontal stripes: constant along rows
            pat = (torch.floor(2 * v).long() % 2 == 0).expand(-1, size, size)
        elif k == 2:  # vertical stripes
            pat = (torch.floor(2 * u).long() % 2 == 0).expand(-1, size, size)
        elif k == 3:  # diagonal stripes
            pat = torch.floor(2 * (u + v) / math.sqrt(2)).long() % 2 == 0
        elif k == 4:  # dots on a square lattice
            fu, fv = u - torch.floor(u) - 0.5, v - torch.floor(v) - 0.5
            pat = fu * fu + fv * fv < 0.3**2
        else:  # checks
            pat = (torch.floor(2 * u).long() + torch.floor(2 * v).long()) % 2 == 1
        out[sel] = pat
    return out


def render(
    factors: dict[str, torch.Tensor],
    size: int = 64,
    background: int | torch.Tensor | None = None,
    draw_object: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders scenes from factors, optionally intervening on them.

    Args:
        factors: Dict from :func:`sample_factors` (or ``Scenes.factors``). Positions are
            in pixels of the size they were sampled for; pass the same ``size``.
        size: Image side in pixels.
        background: Replace the background index (int or ``(B,)`` tensor); the texture
            crop / noise seed is kept, so only the background *kind* changes.
        draw_object: If False, render the background alone (masks are still returned).

    Returns:
        ``(images, masks)``: ``(B, 3, size, size)`` floats in ``[0, 1]`` and
        ``(B, size, size)`` bool masks of the pixels the object covers.
    """
    size = _check_size(size)
    missing = [k for k in FACTOR_KEYS if k not in factors]
    if missing:
        raise ValueError(f"factors is missing keys {missing}; expected {list(FACTOR_KEYS)}")
    bg = factors["background"]
    if background is not None:
        bg = torch.as_tensor(background, dtype=torch.long).expand_as(bg)
    if ((bg < 0) | (bg >= len(BACKGROUND_NAMES))).any():
        raise ValueError(f"background indices must be in [0, {len(BACKGROUND_NAMES)})")
    images = render_backgrounds(bg, factors["bg_seed"], size)
    masks = object_masks(factors, size)
    if draw_object:
        c1 = COLOUR_RGB[factors["colour"]].view(-1, 3, 1, 1)
        c2 = COLOUR_RGB[factors["colour2"]].view(-1, 3, 1, 1)
        obj = torch.where(_patterns(factors, size).unsqueeze(1), c1, c2)
        images = torch.where(masks.unsqueeze(1), obj, images)
    return images, masks


def captions_for(factors: dict[str, torch.Tensor]) -> list[str]:
    """Training captions for the factors (form chosen by ``caption_template``)."""
    cols = [COLOUR_NAMES[i] for i in factors["colour"].tolist()]
    cols2 = [COLOUR_NAMES[i] for i in factors["colour2"].tolist()]
    out = []
    for i, (c, b, t) in enumerate(
        zip(
            factors["class"].tolist(),
            factors["background"].tolist(),
            factors["caption_template"].tolist(),
        )
    ):
        out.append(
            CAPTION_TEMPLATES[t].format(
                pattern=CLASS_NAMES[c],
                colour=cols[i],
                colour2=cols2[i],
                background=BACKGROUND_NAMES[b],
            )
        )
    return out


def generate_scenes(
    n: int,
    seed: int = 0,
    rho: float = 0.0,
    size: int = 64,
    radius_range: tuple[float, float] = (20 / 64, 30 / 64),
    caption_probs: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0),
) -> Scenes:
    """Draws ``n`` scenes deterministically from ``seed``.

    Args are those of :func:`sample_factors`.

    Returns:
        :class:`Scenes` with images, exact masks, factors and captions.
    """
    factors = sample_factors(n, seed, rho, size, radius_range, caption_probs)
    images, masks = render(factors, size)
    return Scenes(images, masks, factors, captions_for(factors))


def select(factors: dict[str, torch.Tensor], index: torch.Tensor | slice) -> dict:
    """Sub-batch of factors."""
    return {k: v[index] for k, v in factors.items()}


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Maps ``[0, 1]`` images ``(B, 3, H, W)`` to open_clip's normalised space."""
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {got}")
    mean = torch.tensor(OPENAI_DATASET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`."""
    mean = torch.tensor(OPENAI_DATASET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=images.device).view(1, 3, 1, 1)
    return images * std + mean
