"""``covar build``: composites of foreground instances on backgrounds, with exact masks.

Every (instance, background) pair gets ``1 + 11`` composites (see
:data:`~captum_clip.covar.transforms.TRANSFORMS`). Output layout::

    <out>/covar.json                    build settings (checked when resuming)
    <out>/manifest.parquet              one row per composite (``.csv`` without pyarrow)
    <out>/images/<class>/<instance>__<background>__<transform>.png
    <out>/masks/<class>/<instance>__<background>__<transform>.png   (0 / 255)

Deterministic from ``seed``; resumable: a composite that is listed in the manifest and
whose two files exist is not rendered again.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from captum_clip.covar.sources import Background, Instance
from captum_clip.covar.transforms import (
    TRANSFORMS,
    TransformSpec,
    composite,
    params_json,
    transform_matrix,
    transform_params,
    warp_foreground,
)
from captum_clip.storage import find_table, folder_lock, read_table, slug, table_path, write_table

__all__ = ["BuildResult", "build", "load_manifest"]

MANIFEST_COLUMNS = (
    "image_id",
    "class_name",
    "class_index",
    "instance",
    "background",
    "transform",
    "family",
    "level",
    "params",
    "image_path",
    "mask_path",
    "mask_area",
)


@dataclass
class BuildResult:
    """What :func:`build` did.

    Attributes:
        root: The output folder.
        manifest: One row per composite (columns :data:`MANIFEST_COLUMNS`), paths
            relative to ``root``.
        written: Composites rendered in this call.
        skipped: Composites already on disk (resume).
    """

    root: Path
    manifest: pd.DataFrame
    written: int
    skipped: int


def load_manifest(root: str | os.PathLike) -> pd.DataFrame:
    """The manifest of a built COVAR folder.

    Raises:
        FileNotFoundError: ``root`` holds no ``manifest.parquet`` / ``manifest.csv``.
    """
    path = find_table(root, "manifest")
    if path is None:
        raise FileNotFoundError(f"no manifest.parquet or manifest.csv in {str(root)!r}")
    return read_table(path)


def _check_sources(instances: Sequence[Instance], backgrounds: Sequence[Background]) -> None:
    if len(instances) == 0 or len(backgrounds) == 0:
        raise ValueError(
            f"need at least one instance and one background, got {len(instances)} and "
            f"{len(backgrounds)}"
        )
    for kind, items in (("instance", instances), ("background", backgrounds)):
        ids = [slug(x.id) for x in items]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"{kind} ids must be unique (after slugging), duplicates: {dup}")
    for inst in instances:
        inst.validate()
    for bg in backgrounds:
        bg.validate()


def _background_canvas(bg: Background, size: int) -> np.ndarray:
    img = bg.image
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(img)
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(img[y0 : y0 + side, x0 : x0 + side])
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC))


def _plan(
    instances: Sequence[Instance],
    backgrounds: Sequence[Background],
    transforms: Sequence[TransformSpec],
    class_names: list[str],
    seed: int,
) -> pd.DataFrame:
    rows = []
    for inst in instances:
        cls = slug(inst.class_name)
        for bg in backgrounds:
            for spec in transforms:
                name = f"{slug(inst.id)}__{slug(bg.id)}__{spec.name}"
                rows.append(
                    {
                        "image_id": f"{cls}/{name}",
                        "class_name": inst.class_name,
                        "class_index": class_names.index(inst.class_name),
                        "instance": inst.id,
                        "background": bg.id,
                        "transform": spec.name,
                        "family": spec.family,
                        "level": float(spec.level),
                        "params": params_json(transform_params(spec, seed, inst.id)),
                        "image_path": f"images/{cls}/{name}.png",
                        "mask_path": f"masks/{cls}/{name}.png",
                        "mask_area": -1,
                    }
                )
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def _settings(seed, size, object_size, transforms, class_names) -> dict:
    return {
        "format": 1,
        "seed": int(seed),
        "size": int(size),
        "object_size": None if object_size is None else float(object_size),
        "transforms": [[t.name, t.family, float(t.level)] for t in transforms],
        "class_names": list(class_names),
    }


def _check_args(size, object_size, transforms, chunk_size) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8 (canvas side in pixels), got {size!r}")
    if object_size is not None and not 0 < float(object_size) <= 1:
        raise ValueError(f"object_size must be in (0, 1] or None, got {object_size!r}")
    names = [t.name for t in transforms]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"transforms must be non-empty with unique names, got {names}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def build(
    out_dir: str | os.PathLike,
    instances: Sequence[Instance],
    backgrounds: Sequence[Background],
    *,
    size: int = 224,
    seed: int = 0,
    object_size: float | None = 0.6,
    transforms: Sequence[TransformSpec] = TRANSFORMS,
    class_names: Sequence[str] | None = None,
    chunk_size: int = 500,
    show_progress: bool = True,
) -> BuildResult:
    """Builds (or resumes) a COVAR folder.

    Args:
        out_dir: Output folder (created).
        instances: Foreground cut-outs with masks and classes
            (:func:`~captum_clip.covar.sources.testbed_instances`,
            :func:`~captum_clip.covar.sources.folder_instances`).
        backgrounds: Background images (any size; centre-cropped square, resized).
        size: Side of the square composites in pixels.
        seed: Seed of the transform parameters (same seed → identical files).
        object_size: Longer side of the object's box as a fraction of ``size`` before
            the transforms; ``None`` keeps the cut-out's pixel scale (only centred).
        transforms: The variants (default: identity + 11 structural transforms).
        class_names: Class order for ``class_index`` (default: order of first appearance).
        chunk_size: The manifest is saved after every ``chunk_size`` new composites.
        show_progress: Show a tqdm progress bar.

    Returns:
        :class:`BuildResult`.

    Raises:
        ValueError: Bad arguments, or ``out_dir`` was built with other settings.
    """
    _check_args(size, object_size, transforms, chunk_size)
    _check_sources(instances, backgrounds)
    present = list(dict.fromkeys(i.class_name for i in instances))
    class_names = present if class_names is None else list(class_names)
    missing = [c for c in present if c not in class_names]
    if missing:
        raise ValueError(f"class_names lacks classes of the instances: {missing}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    settings = _settings(seed, size, object_size, transforms, class_names)
    settings_path = root / "covar.json"
    with folder_lock(root / ".manifest.lock"):  # two new builds cannot both write settings
        if settings_path.is_file():
            old = json.loads(settings_path.read_text())
            if old != settings:
                raise ValueError(
                    f"{str(root)!r} was built with other settings ({old}); expected "
                    f"{settings}. Use a new folder (or delete it) to build with these settings."
                )
        else:
            _atomic_write_text(settings_path, json.dumps(settings, indent=1) + "\n")
    plan = _plan(instances, backgrounds, transforms, class_names, seed)
    old_path = find_table(root, "manifest")
    done: dict[str, int] = {}
    if old_path is not None:
        old_manifest = read_table(old_path)
        for image_id, ipath, mpath, area in old_manifest[
            ["image_id", "image_path", "mask_path", "mask_area"]
        ].itertuples(index=False):
            if (root / ipath).is_file() and (root / mpath).is_file():
                done[image_id] = int(area)
    manifest_path = table_path(root, "manifest")
    is_done = plan["image_id"].isin(done.keys()).to_numpy().copy()
    areas = np.array([done.get(i, -1) for i in plan["image_id"]], dtype=np.int64)
    todo = np.flatnonzero(~is_done)
    bar = tqdm(total=len(todo), desc="covar build", disable=not show_progress)
    canvases: dict[str, np.ndarray] = {}
    by_inst = {i.id: i for i in instances}
    by_bg = {b.id: b for b in backgrounds}
    specs = {t.name: t for t in transforms}
    warped: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    since_save = 0
    for k in todo:
        row = plan.iloc[k]
        inst = by_inst[row["instance"]]
        key = (inst.id, row["transform"])
        if key not in warped:
            if warped and next(iter(warped))[0] != inst.id:
                warped.clear()  # rows are grouped by instance: free the previous one
            spec = specs[row["transform"]]
            matrix, window = transform_matrix(
                spec, json.loads(row["params"]), inst.mask, size, object_size
            )
            warped[key] = warp_foreground(inst.image, inst.mask, matrix, size, window)
        fg, mask = warped[key]
        if row["background"] not in canvases:
            canvases[row["background"]] = _background_canvas(by_bg[row["background"]], size)
        img = composite(fg, mask, canvases[row["background"]])
        for rel, arr in ((row["image_path"], img), (row["mask_path"], mask * np.uint8(255))):
            _save_png(arr, root / rel)
        areas[k], is_done[k] = int(mask.sum()), True
        since_save += 1
        bar.update(1)
        if since_save >= chunk_size:
            _save_manifest(plan, areas, is_done, manifest_path)
            since_save = 0
    bar.close()
    manifest = _save_manifest(plan, areas, is_done, manifest_path)
    for ext in (".parquet", ".csv"):
        stale = manifest_path.with_suffix(ext)
        if stale != manifest_path and stale.is_file():
            stale.unlink()
    return BuildResult(root, manifest, written=len(todo), skipped=int(len(plan) - len(todo)))


def _save_png(arr: np.ndarray, path: Path) -> None:
    """Atomic PNG write: a crash or a second builder never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_manifest(
    plan: pd.DataFrame, areas: np.ndarray, is_done: np.ndarray, path: Path
) -> pd.DataFrame:
    """Writes the rows done here plus those another builder of the folder recorded meanwhile
    (under the folder's lock), so concurrent builds never drop each other's rows."""
    root = path.parent
    with folder_lock(root / ".manifest.lock"):
        done, areas = is_done.copy(), areas.copy()
        on_disk = find_table(root, "manifest")
        if on_disk is not None:
            other = read_table(on_disk)
            where = dict(zip(plan["image_id"], range(len(plan))))
            for image_id, ipath, mpath, area in other[
                ["image_id", "image_path", "mask_path", "mask_area"]
            ].itertuples(index=False):
                k = where.get(image_id)
                if k is not None and not done[k]:
                    if (root / ipath).is_file() and (root / mpath).is_file():
                        done[k], areas[k] = True, int(area)
        out = plan.assign(mask_area=areas)[done].reset_index(drop=True)
        write_table(out, path)
    return out
