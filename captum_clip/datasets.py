"""Image-caption galleries from COCO-format or Karpathy-split caption files.

Two JSON layouts are read:

* **COCO captions** (``captions_val2017.json`` and the like): ``{"images": [{"id",
  "file_name"}, ...], "annotations": [{"image_id", "caption"}, ...]}``; images are
  ``<images_dir>/<file_name>``.
* **Karpathy split** (``dataset_coco.json``, ``dataset_flickr30k.json``): ``{"images":
  [{"filename", "filepath"?, "split", "sentences": [{"raw"}, ...], "cocoid"|"imgid"},
  ...]}``; images are ``<images_dir>/<filepath>/<filename>`` or
  ``<images_dir>/<filename>``; ``split="test"`` keeps the usual 5k (COCO) / 1k (Flickr)
  test images.

The gallery keeps the file's image order; images without captions are left out (counted
in :attr:`CaptionGallery.n_without_captions`). Every problem is a ``ValueError`` (or
``FileNotFoundError``) naming the file: an empty or malformed file, a caption for an
unknown image id, a missing or unreadable image.

Example:
    >>> gallery = load_captions("captions_val2017.json", "val2017/", limit=500)
    >>> len(gallery), gallery.captions[:2], gallery.text_to_image[:2]
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["CaptionGallery", "load_captions"]


@dataclass
class CaptionGallery:
    """Images and their captions (several per image) for retrieval.

    Attributes:
        image_ids: One id per image (the file's ids: COCO ``id``, Karpathy ``cocoid`` or
            ``imgid``), in gallery order.
        paths: Image file of each image.
        captions: All captions, grouped by image in gallery order.
        text_to_image: ``(T,)`` long tensor: index of the image each caption describes.
        source: The captions file.
        n_without_captions: Images of the file left out because no caption names them.
    """

    image_ids: list[Any]
    paths: list[Path]
    captions: list[str]
    text_to_image: Tensor
    source: Path
    n_without_captions: int = 0
    _starts: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        counts = torch.bincount(self.text_to_image, minlength=len(self.image_ids)).tolist()
        self._starts = [0]
        for c in counts:
            self._starts.append(self._starts[-1] + c)

    def __len__(self) -> int:
        return len(self.image_ids)

    def captions_of(self, index: int) -> list[str]:
        """The captions of image ``index`` (gallery position)."""
        return self.captions[self._starts[index] : self._starts[index + 1]]

    def head(self, n: int) -> CaptionGallery:
        """The first ``n`` images with their captions (``--limit``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"limit must be a positive int, got {n!r}")
        n = min(n, len(self))
        t = self._starts[n]
        return CaptionGallery(
            self.image_ids[:n],
            self.paths[:n],
            self.captions[:t],
            self.text_to_image[:t].clone(),
            self.source,
            self.n_without_captions,
        )

    def load_images(self, indices: Sequence[int], preprocess: Callable) -> Tensor:
        """Reads and preprocesses images ``indices`` into ``(n, 3, H, W)``.

        Raises:
            ValueError: An image cannot be read (the message names the file).
        """
        from captum_clip.storage import read_image

        out = []
        for i in indices:
            try:
                image = read_image(self.paths[i])
            except (ValueError, FileNotFoundError) as err:
                raise ValueError(
                    f"{err} (image id {self.image_ids[i]!r} of {str(self.source)!r})"
                ) from None
            out.append(preprocess(image))
        return torch.stack(out)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {str(path)!r}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{str(path)!r} is empty: expected a COCO or Karpathy captions JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from err


