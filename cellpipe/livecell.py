"""LIVECell's COCO JSON at its real size, validated and normalised as a stream.

The real train+val file holds ≈ 1.7 M cells as polygons in ≈ 900 MB of JSON; parsed
whole (``json.loads``) it costs ≈ 7 GB of Python objects, and the normalised copy the
pretraining reads costs as much again. Here the file is read twice with ijson (its C
parser): once for everything but ``annotations`` (LIVECell puts them last, so this
pass stops where they begin), once for the annotations, one at a time. Each is
checked exactly as :func:`cellpipe.coco.normalise` checks it and written out at once
with its mask as compressed COCO RLE: the same pixels the polygons rasterise to
(pycocotools), a third of the bytes, and nothing to rasterise again in the loader.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import ijson

from cellpipe import coco
from cellpipe.atomic import atomic_path
from cellpipe.errors import CellpipeError
from cellpipe.images import check_file

_FORMS = {"start_array": "list", "start_map": "map"}


def _json_error(exc: Exception, where: str) -> CellpipeError:
    return CellpipeError(f"not valid JSON ({exc.__class__.__name__}: {str(exc)[:80]})", where=where)


def read_header(path: str | Path) -> tuple[dict, str]:
    """Every top-level value of a COCO file except ``annotations``, and their form ('list' or 'map').

    Official LIVECell releases key annotations by id (a map); other COCO files list them.
    When ``images`` and ``categories`` come before ``annotations`` (LIVECell, cellpipe)
    reading stops there; otherwise the annotations are skipped over and reading goes on.
    Top-level keys after ``annotations`` are read only in that second case; the
    normalised file keeps just ``info``, ``images``, ``annotations`` and ``categories``.
    """
    where = str(path)
    if not Path(path).is_file():
        raise CellpipeError("COCO file is missing", where=where)
    header: dict = {}
    form = None
    with open(path, "rb") as f:
        events = ijson.parse(f, use_float=True)
        try:
            first = next(events, None)
            if first is None or first[:2] != ("", "start_map"):
                raise CellpipeError("COCO file must hold a JSON object", where=where)
            key, builder = None, None
            for prefix, event, value in events:
                if prefix == "" and event == "end_map":
                    break
                if prefix == "" and event == "map_key":
                    key = value
                    if key != "annotations":
                        builder = ijson.ObjectBuilder()
                        continue
                    _, event, _ = next(events)
                    form = _FORMS.get(event)
                    if form is None:
                        raise CellpipeError("'annotations' must be a list or an object keyed by id", where=where)
                    if "images" in header and "categories" in header:
                        break  # the rest is annotations (read by `annotations`)
                    for prefix, event, _ in events:  # noqa: B007 - skip to the end of the annotations
                        if prefix == "annotations" and event in ("end_array", "end_map"):
                            break
                    continue
                builder.event(event, value)
                if prefix == key and event not in ("start_map", "start_array"):
                    header[key] = builder.value  # a scalar, or the end of a list/object
        except ijson.JSONError as exc:
            raise _json_error(exc, where) from None
    for name in ("images", "categories"):
        if not isinstance(header.get(name), list):
            raise CellpipeError(f"missing or malformed '{name}' list", where=where)
    if form is None:
        raise CellpipeError("missing 'annotations'", where=where)
    return header, form


def annotations(path: str | Path, form: str, on_bytes: Callable[[int], None] | None = None) -> Iterator[dict]:
    """The annotations of a COCO file one at a time (``form`` from :func:`read_header`).

    ``on_bytes(position)`` is called every 10,000 annotations with the bytes read so far.
    """
    with open(path, "rb") as f:
        items = (
            ijson.items(f, "annotations.item", use_float=True)
            if form == "list"
            else (a for _, a in ijson.kvitems(f, "annotations", use_float=True))
        )
        try:
            for n, a in enumerate(items, 1):
                yield a
                if on_bytes is not None and n % 10_000 == 0:
                    on_bytes(f.tell())
        except ijson.JSONError as exc:
            raise _json_error(exc, str(path)) from None


def normalise_file(
    src: str | Path,
    out: str | Path,
    *,
    image_root: str | Path | None,
    single_class: bool = True,
    progress: Callable[..., None] | None = None,
) -> tuple[int, int]:
    """Check ``src`` as :func:`cellpipe.coco.normalise` does and write it normalised to ``out``.

    ``out`` holds the images with ``path`` relative to it and the annotations as a list
    with area, bbox and the mask as compressed RLE; it is written atomically (an error
    at annotation 1,000,000 leaves no partial file). Peak memory is the images and one
    annotation, whatever the file's size. Returns (images, annotations).
    """
    where = str(src)
    header, form = read_header(src)
    cat_ids = coco.category_ids(header["categories"])
    images: dict[int, dict] = {}
    by_file: dict[str, int] = {}
    for im in header["images"]:
        im = coco.checked_image(im, where=where, image_root=image_root)
        if im["id"] in images:
            raise CellpipeError(f"image id {im['id']} appears twice in 'images'", where=where)
        if im["path"] in by_file:  # one id's cells would train on the other's pixels
            raise CellpipeError(
                f"images {by_file[im['path']]} and {im['id']} name the same file {im['file_name']!r}", where=where
            )
        check_file(im["path"], (im["height"], im["width"]), where=f"{where}: image {im['id']}")
        images[im["id"]] = im
        by_file[im["path"]] = im["id"]
    categories = coco.SINGLE_CLASS if single_class else header["categories"]
    info = header.get("info") if isinstance(header.get("info"), dict) else {}
    total = Path(src).stat().st_size
    n = 0
    seen: set[int] = set()
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        head = coco.with_paths_for(
            {
                "info": {**info, "normalised_by": "cellpipe livecell"},
                "categories": categories,
                "images": list(images.values()),
            },
            out,
        )
        f.write(json.dumps(head)[:-1] + ', "annotations": [')
        on_bytes = (lambda pos: progress(pos >> 20, total >> 20, info=f"{n:,} cells")) if progress else None
        for a in annotations(src, form, on_bytes):
            ann, rle_ = coco.checked_annotation(a, images, cat_ids, where=where, single_class=single_class)
            aid = ann.get("id")
            if aid is not None:
                if aid in seen:
                    raise CellpipeError(f"annotation id {aid} appears twice", where=where)
                seen.add(aid)
            counts = rle_["counts"]
            ann["segmentation"] = {
                "size": [int(v) for v in rle_["size"]],
                "counts": counts.decode() if isinstance(counts, bytes) else counts,
            }
            f.write((", " if n else "") + json.dumps(ann))
            n += 1
        f.write("]}\n")
    if progress:
        progress(total >> 20, total >> 20, info=f"{n:,} cells")
    return len(images), n
