"""Reading microscopy images the way the real downloads ship them.

Kaggle images are 8-bit grey PNGs, LIVECell images 8-bit grey (LZW) TIFFs. Some
copies of the data circulate re-saved: as RGB with three equal channels, as palette
PNGs (the palette maps each index to a grey), or as grey + alpha (``LA``). Those hold
the same grey values and are accepted as such; anything else (colour, 16-bit, other
sizes) is rejected by name. Folders are listed the way people copy them around:
``X.PNG`` is image ``X`` like ``X.png``, and hidden files (macOS ``._X.png``
AppleDouble files, ``.DS_Store``) are not images.
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
            if im.mode in ("P", "PA"):  # palette indices → the colours they stand for
                im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CellpipeError(f"unreadable or truncated image ({exc.__class__.__name__}: {exc})", where=str(path)) from None
    if arr.ndim == 3:
        if arr.shape[2] in (2, 4):  # grey + alpha, RGB + alpha: the alpha is not image content
            arr = arr[..., :-1]
        if arr.shape[2] == 3:
            if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                raise CellpipeError("expected a grey image, got 3 channels of colour", where=str(path))
        elif arr.shape[2] != 1:
            raise CellpipeError(f"expected a grey image, got {arr.shape[2]} channels", where=str(path))
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


IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


def list_images(folder: str | Path) -> dict[str, Path]:
    """``{image id: path}`` of the PNG/TIFF files of a folder, sorted by id.

    The id is the file name without its suffix; the suffix matches in any case. Hidden
    files are skipped. Two files of one id (``a.png`` + ``a.tif``) are an error naming
    both, not one image silently standing for the other.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CellpipeError("image folder is missing", where=str(folder))
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        if p.stem in found:
            raise CellpipeError(f"two files for image {p.stem}: {found[p.stem].name} and {p.name}", where=str(folder))
        found[p.stem] = p
    return dict(sorted(found.items()))


def header_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from an image's header, without decoding its pixels."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CellpipeError(f"unreadable image ({exc.__class__.__name__}: {exc})", where=str(path)) from None


def input_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The size a model with ``min_size``/``max_size`` sees an image at (torchvision's rule)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)
