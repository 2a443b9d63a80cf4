"""ImageNet-style zero-shot folders: class names and templates from open_clip's metadata.

The usual validation layout is one sub-folder per WordNet id (``n01440764/``, ...); sorted,
sub-folder ``i`` is class ``i`` of open_clip's ``IMAGENET_CLASSNAMES`` (the 1,000 names of
the CLIP paper), and the prompts are the paper's 80 ``OPENAI_IMAGENET_TEMPLATES``.
``captum-clip faithfulness folder DIR --imagenet`` uses both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["imagenet_class_names", "imagenet_folder_classes", "imagenet_templates"]

N_CLASSES = 1000
WNID = re.compile(r"^n\d{8}$")


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet class names of open_clip (``zero_shot_metadata``), index order."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def imagenet_templates() -> list[str]:
    """The 80 OpenAI ImageNet prompt templates as ``"... {} ..."`` strings."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    out = []
    for t in OPENAI_IMAGENET_TEMPLATES:  # callables ``c -> text`` in open_clip
        text = t("{}") if callable(t) else str(t)
        if text.count("{}") != 1:
            raise ValueError(f"unexpected open_clip template {text!r}")
        out.append(text)
    return out


def imagenet_folder_classes(
    images_dir: str | os.PathLike, class_names: Sequence[str] | None = None
) -> list[str]:
    """Class names aligned with the sorted sub-folders of an ImageNet-style folder.

    Args:
        images_dir: Folder with one sub-folder per class (WordNet ids for full ImageNet).
        class_names: One name per sub-folder in sorted order (for a subset); default: the
            1,000 ImageNet names, which needs exactly 1,000 WordNet-id sub-folders.

    Returns:
        The class names, entry ``i`` for the ``i``-th sorted sub-folder.

    Raises:
        ValueError: Not a folder of sub-folders; a sub-folder count that is not 1,000
            (without ``class_names``) or not ``len(class_names)``; without ``class_names``,
            sub-folders that are not WordNet ids.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise ValueError(f"image folder not found: {str(root)!r}")
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not subdirs:
        raise ValueError(
            f"--imagenet needs one sub-folder per class (WordNet ids such as n01440764), "
            f"but {str(root)!r} has none"
        )
    if class_names is not None:
        names = list(class_names)
        if len(names) != len(subdirs):
            raise ValueError(
                f"{str(root)!r} has {len(subdirs)} class sub-folders but {len(names)} class "
                "names were given (--classes: one per sub-folder, in sorted order)"
            )
        return names
    if len(subdirs) != N_CLASSES:
        raise ValueError(
            f"--imagenet expects the {N_CLASSES} ImageNet class sub-folders (one per WordNet "
            f"id, sorted = class index), but {str(root)!r} has {len(subdirs)}; for a subset "
            "pass --classes with one name per sub-folder in sorted order"
        )
    odd = [s for s in subdirs if not WNID.match(s)]
    if odd:
        raise ValueError(
            f"--imagenet maps sorted WordNet-id sub-folders to class indices, but "
            f"{str(root)!r} has sub-folders like {odd[:3]}; pass --classes to name them"
        )
    return imagenet_class_names()
