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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cellpipe.errors import CellpipeError

# PIL's own guard against decompression bombs raises a traceback-shaped error (or only warns) at
# its fixed limit; cellpipe checks every image's header against its own limit instead, by name.
Image.MAX_IMAGE_PIXELS = None
MAX_PIXELS = 100_000_000  # 10⁸: a 10,000 × 10,000 image (predict.max_image_pixels sets it for predict)


def is_file(path: Path) -> bool:
    """``path.is_file()``, with a one-line error where the name itself cannot exist (too long for the file system)."""
    try:
        return path.is_file()
    except OSError as exc:
        raise CellpipeError(f"cannot look this file up ({exc.strerror or exc.__class__.__name__})", where=str(path)) from None


def _check_header(im: Image.Image, path: Path, max_pixels: int, limit_name: str) -> None:
    """Refuse, before decoding, an image over ``max_pixels`` or holding several frames."""
    pixels = im.width * im.height
    if pixels > max_pixels:
        raise CellpipeError(
            f"image is {im.width}×{im.height} = {pixels:,} pixels, over the limit of {max_pixels:,} ({limit_name})",
            where=str(path),
        )
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        raise CellpipeError(
            f"image file holds {frames} frames (a multi-page TIFF or an animation); cellpipe reads one grey image "
            "per file: save each frame as its own file",
            where=str(path),
        )


def read_grey(
    path: str | Path,
    shape: tuple[int, int] | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    limit_name: str = "predict.max_image_pixels",
) -> np.ndarray:
    """Read an image as ``uint8 (height, width)``; check ``shape`` when given.

    The header is checked first: an image over ``max_pixels`` (a 388 KB PNG can declare
    20,000 × 20,000 pixels) or with several frames is refused by name before any pixel
    is decoded.
    """
    path = Path(path)
    if not is_file(path):
        raise CellpipeError("image file is missing", where=str(path))
    try:
        with Image.open(path) as im:
            _check_header(im, path, max_pixels, limit_name)
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
        if p.stem != p.stem.strip():
            raise CellpipeError(
                f"file name {p.name!r} has spaces around its image id (ids are read without them, so no id "
                f"would find it): rename it to {p.stem.strip() + p.suffix!r}",
                where=str(folder),
            )
        if p.stem in found:
            raise CellpipeError(f"two files for image {p.stem}: {found[p.stem].name} and {p.name}", where=str(folder))
        found[p.stem] = p
    return dict(sorted(found.items()))


def header_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from an image's header, without decoding its pixels."""
    return header(path).size


@dataclass(frozen=True)
class Header:
    """What an image file's header says, read without decoding its pixels."""

    format: str  # PIL's name: PNG, TIFF, JPEG, ...
    mode: str  # L (8-bit grey), I;16 (16-bit), RGB, P, ...
    size: tuple[int, int]  # (height, width)
    frames: int


GREY_MODES = ("L", "LA", "P", "PA", "RGB", "RGBA", "1")  # modes read_grey turns into 8-bit grey (colour checked on read)


FORMAT_OF_SUFFIX = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}


def check_file(path: str | Path, shape: tuple[int, int], *, where: str, max_pixels: int = MAX_PIXELS) -> Header:
    """An image file's header against what an annotation file says of it, without decoding it.

    Its format matches its suffix (a JPEG named ``.tif`` is refused: its pixels are not
    what was annotated), its pixels are 8-bit grey (or a grey-able 8-bit mode; 16-bit is
    refused), it holds one frame, and its size is ``shape`` (height, width).
    """
    path = Path(path)
    h = header(path)
    suffix_format = FORMAT_OF_SUFFIX.get(path.suffix.lower())
    if suffix_format is not None and h.format != suffix_format:
        raise CellpipeError(f"{where}: the file is {h.format}, not the {suffix_format} its name says", where=str(path))
    if h.mode not in GREY_MODES:
        bits = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}.get(h.mode)
        raise CellpipeError(
            f"{where}: expected 8-bit grey pixels, got {f'{bits}-bit' if bits else h.mode} (mode {h.mode})", where=str(path)
        )
    if h.frames > 1:
        raise CellpipeError(f"{where}: the file holds {h.frames} frames; cellpipe reads one image per file", where=str(path))
    if h.size[0] * h.size[1] > max_pixels:
        raise CellpipeError(f"{where}: {h.size[1]}×{h.size[0]} pixels, over the limit of {max_pixels:,}", where=str(path))
    if h.size != tuple(shape):
        raise CellpipeError(
            f"{where}: the image is {h.size[1]}×{h.size[0]} (width×height) but the annotations say {shape[1]}×{shape[0]}",
            where=str(path),
        )
    return h


def header(path: str | Path) -> Header:
    """An image's header (format, mode, size, frames), with a one-line error for a file that is not an image."""
    if not is_file(Path(path)):
        raise CellpipeError("image file is missing", where=str(path))
    try:
        with Image.open(path) as im:
            return Header(str(im.format), im.mode, (im.height, im.width), int(getattr(im, "n_frames", 1)))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CellpipeError(f"unreadable image ({exc.__class__.__name__}: {exc})", where=str(path)) from None


def input_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The size a model with ``min_size``/``max_size`` sees an image at (torchvision's rule)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)
