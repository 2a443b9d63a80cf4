"""Per-image, per-word grounding rows from interaction results and object masks.

For one caption-image pair, one caption phrase with a *role* (``"object"``: the word that
names the object; ``"context"``: a word that names something outside it, e.g. the
background; ``"attribute"``: a word describing the object, e.g. its colour) and the
object mask, the phrase's **map** ``m`` is the sum of its token rows of the interaction
matrix over the image patches (the CLS column is not a place; see
:meth:`~captum_clip.attr.InteractionResult.image_map`). With ``w[p]`` the fraction of
patch ``p`` inside the object mask and ``m+ = max(m, 0)``:

* ``area_share = mean_p w[p]`` -- the object's share of the image (what a uniform map
  would put on the object: the chance level);
* ``object_share = sum_p m+[p] w[p] / sum_p m+[p]`` -- share of the phrase's positive
  interaction mass inside the object (NaN when the map has no positive mass);
* ``lift = object_share / area_share`` (> 1: the word is drawn to the object);
* ``pointing`` -- 1 if the patch where ``m`` is largest lies at least half inside the
  object, else 0;
* ``total`` -- the phrase's interaction with the whole image: its rows of ``A`` summed
  over *all* image tokens, CLS included (= its first-order integrated gradient);
* ``object_total = sum_p m[p] w[p]`` -- its signed interaction with the object;
* ``caption_share`` -- ``object_share`` of the whole caption's map (all token rows
  summed): where the image's interaction mass lies anyway. The image side's path from the
  baseline is often largest on the object (a saturated object against the mean-colour
  baseline), which pulls every word's map there; a word below ``caption_share`` is drawn
  *away* from the object relative to the caption as a whole;
* ``misplaced`` (the *correlated contexts* failure) -- an ``object`` phrase whose
  ``object_share`` is below ``area_share`` (it is grounded on the background more than a
  uniform map), or a ``context`` phrase whose ``object_share`` is above ``area_share`` (it
  is grounded on the object); ``None`` for other roles and for maps without positive mass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_clip.attr import phrase_positions

__all__ = ["ROLES", "measure", "normalise_roles", "patch_weights", "phrase_positions"]

ROLES = ("object", "context", "attribute")
Roles = Mapping[str, str | Sequence[str]]


def normalise_roles(roles: Roles) -> list[tuple[str, str]]:
    """``{"object": "dots", "attribute": ["red", "white"]}`` as ``[(role, phrase), ...]``."""
    if not isinstance(roles, Mapping):
        raise TypeError(
            f"roles must be a mapping role -> word(s) such as {{'object': 'dog'}}, got "
            f"{type(roles).__name__}"
        )
    out = []
    for role, words in roles.items():
        if role not in ROLES:
            raise ValueError(f"unknown word role {role!r}; expected one of {ROLES}")
        for word in [words] if isinstance(words, str) else list(words):
            if not isinstance(word, str) or not word.strip():
                raise ValueError(f"role {role!r} needs non-empty word strings, got {word!r}")
            out.append((role, word))
    if not out:
        raise ValueError("roles name no word; give at least {'object': WORD}")
    return out


def patch_weights(
    mask: Any, grid: tuple[int, int], image_size: tuple[int, int] | None, index: int = 0
) -> Tensor:
    """Fraction ``(h, w)`` of every patch inside a mask given on the patch grid or in pixels.

    Args:
        mask: 2-D bool or ``[0, 1]`` float tensor: the patch grid ``(h, w)``, the image size
            ``(H, W)`` when it is known, else any multiple of the grid.
        grid: Patch grid ``(h, w)``.
        image_size: ``(H, W)`` of the model input, if known.
        index: Which image the mask belongs to (for the error message).

    Raises:
        ValueError: Wrong shape or values, or no object / no background pixel.
    """
    if not isinstance(mask, Tensor) or mask.ndim != 2:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask {index} must be a 2-D tensor, got {got}")
    shape = tuple(mask.shape)
    allowed = {tuple(grid)} | ({tuple(image_size)} if image_size else set())
    multiple = shape[0] % grid[0] == 0 and shape[1] % grid[1] == 0
    if shape not in allowed and (image_size is not None or not multiple):
        want = " or ".join(str(s) for s in sorted(allowed))
        raise ValueError(
            f"mask {index} has shape {shape}; expected the patch grid or the image size {want}"
        )
    m = mask.detach().float().cpu()
    if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise ValueError(f"mask {index} must hold bools or floats in [0, 1]")
    w = F.adaptive_avg_pool2d(m[None, None], tuple(grid))[0, 0] if shape != tuple(grid) else m
    if float(w.sum()) <= 0 or float((1 - w).sum()) <= 0:
        raise ValueError(
            f"mask {index} must mark some object and some background, got object area "
            f"{float(w.mean()):.2f}"
        )
    return w.double()


def _check_masks(masks: Any, n: int) -> list[Tensor]:
    if isinstance(masks, Tensor):
        if masks.ndim != 3:
            raise ValueError(f"masks must be a (B, H, W) tensor, got shape {tuple(masks.shape)}")
        masks = list(masks)
    if not isinstance(masks, Sequence) or len(masks) != n:
        got = len(masks) if isinstance(masks, Sequence) else type(masks).__name__
        raise ValueError(f"need one mask per pair ({n}), got {got}")
    return list(masks)


def measure(
    result: Any,
    masks: Any,
    roles: Sequence[Roles],
    meta: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per (pair, role word) of an interaction result.

    Args:
        result: An :class:`~captum_clip.attr.InteractionResult` of ``B`` pairs.
        masks: ``B`` object masks (a ``(B, H, W)`` tensor or a list of 2-D tensors; see
            :func:`patch_weights`).
        roles: Per pair, a mapping role -> word or words in that pair's caption, with
            roles from :data:`ROLES`, e.g. ``{"object": "dots", "context": "grass"}``.
        meta: Per pair, extra columns copied into its rows (e.g. ``class``, ``unusual``).

    Returns:
        Rows (dicts) with ``pair, role, word, positions`` and the quantities of this
        module's docstring, then the ``meta`` columns.
    """
    a = result.attributions
    n = a.shape[0]
    masks = _check_masks(masks, n)
    if not isinstance(roles, Sequence) or isinstance(roles, (str, Mapping)) or len(roles) != n:
        raise ValueError(f"roles must be a list of {n} mappings, one per pair")
    if meta is not None and (not isinstance(meta, Sequence) or len(meta) != n):
        raise ValueError(f"meta must be a list of {n} mappings, one per pair")
    grid = tuple(result.patch_grid)
    k = result.n_prefix
    rows = []
    for i in range(n):
        w = patch_weights(masks[i], grid, result.image_size, i).to(a.device)
        area = float(w.mean())
        whole = a[i, :, k:].double().sum(0).reshape(grid).clamp(min=0)
        whole_mass = float(whole.sum())
        caption_share = float((whole * w).sum()) / whole_mass if whole_mass > 0 else math.nan
        for role, word in normalise_roles(roles[i]):
            pos = phrase_positions(result.tokens[i], word)
            block = a[i, pos].double()
            m = block[:, k:].sum(0).reshape(grid)
            plus = m.clamp(min=0)
            mass = float(plus.sum())
            share = float((plus * w).sum()) / mass if mass > 0 else math.nan
            top = int(m.reshape(-1).argmax())
            misplaced = None
            if mass > 0 and role == "object":
                misplaced = share < area
            elif mass > 0 and role == "context":
                misplaced = share > area
            row = {
                "pair": i,
                "role": role,
                "word": word,
                "positions": " ".join(str(p) for p in pos),
                "area_share": area,
                "object_share": share,
                "lift": share / area,
                "caption_share": caption_share,
                "pointing": int(float(w.reshape(-1)[top]) >= 0.5),
                "total": float(block.sum()),
                "object_total": float((m * w).sum()),
                "positive_mass": mass,
                "misplaced": misplaced,
            }
            if meta is not None:
                for key, value in meta[i].items():
                    if key in row:
                        raise ValueError(f"meta column {key!r} clashes with a measured column")
                    row[str(key)] = value
            rows.append(row)
    return rows
