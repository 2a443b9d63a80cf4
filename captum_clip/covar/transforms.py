"""Structural transforms of a foreground cut-out, with masks that match the pixels exactly.

A transform is a 3x3 homography in canvas pixel coordinates (pixel ``(i, j)`` covers
``[j, j+1) x [i, i+1)``, centres at ``+0.5``) plus, for ``crop``, a window that cuts
the object. The foreground is resampled once from the source cut-out:

* the **mask** with nearest neighbour (source pixel ``floor(H^-1 p)``);
* the **pixels** bilinearly with premultiplied alpha (only object pixels contribute), so
  no colour from outside the source mask leaks in. Wherever the nearest-neighbour mask is
  set, the nearest source pixel is one of the four bilinear taps with weight >= 1/4, so
  the colour is always defined.

Composites are made in ``uint8`` with ``where(mask, foreground, background)``: the mask
equals the pasted pixels by construction, also after saving as PNG.

"Viewpoint" is a perspective warp (the flat cut-out seen rotated about its vertical axis
by a pinhole camera); no generative model, no new views of a 3-D object.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "TRANSFORMS",
    "TransformSpec",
    "composite",
    "transform_matrix",
    "transform_params",
    "warp_foreground",
]


@dataclass(frozen=True)
class TransformSpec:
    """One of the 1 + 11 variants applied to every (instance, background) pair.

    Attributes:
        name: Unique name (file names and the ``transform`` column), e.g. ``"scale-0.50"``.
        family: ``identity``, ``scale``, ``viewpoint``, ``hflip``, ``vflip``,
            ``translate``, ``crop`` or ``rotate``.
        level: The family's strength (scale factor, yaw in degrees, shift fraction, kept
            side fraction, rotation in degrees); ``0`` when it has none.
    """

    name: str
    family: str
    level: float = 0.0
    extra: dict = field(default_factory=dict, compare=False)


TRANSFORMS: tuple[TransformSpec, ...] = (
    TransformSpec("identity", "identity"),
    TransformSpec("scale-0.50", "scale", 0.5),
    TransformSpec("scale-0.75", "scale", 0.75),
    TransformSpec("scale-1.25", "scale", 1.25),
    TransformSpec("scale-1.50", "scale", 1.5),
    TransformSpec("viewpoint-1", "viewpoint", 35.0),
    TransformSpec("viewpoint-2", "viewpoint", 60.0),
    TransformSpec("hflip", "hflip"),
    TransformSpec("vflip", "vflip"),
    TransformSpec("translate", "translate", 0.25),
    TransformSpec("crop", "crop", 0.65),
    TransformSpec("rotate", "rotate", 45.0),
)
"""The default variants: identity (background-only variation) + 11 structural ones."""

_CAMERA_DISTANCE = 3.0  # viewpoint: pinhole camera at this many object half-sizes


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from strings/ints, stable across processes and Python versions."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode()) & 0xFFFFFFFF


def transform_params(spec: TransformSpec, seed: int, instance_id: str) -> dict:
    """Random parameters of ``spec`` for one instance, a pure function of the arguments.

    The parameters do not depend on the background, so every background of an instance
    shows exactly the same transformed object (background-only variation).

    Returns:
        JSON-serialisable dict (stored in the manifest's ``params`` column).
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, stable_seed(instance_id, spec.name)])
    f, lvl = spec.family, float(spec.level)
    if f in ("identity", "hflip", "vflip"):
        return {}
    if f == "scale":
        return {"scale": lvl}
    if f == "viewpoint":
        return {"yaw_deg": lvl * float(rng.choice([-1.0, 1.0]))}
    if f == "rotate":
        return {"angle_deg": lvl * float(rng.choice([-1.0, 1.0]))}
    if f == "translate":
        angle = float(rng.uniform(0.0, 2.0 * math.pi))
        return {"fraction": lvl, "direction_rad": round(angle, 6)}
    if f == "crop":
        return {"keep": lvl, "corner": int(rng.integers(4))}
    raise ValueError(f"unknown transform family {f!r} in {spec}")


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _about(centre: tuple[float, float], m: np.ndarray) -> np.ndarray:
    cx, cy = centre
    return _translation(cx, cy) @ m @ _translation(-cx, -cy)


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 matrix mapping four ``src`` points to ``dst`` points (DLT, exact solve)."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b.extend([u, v])
    h = np.linalg.solve(np.array(a, dtype=np.float64), np.array(b, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive ``(y0, y1, x0, x1)`` of the non-empty mask."""
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def placement(mask: np.ndarray, size: int, object_size: float | None) -> np.ndarray:
    """Base homography source → canvas: the mask's box centred on the canvas.

    ``object_size=None`` keeps the cut-out's pixel scale and shifts it by whole pixels
    (the identity composite then holds the source pixels unchanged); a fraction in
    ``(0, 1]`` scales the box's longer side to that fraction of ``size``.
    """
    y0, y1, x0, x1 = _bbox(mask)
    cx, cy = (x0 + x1 + 1) / 2.0, (y0 + y1 + 1) / 2.0
    if object_size is None:
        return _translation(round(size / 2.0 - cx), round(size / 2.0 - cy))
    s = float(object_size) * size / max(x1 - x0 + 1, y1 - y0 + 1)
    return _about((size / 2.0, size / 2.0), np.diag([s, s, 1.0])) @ _translation(
        size / 2.0 - cx, size / 2.0 - cy
    )


def transform_matrix(
    spec: TransformSpec, params: dict, mask: np.ndarray, size: int, object_size: float | None
) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """Homography source → canvas of one variant, and the crop window (or ``None``).

    Every variant acts about the centre of the placed object's box (the object stays
    where it is, except for ``translate``).

    Returns:
        ``(H, window)``: ``H`` maps source pixel coordinates to canvas coordinates;
        ``window`` is an inclusive ``(y0, y1, x0, x1)`` canvas box the object is cut to.
    """
    base = placement(mask, size, object_size)
    y0, y1, x0, x1 = _bbox(mask)
    corners = np.array([[x0, y0, 1.0], [x1 + 1, y1 + 1, 1.0]]) @ base.T
    (bx0, by0), (bx1, by1) = corners[0, :2], corners[1, :2]
    c = ((bx0 + bx1) / 2.0, (by0 + by1) / 2.0)
    f = spec.family
    window = None
    if f in ("identity", "crop"):
        m = np.eye(3)
        if f == "crop":
            keep = float(params["keep"])
            w, h = (bx1 - bx0) * keep, (by1 - by0) * keep
            left = params["corner"] in (0, 3)
            top = params["corner"] in (0, 1)
            wx0 = bx0 if left else bx1 - w
            wy0 = by0 if top else by1 - h
            window = (
                math.floor(wy0),
                math.ceil(wy0 + h) - 1,
                math.floor(wx0),
                math.ceil(wx0 + w) - 1,
            )
    elif f == "scale":
        s = float(params["scale"])
        m = _about(c, np.diag([s, s, 1.0]))
    elif f == "hflip":
        m = _about(c, np.diag([-1.0, 1.0, 1.0]))
    elif f == "vflip":
        m = _about(c, np.diag([1.0, -1.0, 1.0]))
    elif f == "rotate":
        a = math.radians(float(params["angle_deg"]))
        rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
        m = _about(c, rot)
    elif f == "translate":
        d = float(params["fraction"]) * size
        a = float(params["direction_rad"])
        m = _translation(round(d * math.cos(a)), round(d * math.sin(a)))
    elif f == "viewpoint":
        r = max(bx1 - bx0, by1 - by0) / 2.0
        phi = math.radians(float(params["yaw_deg"]))
        dist = _CAMERA_DISTANCE * r
        src = np.array([[-r, -r], [r, -r], [r, r], [-r, r]])
        z = dist + src[:, 0] * math.sin(phi)
        dst = np.stack([src[:, 0] * math.cos(phi) * dist / z, src[:, 1] * dist / z], 1)
        m = _about(c, _homography(src, dst))
    else:
        raise ValueError(f"unknown transform family {f!r}")
    return m @ base, window


def warp_foreground(
    image: np.ndarray, mask: np.ndarray, matrix: np.ndarray, size: int, window=None
) -> tuple[np.ndarray, np.ndarray]:
    """Resamples a cut-out onto a ``size x size`` canvas.

    Args:
        image: ``(H, W, 3)`` uint8 source.
        mask: ``(H, W)`` bool object mask of the source.
        matrix: Homography source → canvas (:func:`transform_matrix`).
        size: Canvas side in pixels.
        window: Optional inclusive ``(y0, y1, x0, x1)`` canvas box the object is cut to.

    Returns:
        ``(foreground, mask)``: ``(size, size, 3)`` uint8 (zero outside the mask) and
        ``(size, size)`` bool.
    """
    h, w = mask.shape
    inv = np.linalg.inv(matrix)
    ar = np.arange(size, dtype=np.float64) + 0.5
    px, py = np.meshgrid(ar, ar, indexing="xy")
    qx = inv[0, 0] * px + inv[0, 1] * py + inv[0, 2]
    qy = inv[1, 0] * px + inv[1, 1] * py + inv[1, 2]
    qz = inv[2, 0] * px + inv[2, 1] * py + inv[2, 2]
    valid = qz > 0
    qz = np.where(valid, qz, 1.0)
    qx, qy = qx / qz, qy / qz
    src_mask = np.asarray(mask, dtype=bool)
    # nearest neighbour: the source pixel containing the point
    ix, iy = np.floor(qx), np.floor(qy)
    inside = valid & (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    ixc = np.clip(ix, 0, w - 1).astype(np.intp)
    iyc = np.clip(iy, 0, h - 1).astype(np.intp)
    out_mask = inside & src_mask[iyc, ixc]
    if window is not None:
        wy0, wy1, wx0, wx1 = window
        cut = np.zeros_like(out_mask)
        cut[max(wy0, 0) : max(wy1 + 1, 0), max(wx0, 0) : max(wx1 + 1, 0)] = True
        out_mask &= cut
    # bilinear with premultiplied alpha: taps at pixel centres around the point
    src = np.asarray(image, dtype=np.float64)
    bx, by = qx - 0.5, qy - 0.5
    x0, y0 = np.floor(bx), np.floor(by)
    fx, fy = bx - x0, by - y0
    acc = np.zeros((size, size, 3))
    weight = np.zeros((size, size))
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            tx, ty = x0 + dx, y0 + dy
            ok = valid & (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
            txc = np.clip(tx, 0, w - 1).astype(np.intp)
            tyc = np.clip(ty, 0, h - 1).astype(np.intp)
            wt = wx * wy * (ok & src_mask[tyc, txc])
            acc += wt[..., None] * src[tyc, txc]
            weight += wt
    colour = np.clip(acc / np.maximum(weight, 1e-12)[..., None], 0, 255).round().astype(np.uint8)
    colour[~out_mask] = 0
    return colour, out_mask


def composite(foreground: np.ndarray, mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``where(mask, foreground, background)`` for ``(S, S, 3)`` uint8 arrays."""
    if background.shape != foreground.shape or background.dtype != np.uint8:
        raise ValueError(
            f"background must be uint8 {foreground.shape}, got {background.dtype} {background.shape}"
        )
    return np.where(mask[..., None], foreground, background)


def params_json(params: dict) -> str:
    """Canonical JSON of a parameter dict (sorted keys)."""
    return json.dumps(params, sort_keys=True)
