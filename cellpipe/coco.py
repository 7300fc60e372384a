"""COCO instance-segmentation JSON: building it from the tables, and reading/normalising LIVECell.

How images are split into folds and a lockbox without leakage: :mod:`cellpipe.folds`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pycocotools import mask as mask_util

from cellpipe.config import CELL_TYPES
from cellpipe.errors import CellpipeError
from cellpipe.paths import check_name, moved, resolve, stored

CATEGORIES: list[dict] = [{"id": i + 1, "name": name, "supercategory": "cell"} for i, name in enumerate(CELL_TYPES)]
CATEGORY_ID: dict[str, int] = {c["name"]: c["id"] for c in CATEGORIES}


def build(
    images: pd.DataFrame, annotations: pd.DataFrame, *, images_file: str | Path | None = None, out: str | Path | None = None
) -> dict:
    """COCO dict of the given images and their annotations (COCO RLE masks).

    Image paths are stored in ``images_file`` (the images table) relative to it; in
    the COCO dict they are stored relative to ``out`` (where it will be written).
    Without both, paths are copied as they are. A ``fold`` column (:mod:`cellpipe.folds`)
    is stored on each image.
    """
    img_ids = {iid: k + 1 for k, iid in enumerate(images["image_id"])}

    def path(value: str) -> str:
        return moved(value, images_file, out) if images_file is not None and out is not None else value

    coco_images = [
        {
            "id": img_ids[r.image_id],
            "file_name": r.file_name,
            "height": int(r.height),
            "width": int(r.width),
            "path": path(r.path),
            "kaggle_id": r.image_id,
            "cell_type": r.cell_type,
            "sample_id": r.sample_id,
            **({"fold": int(r.fold)} if "fold" in images else {}),
        }
        for r in images.itertuples(index=False)
    ]
    ann = annotations[annotations["image_id"].isin(img_ids)]
    coco_anns = [
        {
            "id": int(a.ann_id),
            "image_id": img_ids[a.image_id],
            "category_id": CATEGORY_ID[a.cell_type],
            "segmentation": {"size": [int(a.height), int(a.width)], "counts": a.coco_counts},
            "area": int(a.area),
            "bbox": [int(a.bbox_x), int(a.bbox_y), int(a.bbox_w), int(a.bbox_h)],
            "iscrowd": 0,
        }
        for a in ann.itertuples(index=False)
    ]
    return {
        "info": {"description": "cellpipe COCO export of a Kaggle Sartorius train.csv"},
        "images": coco_images,
        "annotations": coco_anns,
        "categories": CATEGORIES,
    }


# --------------------------------------------------------------------------- reading COCO


def image_id(im: dict) -> str:
    """An image's id as the rest of the pipeline names it: the Kaggle id where there is one."""
    return str(im.get("kaggle_id", im["id"]))


def segmentation_rle(seg: list | dict, height: int, width: int) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    if isinstance(seg, list):
        return mask_util.merge(mask_util.frPyObjects(seg, height, width))
    return seg if isinstance(seg["counts"], str | bytes) else mask_util.frPyObjects(seg, height, width)


DECODE_PIXELS = 1 << 25  # dense mask pixels decoded at once (32 MB): masks go through in chunks of this size


