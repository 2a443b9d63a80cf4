"""Grounding on the shapes testbed: caption word roles and scenes under three conditions.

Every object (a pattern-filled disc, :mod:`captum_clip.testbed.shapes`) is rendered three
times, on three backgrounds, with the caption ``"a {colour} {pattern} on {background}"``:

* ``aligned`` -- the background its class owns (what the ``shortcut`` model saw with the
  class in 90 % of its training scenes);
* ``conflicting`` -- the background another class owns;
* ``neutral`` -- snow or lava, owned by no class: the *unusual scenes* of the testbed
  (the ``shortcut`` model saw a class on them in about 2.5 % of its training scenes, the
  ``default`` model as often as on any other background).

Word roles: the pattern is the ``object`` word, the colours are ``attribute`` words, the
background is the ``context`` word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from captum_clip.testbed import shapes
from captum_clip.testbed.backgrounds import BACKGROUND_NAMES

__all__ = ["CONDITIONS", "NEUTRAL_BACKGROUNDS", "TestbedScenes", "testbed_roles", "testbed_scenes"]

CONDITIONS = ("aligned", "conflicting", "neutral")
NEUTRAL_BACKGROUNDS = tuple(
    i for i in range(len(BACKGROUND_NAMES)) if i >= shapes.OWNED_BACKGROUNDS
)
CAPTION_FORM = 1  # "a {colour} {pattern} on {background}"


def testbed_roles(caption: str) -> dict[str, Any]:
    """Word roles of a testbed caption.

    Args:
        caption: Any of the testbed caption forms, e.g. ``"a red dots on grass"``,
            ``"a photo of horizontal stripes"``, ``"a red and white checks"``.

    Returns:
        ``{"object": pattern, "attribute": [colours...], "context": background}``; keys
        without a word in the caption are left out (``object`` is always there).

    Raises:
        ValueError: The caption names no pattern class, or several patterns or backgrounds.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    words = re.sub(r"[^\w\s]", " ", caption.lower()).split()
    patterns, colours, backgrounds = [], [], []
    i = 0
    while i < len(words):
        for name in sorted(shapes.CLASS_NAMES, key=lambda c: -len(c.split())):
            parts = name.split()
            if words[i : i + len(parts)] == parts:
                patterns.append(name)
                i += len(parts)
                break
        else:
            if words[i] in shapes.COLOUR_NAMES:
                colours.append(words[i])
            elif words[i] in BACKGROUND_NAMES:
                backgrounds.append(words[i])
            i += 1
    if len(patterns) != 1:
        raise ValueError(
            f"caption {caption!r} must name exactly one pattern class of "
            f"{list(shapes.CLASS_NAMES)}, found {patterns}"
        )
    if len(backgrounds) > 1:
        raise ValueError(f"caption {caption!r} names several backgrounds {backgrounds}")
    roles: dict[str, Any] = {"object": patterns[0]}
    if colours:
        roles["attribute"] = colours
    if backgrounds:
        roles["context"] = backgrounds[0]
    return roles


@dataclass
class TestbedScenes:
    """Scenes of :func:`testbed_scenes` (``3 n`` of them, object-major).

    Attributes:
        images: ``(3n, 3, size, size)`` in ``[0, 1]``.
        masks: ``(3n, size, size)`` bool object masks.
        captions: The captions.
        roles: Word roles per caption (:func:`testbed_roles`).
        meta: Per scene ``seed, object, class, condition, background, unusual``.
    """

    __test__ = False  # not a pytest class

    images: Tensor
    masks: Tensor
    captions: list[str]
    roles: list[dict[str, Any]]
    meta: list[dict[str, Any]]

    def __len__(self) -> int:
        return self.images.shape[0]


def testbed_scenes(
    n: int,
    seed: int = 0,
    radius_range: tuple[float, float] = (10 / 64, 30 / 64),
    size: int = 64,
) -> TestbedScenes:
    """``n`` random objects, each on an aligned, a conflicting and a neutral background.

    Args:
        n: Number of objects.
        seed: Scene seed (same seed, same scenes).
        radius_range: Object radius as a fraction of ``size`` (wider than in training, so
            that the coverage curve spans small objects).
        size: Image side in pixels.
    """
    factors = shapes.sample_factors(
        n, seed, rho=0.0, size=size, radius_range=radius_range, caption_probs=(0, 1, 0, 0)
    )
    g = torch.Generator().manual_seed(int(seed) + 7919)
    cls = factors["class"]
    n_cls = len(shapes.CLASS_NAMES)
    other = (cls + torch.randint(1, n_cls, (n,), generator=g)) % n_cls
    neutral = torch.tensor(NEUTRAL_BACKGROUNDS)[
        torch.randint(len(NEUTRAL_BACKGROUNDS), (n,), generator=g)
    ]
    backgrounds = {
        "aligned": shapes.own_background(cls),
        "conflicting": shapes.own_background(other),
        "neutral": neutral,
    }
    images, masks, captions, roles, meta = [], [], [], [], []
    per_condition = {}
    for cond, bg in backgrounds.items():
        f = dict(factors, background=bg)
        img, mask = shapes.render(f, size)
        per_condition[cond] = (img, mask, shapes.captions_for(f), bg)
    for j in range(n):
        for cond in CONDITIONS:
            img, mask, caps, bg = per_condition[cond]
            images.append(img[j])
            masks.append(mask[j])
            captions.append(caps[j])
            roles.append(testbed_roles(caps[j]))
            meta.append(
                {
                    "seed": int(seed),
                    "object": j,
                    "class": shapes.CLASS_NAMES[int(cls[j])],
                    "condition": cond,
                    "background": BACKGROUND_NAMES[int(bg[j])],
                    "unusual": cond == "neutral",
                }
            )
    return TestbedScenes(torch.stack(images), torch.stack(masks), captions, roles, meta)