def _caption(value: Any, where: str, src: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{str(src)!r}: {where} has no caption text, got {value!r}")
    return " ".join(value.split())


def _coco(data: dict, src: Path, root: Path) -> tuple[list, list, dict]:
    images, annotations = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise ValueError(
            f"{str(src)!r}: expected COCO captions ('images' and 'annotations' lists) or a "
            f"Karpathy split ('images' with 'sentences'), got keys {sorted(data)}"
        )
    if not annotations:
        raise ValueError(f"{str(src)!r} holds no captions (its 'annotations' list is empty)")
    ids, paths, index = [], [], {}
    for j, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise ValueError(f"{str(src)!r}: images[{j}] needs 'id' and 'file_name', got {im!r}")
        if im["id"] in index:
            raise ValueError(f"{str(src)!r}: image id {im['id']!r} appears twice in 'images'")
        index[im["id"]] = len(ids)
        ids.append(im["id"])
        paths.append(root / str(im["file_name"]))
    caps: dict[int, list[str]] = {}
    for j, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise ValueError(f"{str(src)!r}: annotations[{j}] has no 'image_id', got {ann!r}")
        where = f"annotation {ann.get('id', j)!r} (image id {ann['image_id']!r})"
        if ann["image_id"] not in index:
            raise ValueError(f"{str(src)!r}: {where} refers to an image id that is not in 'images'")
        caps.setdefault(index[ann["image_id"]], []).append(_caption(ann.get("caption"), where, src))
    return ids, paths, caps


def _karpathy(data: dict, src: Path, root: Path, split: str | None) -> tuple[list, list, dict]:
    images = data["images"]
    if split is not None:
        found = sorted({str(im.get("split")) for im in images if isinstance(im, dict)})
        images = [im for im in images if isinstance(im, dict) and im.get("split") == split]
        if not images:
            raise ValueError(f"{str(src)!r} has no images of split {split!r}; splits: {found}")
    ids, paths, caps, seen = [], [], {}, set()
    for j, im in enumerate(images):
        if not isinstance(im, dict) or "filename" not in im:
            raise ValueError(f"{str(src)!r}: images[{j}] needs 'filename', got {im!r}")
        key = im.get("cocoid", im.get("imgid", im["filename"]))
        if key in seen:
            raise ValueError(f"{str(src)!r}: image id {key!r} appears twice")
        seen.add(key)
        path = root / str(im.get("filepath", "")) / str(im["filename"])
        if not path.is_file() and (root / str(im["filename"])).is_file():
            path = root / str(im["filename"])
        sentences = im.get("sentences", [])
        if not isinstance(sentences, list):
            raise ValueError(f"{str(src)!r}: 'sentences' of image {key!r} must be a list")
        texts = []
        for s in sentences:
            raw = s.get("raw") if isinstance(s, dict) else s
            if raw is None and isinstance(s, dict) and "tokens" in s:
                raw = " ".join(s["tokens"])
            texts.append(_caption(raw, f"a sentence of image {key!r}", src))
        if texts:
            caps[len(ids)] = texts
        ids.append(key)
        paths.append(path)
    if not caps:
        raise ValueError(f"{str(src)!r} holds no captions (no image has 'sentences')")
    return ids, paths, caps


def load_captions(
    captions_file: str | os.PathLike,
    images_dir: str | os.PathLike,
    *,
    split: str | None = None,
    limit: int | None = None,
) -> CaptionGallery:
    """Reads a COCO-format or Karpathy-split captions file over an image folder.

    Args:
        captions_file: The JSON file (layout detected from its keys).
        images_dir: Folder the image file names are relative to.
        split: Karpathy files only: keep images of this split (``"test"``, ``"val"``,
            ``"train"``, ``"restval"``); ``None`` keeps all.
        limit: Keep the first ``limit`` images (with all their captions).

    Returns:
        A :class:`CaptionGallery`. Every image file is checked to exist (not read).

    Raises:
        FileNotFoundError: The captions file does not exist.
        ValueError: The file is empty, not JSON, of neither layout, holds no captions, has
            a caption for an unknown image id, or names an image missing from
            ``images_dir``; ``split`` with a COCO file; a bad ``limit``.
    """
    src, root = Path(captions_file), Path(images_dir)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {str(root)!r}")
    data = _read_json(src)
    if not isinstance(data, dict) or "images" not in data:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{str(src)!r}: expected COCO captions ('images' + 'annotations') or a Karpathy "
            f"split ('images' with 'sentences') JSON object, got {got}"
        )
    karpathy = "annotations" not in data
    if karpathy and not any(
        isinstance(im, dict) and "sentences" in im for im in data["images"] or [None]
    ):
        raise ValueError(
            f"{str(src)!r}: expected COCO captions ('images' and 'annotations' lists) or a "
            f"Karpathy split ('images' with 'sentences'), got keys {sorted(data)} and no "
            "'sentences' in the images"
        )
    if split is not None and not karpathy:
        raise ValueError(f"split={split!r} needs a Karpathy split file; {str(src)!r} is COCO")
    if karpathy:
        ids, paths, caps = _karpathy(data, src, root, split)
    else:
        ids, paths, caps = _coco(data, src, root)
    keep = [i for i in range(len(ids)) if i in caps]
    if limit is not None:
        keep = keep[:limit]
    captions, owner = [], []
    for new, old in enumerate(keep):
        if not paths[old].is_file():
            raise ValueError(
                f"{str(src)!r}: image {ids[old]!r} ({str(paths[old])!r}) is not in {str(root)!r}"
            )
        captions += caps[old]
        owner += [new] * len(caps[old])
    return CaptionGallery(
        [ids[i] for i in keep],
        [paths[i] for i in keep],
        captions,
        torch.tensor(owner, dtype=torch.long),
        src,
        n_without_captions=len(ids) - len(caps),
    )