def instances(annotations: list[dict], height: int, width: int) -> sp.csr_matrix:
    """The masks of one image's annotations as a sparse ``(n, height·width)`` matrix (C order).

    Decoded a chunk of masks at a time: all of a LIVECell image's 700–2000 masks at once were a dense
    (h, w, n) array of 0.3–0.7 GB, and four times that as float32 on the way to the sparse matrix."""
    n, hw = len(annotations), height * width
    rles = [segmentation_rle(a["segmentation"], height, width) for a in annotations]
    step = max(1, DECODE_PIXELS // max(hw, 1))
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, n, step):
        dense = mask_util.decode(rles[start : start + step])  # (h, w, k) in Fortran order: mask-major as (k, w·h)
        mask, fortran = np.nonzero(dense.reshape(hw, -1, order="F").T)  # each mask's pixels, column by column
        rows.append(mask + start)
        cols.append((fortran % height) * width + fortran // height)  # pixel (i, j): i + h·j → i·w + j
    m = sp.csr_matrix((np.ones(sum(map(len, rows)), np.float32), (np.concatenate(rows), np.concatenate(cols))), shape=(n, hw))
    m.sort_indices()
    return m


def _annotations_list(data: dict, where: str) -> list[dict]:
    anns = data.get("annotations")
    if isinstance(anns, dict):  # official LIVECell releases key annotations by id
        anns = list(anns.values())
    if not isinstance(anns, list):
        raise CellpipeError("'annotations' must be a list or an object keyed by id", where=where)
    return anns


def load_json(path: str | Path) -> dict:
    """Load a COCO JSON file with a one-line error for unreadable content."""
    path = Path(path)
    if not path.is_file():
        raise CellpipeError("COCO file is missing", where=str(path))
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CellpipeError(f"not valid JSON ({exc.__class__.__name__}: {str(exc)[:80]})", where=str(path)) from None
    if not isinstance(data, dict):
        raise CellpipeError("COCO file must hold a JSON object", where=str(path))
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise CellpipeError(f"missing or malformed '{key}' list", where=str(path))
    return data


def normalise(
    data: dict, *, where: str, image_root: str | Path | None = None, single_class: bool = False, check_files: bool = True
) -> dict:
    """Validate a COCO dict and return it with list ``annotations`` and image ``path``s.

    An image's file is its ``path`` (cellpipe's own COCO files: relative to the JSON
    file ``where``, see :mod:`cellpipe.paths`) or else ``file_name`` in ``image_root``
    (LIVECell); a ``file_name`` that is not a plain name is an error. The returned
    ``path``s are usable from the working directory. Checks: category ids exist,
    polygons have ≥ 3 points and lie in the image (1 px tolerance), masks are not
    empty, every image file exists. ``single_class`` maps every category to one
    'cell' class (LIVECell pretraining). :mod:`cellpipe.livecell` applies the same
    checks to a file as a stream (LIVECell's full size does not fit this dict form).
    """
    anns = _annotations_list(data, where)
    cat_ids = category_ids(data["categories"])
    images = {}
    for im in data["images"]:
        im = checked_image(im, where=where, image_root=image_root, check_files=check_files)
        images[im["id"]] = im
    out_anns = [checked_annotation(a, images, cat_ids, where=where, single_class=single_class)[0] for a in anns]
    return {
        **{k: v for k, v in data.items() if k not in ("annotations", "images", "categories")},
        "images": list(images.values()),
        "annotations": out_anns,
        "categories": SINGLE_CLASS if single_class else data["categories"],
    }


SINGLE_CLASS: list[dict] = [{"id": 1, "name": "cell", "supercategory": "cell"}]


def category_ids(categories: list) -> set[int]:
    """The ids of a COCO ``categories`` list (entries without one are ignored)."""
    return {int(c["id"]) for c in categories if isinstance(c, dict) and "id" in c}


def named_category_ids(categories: list, names: tuple[str, ...] | list[str], *, what: str) -> set[int]:
    """The ids of the categories called ``names`` — a name that is none of them is an error, not a silent
    no-op (a misspelt ``fill_holes: [astra]`` would otherwise train as if it were empty)."""
    by_name = {str(c.get("name")): int(c["id"]) for c in categories if isinstance(c, dict) and "id" in c}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise CellpipeError(f"{what} names {', '.join(map(repr, unknown))}, which is no category of the training data "
                            f"({', '.join(by_name) or 'none'})")  # fmt: skip
    return {by_name[n] for n in names}


def checked_image(im: dict, *, where: str, image_root: str | Path | None, check_files: bool = True) -> dict:
    """One ``images`` entry with int id/height/width and a ``path`` usable from the working directory."""
    try:
        iid, h, w, fname = int(im["id"]), int(im["height"]), int(im["width"]), str(im["file_name"])
    except (KeyError, TypeError, ValueError):
        raise CellpipeError(f"image entry {str(im)[:60]} lacks id/height/width/file_name", where=where) from None
    if im.get("path"):
        path = resolve(str(im["path"]), where)
    else:
        check_name(fname, what=f"image {iid}: file_name", where=where)
        path = Path(image_root) / fname if image_root is not None else resolve(fname, where)
    if check_files and not Path(path).is_file():
        raise CellpipeError(f"image {iid}: file {path} is missing", where=where)
    return {**im, "id": iid, "height": h, "width": w, "file_name": fname, "path": str(path)}


def checked_annotation(a: object, images: dict, cat_ids: set[int], *, where: str, single_class: bool) -> tuple[dict, dict]:
    """One annotation, validated against its image, with area and bbox from its mask; and that mask as compressed RLE."""
    aid = a.get("id") if isinstance(a, dict) else None
    label = f"annotation {aid}"
    if not isinstance(a, dict) or "image_id" not in a or "segmentation" not in a:
        raise CellpipeError(f"{label}: lacks image_id or segmentation", where=where)
    cid = a.get("category_id")
    if cid not in cat_ids:
        raise CellpipeError(f"{label}: category_id {cid!r} is not in 'categories'", where=where)
    im = images.get(a["image_id"])
    if im is None:
        raise CellpipeError(f"{label}: image_id {a['image_id']!r} is not in 'images'", where=where)
    h, w = im["height"], im["width"]
    seg = a["segmentation"]
    if isinstance(seg, list):
        if not seg:
            raise CellpipeError(f"{label}: empty polygon list", where=where)
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                raise CellpipeError(f"{label}: polygon with fewer than 3 points", where=where)
            xy = np.asarray(poly, dtype=float).reshape(-1, 2)
            if (
                not np.isfinite(xy).all()
                or xy[:, 0].min() < -1
                or xy[:, 1].min() < -1
                or xy[:, 0].max() > w + 1
                or xy[:, 1].max() > h + 1
            ):
                raise CellpipeError(f"{label}: polygon lies outside the {w}×{h} image", where=where)
        rle_ = segmentation_rle(seg, h, w)
    elif isinstance(seg, dict) and "counts" in seg:
        rle_ = segmentation_rle(seg, h, w)
        if list(rle_.get("size", [h, w])) != [h, w]:
            raise CellpipeError(f"{label}: RLE size {rle_['size']} differs from the image's {[h, w]}", where=where)
    else:
        raise CellpipeError(f"{label}: segmentation is neither polygons nor RLE", where=where)
    area = float(mask_util.area(rle_))
    if area <= 0:
        raise CellpipeError(f"{label}: mask has zero area", where=where)
    out = {
        **a,
        "category_id": 1 if single_class else int(cid),
        "area": area,
        "bbox": [float(v) for v in mask_util.toBbox(rle_)],
        "iscrowd": int(a.get("iscrowd", 0)),
    }
    return out, rle_


def with_paths_for(data: dict, out: str | Path) -> dict:
    """A normalised COCO dict whose image paths are stored relative to ``out`` (to write it there)."""
    return {**data, "images": [{**im, "path": stored(im["path"], out)} for im in data["images"]]}


def image_paths(data: dict, where: str | Path) -> dict[str, Path]:
    """``{image id: file}`` of a cellpipe COCO dict read from ``where`` (Kaggle ids where present)."""
    out = {}
    for im in data["images"]:
        stored_path = str(im["path"]) if "path" in im else check_name(str(im["file_name"]), what="file_name", where=str(where))
        out[image_id(im)] = resolve(stored_path, where)
    return out
