"""Reading image files with errors that name the file.

Every place that reads user images (the CLI commands, folder benchmarks, COVAR sources,
CounterAnimals) goes through :func:`read_image`, so an unreadable file is one clear
``ValueError`` (one ``error:`` line from the CLI) instead of a PIL traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["read_image"]


def read_image(path: str | os.PathLike, mode: str | None = "RGB") -> Any:
    """Opens and fully decodes an image file (the file is closed again).

    Args:
        path: The image file.
        mode: PIL mode to convert to (``"RGB"``, ``"L"``...); None keeps the file's mode
            (e.g. ``"RGBA"`` with its alpha channel).

    Returns:
        A loaded ``PIL.Image.Image``.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not an image PIL can read, truncated or damaged, or too large.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {str(path)!r}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode) if mode is not None else im.copy()
    except UnidentifiedImageError:
        raise ValueError(
            f"cannot read image {str(path)!r}: not an image format PIL knows (png, jpg, ...)"
        ) from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"cannot read image {str(path)!r}: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated, damaged, unreadable
        raise ValueError(
            f"cannot read image {str(path)!r}: {err} (truncated or damaged file?)"
        ) from None
