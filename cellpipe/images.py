"""Reading microscopy images the way the real downloads ship them.

Kaggle images are 8-bit grey PNGs, LIVECell images 8-bit grey (LZW) TIFFs. Some
copies of the data circulate as RGB with three equal channels: those are accepted as
the same content; anything else (colour, 16-bit, other sizes) is rejected by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cellpipe.errors import CellpipeError


def read_grey(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as ``uint8 (height, width)``; check ``shape`` when given."""
    path = Path(path)
    if not path.is_file():
        raise CellpipeError("image file is missing", where=str(path))
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CellpipeError(f"unreadable or truncated image ({exc.__class__.__name__}: {exc})", where=str(path)) from None
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[..., :3]
        if arr.shape[2] != 3 or not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise CellpipeError(f"expected a grey image, got {arr.shape[2]} channels of colour", where=str(path))
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise CellpipeError(f"expected a 2-D grey image, got shape {arr.shape}", where=str(path))
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise CellpipeError(f"expected 8-bit pixels, got {arr.dtype}", where=str(path))
    if shape is not None and arr.shape != tuple(shape):
        raise CellpipeError(
            f"image is {arr.shape[1]}×{arr.shape[0]} (width×height) but the annotations say {shape[1]}×{shape[0]}",
            where=str(path),
        )
    return arr


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image, checking it decodes completely."""
    return read_grey(path).shape  # type: ignore[return-value]
