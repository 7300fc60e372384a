"""Kaggle ``train.csv`` → validated annotation and image tables (Parquet-ready).

One row per cell in ``annotations`` (image id, cell type, size, the Kaggle RLE, the
COCO RLE counts, bbox, area and the metadata columns) and one row per image in
``images``. Every row is validated; the first problem is raised as a
:class:`~cellpipe.errors.CellpipeError` naming the file and its line number.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from cellpipe import rle
from cellpipe.config import CELL_TYPES
from cellpipe.errors import CellpipeError
from cellpipe.images import list_images, read_grey
from cellpipe.paths import MAX_NAME_BYTES, check_name, stored

COLUMNS: tuple[str, ...] = (
    "id",
    "annotation",
    "width",
    "height",
    "cell_type",
    "plate_time",
    "sample_date",
    "sample_id",
    "elapsed_timedelta",
)
METADATA: tuple[str, ...] = ("plate_time", "sample_date", "sample_id", "elapsed_timedelta")


def _line(i: int) -> str:
    """CSV line number of data row ``i`` (the header is line 1)."""
    return f"line {i + 2}"


def read_train_csv(
    path: str | Path, *, duplicates: str = "error", duplicates_hint: str = "decode.duplicates: drop drops them"
) -> pd.DataFrame:
    """Read and validate the columns and values of a Kaggle ``train.csv``.

    Accepts a UTF-8 BOM and CRLF line endings (both occur in re-saved downloads).
    Rows repeating an earlier row's image and mask are an error (``duplicates_hint``
    tells the caller's way to drop them), or with ``duplicates="drop"`` dropped (they
    carry no information; the real download has 15 such rows) and reported in
    ``df.attrs["dropped_duplicates"]`` (line numbers). Image ids become file names,
    so an id that is not a plain name (``../x``, ``a/b``, ``.x``) is an error.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise CellpipeError("annotation file is missing", where=where)
    if path.stat().st_size == 0:
        raise CellpipeError("annotation file is empty", where=where)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", engine="c")
    except pd.errors.EmptyDataError:
        raise CellpipeError("annotation file is empty", where=where) from None
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error) as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
        raise CellpipeError(f"not a readable CSV ({msg})", where=where) from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CellpipeError(f"missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}", where=where)
    if len(df) == 0:
        raise CellpipeError("annotation file has a header but no rows", where=where)
    df = df[list(COLUMNS)].copy()
    for col in ("id", "annotation", "cell_type"):
        df[col] = df[col].str.strip()
    empty_id = np.flatnonzero(df["id"].to_numpy() == "")
    if len(empty_id):
        raise CellpipeError(f"{_line(int(empty_id[0]))}: empty image id", where=where)
    unsafe = np.flatnonzero(
        (df["id"].str.contains(r"[/\\\x00]|^\.", regex=True) | (df["id"].str.len() > MAX_NAME_BYTES // 4)).to_numpy()
    )
    for i in unsafe:  # long ids are checked by their UTF-8 length (a character may take 4 bytes)
        check_name(df["id"].iloc[int(i)], what=f"{_line(int(i))}: image id", where=where)
    for col in ("width", "height"):
        num = pd.to_numeric(df[col].str.strip(), errors="coerce")
        bad = np.flatnonzero(num.isna().to_numpy() | (num.fillna(0) % 1 != 0).to_numpy() | (num.fillna(0) <= 0).to_numpy())
        if len(bad):
            i = int(bad[0])
            raise CellpipeError(f"{_line(i)}: {col} {df[col].iloc[i]!r} is not a positive integer", where=where)
        df[col] = num.astype(np.int64)
    bad = np.flatnonzero(~df["cell_type"].isin(CELL_TYPES).to_numpy())
    if len(bad):
        i = int(bad[0])
        raise CellpipeError(
            f"{_line(i)}: unknown cell_type {df['cell_type'].iloc[i]!r}; expected one of {', '.join(CELL_TYPES)}",
            where=where,
        )
    dup = np.flatnonzero(df.duplicated(["id", "annotation"]).to_numpy())
    if len(dup) and duplicates == "drop":
        lines = [i + 2 for i in dup]
        df = df.drop(index=df.index[dup]).reset_index(drop=True)
        df.attrs["dropped_duplicates"] = lines
        dup = dup[:0]
    if len(dup):
        i = int(dup[0])
        same = (df["id"] == df["id"].iloc[i]) & (df["annotation"] == df["annotation"].iloc[i])
        first = int(np.flatnonzero(same.to_numpy())[0])
        raise CellpipeError(
            f"{_line(i)}: duplicate of {_line(first)} (same image {df['id'].iloc[i]} and mask; "
            f"{len(dup)} duplicate rows in all; {duplicates_hint})",
            where=where,
        )
    per_image = df.groupby("id", sort=False)[["width", "height", "cell_type"]].nunique()
    for col in ("width", "height", "cell_type"):
        bad_ids = per_image.index[per_image[col] > 1]
        if len(bad_ids):
            i = int(np.flatnonzero((df["id"] == bad_ids[0]).to_numpy())[1])
            raise CellpipeError(f"{_line(i)}: image {bad_ids[0]} has more than one {col}", where=where)
    return df


def build_tables(
    df: pd.DataFrame,
    image_dir: str | Path,
    *,
    where: str = "train.csv",
    check_images: bool = True,
    progress=None,
    holder: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validated ``train.csv`` rows → (annotations, images) tables.

    Parses every RLE at once (:func:`cellpipe.rle.parse_many`), derives area and bbox
    straight from the runs and COCO RLE per image in one vectorised pass. The images
    table's ``path`` is stored relative to ``holder`` (the file it will be written to,
    see :mod:`cellpipe.paths`), or as found when ``holder`` is None.
    """
    image_dir = Path(image_dir)
    on_disk = list_images(image_dir) if check_images else {}
    n_pix = (df["width"] * df["height"]).to_numpy()
    runs = rle.parse_many(df["annotation"].tolist(), n_pix, where=where, row_names=[_line(i) for i in range(len(df))])
    area = runs.areas()
    bbox = np.zeros((len(df), 4), dtype=np.int64)
    counts = np.empty(len(df), dtype=object)
    # keep the strings as given when already canonical; otherwise store them normalised
    kaggle = df["annotation"].to_numpy(dtype=object) if runs.canonical else np.array(rle.to_strings(runs), dtype=object)
    image_rows = []
    groups = df.groupby("id", sort=False).indices
    for k, (image_id, idx) in enumerate(groups.items()):
        h, w = int(df["height"].iloc[idx[0]]), int(df["width"].iloc[idx[0]])
        path = on_disk.get(image_id, image_dir / f"{image_id}.png")
        if check_images:
            read_grey(path, (h, w))
        sub = runs.take(idx)
        bbox[idx] = rle.boxes(sub, w)
        counts[idx] = [c["counts"] for c in rle.to_coco(sub, (h, w))]
        first = df.iloc[idx[0]]
        image_rows.append(
            {
                "image_id": image_id,
                "file_name": path.name,
                "height": h,
                "width": w,
                "path": stored(path, holder) if holder is not None else str(path),
                "cell_type": first["cell_type"],
                **{m: first[m] for m in METADATA},
                "n_cells": len(idx),
            }
        )
        if progress:
            progress(k + 1, len(groups))
    ann = pd.DataFrame(
        {
            "ann_id": np.arange(1, len(df) + 1, dtype=np.int64),
            "image_id": df["id"].to_numpy(),
            "cell_type": df["cell_type"].to_numpy(),
            "height": df["height"].to_numpy(),
            "width": df["width"].to_numpy(),
            "annotation": kaggle,
            "coco_counts": counts,
            "area": area,
            "bbox_x": bbox[:, 0],
            "bbox_y": bbox[:, 1],
            "bbox_w": bbox[:, 2],
            "bbox_h": bbox[:, 3],
            **{m: df[m].to_numpy() for m in METADATA},
        }
    )
    images = pd.DataFrame(image_rows)
    return ann, images


def check_pair(annotations: pd.DataFrame, images: pd.DataFrame, *, annotations_where: str, images_where: str) -> None:
    """The two tables ``decode`` writes must describe the same images and cells.

    Every annotation's image is in the images table, every image has its annotations,
    and each image's ``n_cells`` is its number of annotation rows; else a one-line error
    with the counts (a new annotations table beside an old images table, say, would
    otherwise train on the old table's images and drop the others' cells silently).
    """
    for col, table, where in (("image_id", annotations, annotations_where), ("image_id", images, images_where)):
        if col not in table.columns:
            raise CellpipeError(f"table lacks column {col} (not written by cellpipe decode)", where=where)
    counts = annotations["image_id"].value_counts()
    listed = set(images["image_id"])
    orphans = sorted(set(counts.index) - listed)
    if orphans:
        raise CellpipeError(
            f"{int(counts[orphans].sum())} cells of {len(orphans)} image(s) absent from {images_where} (e.g. {orphans[0]}; "
            f"it lists {len(listed)} images): the two tables come from different decode runs; rerun decode",
            where=annotations_where,
        )
    bare = sorted(listed - set(counts.index))
    if bare:
        raise CellpipeError(
            f"{len(bare)} image(s) without any cell in {annotations_where} (e.g. {bare[0]}): the two tables come from "
            "different decode runs; rerun decode",
            where=images_where,
        )
    if "n_cells" in images.columns:
        expected = images.set_index("image_id")["n_cells"]
        differ = expected.index[expected.to_numpy() != counts.reindex(expected.index).to_numpy()]
        if len(differ):
            i = differ[0]
            raise CellpipeError(
                f"image {i} has {int(expected[i])} cells here but {int(counts[i])} in {annotations_where} "
                f"({len(differ)} image(s) differ): the two tables come from different decode runs; rerun decode",
                where=images_where,
            )


def check_image_folder(image_dir: str | Path, images: pd.DataFrame, *, where: str) -> None:
    """Every annotated image has a file; every training file has annotations."""
    on_disk = set(list_images(image_dir))
    extra = sorted(on_disk - set(images["image_id"]))
    if extra:
        raise CellpipeError(f"image {extra[0]} has no annotations ({len(extra)} image(s) without rows)", where=where)


def read_sample_submission(path: str | Path) -> list[str]:
    """Test image ids in the order of ``sample_submission.csv``.

    An id listed twice is kept once, with a warning counting them (Kaggle's file lists
    each id once; a repeated id would otherwise silently become one row).
    """
    path = Path(path)
    if not path.is_file():
        raise CellpipeError("sample submission file is missing", where=str(path))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CellpipeError(
            f"not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 (it may be UTF-16 or Latin-1)", where=str(path)
        ) from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise CellpipeError(f"not a readable CSV ({exc.__class__.__name__})", where=str(path)) from None
    if "id" not in df.columns:
        raise CellpipeError("missing column id", where=str(path))
    listed = df["id"].str.strip()
    ids = list(dict.fromkeys(listed))
    if not ids:
        raise CellpipeError("sample submission has a header but no image ids", where=str(path))
    if len(ids) < len(listed):
        repeated = listed[listed.duplicated()]
        from cellpipe.console import log

        log(
            f"[yellow]warning: {path}: {len(repeated)} repeated id row(s) kept once ({repeated.nunique()} id(s), e.g. "
            f"{', '.join(repeated.unique()[:3])}); {len(ids)} distinct ids[/yellow]"
        )
    for k, i in enumerate(ids):
        check_name(i, what=f"image id #{k + 1}", where=str(path))
    return ids
