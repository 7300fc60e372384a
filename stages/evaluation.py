"""Reading truths and predictions for the ``thresholds`` and ``score`` stages."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import scipy.sparse as sp

from cellpipe import predictions, rle, tables
from cellpipe.errors import CellpipeError
from cellpipe.thresholds import ImagePredictions
from stages.common import read_parquet

SHAPE = (520, 704)


def image_folder(folder: Path) -> list[tuple[str, Path]]:
    """(id, path) of every PNG/TIFF image of a folder, sorted by name."""
    if not folder.is_dir():
        raise CellpipeError("image folder is missing", where=str(folder))
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
    if not files:
        raise CellpipeError("no .png/.tif images in the folder", where=str(folder))
    return [(p.stem, p) for p in files]


def val_image_list(val: Path) -> pd.DataFrame:
    """image_id / cell_type / height / width of the images of a COCO JSON."""
    if not val.is_file():
        raise CellpipeError("COCO file is missing", where=str(val))
    data = json.loads(val.read_text())
    return pd.DataFrame([{"image_id": str(im.get("kaggle_id", im["id"])), "cell_type": im.get("cell_type", "cell"),
                          "height": im["height"], "width": im["width"]} for im in data["images"]])


def truth_ids(path: Path) -> list[str]:
    """Image ids of a truth file (annotations.parquet or train.csv), in file order."""
    if path.suffix == ".parquet":
        return list(dict.fromkeys(read_parquet(path)["image_id"]))
    return list(dict.fromkeys(tables.read_train_csv(path)["id"]))


def load_truth(path: Path, image_ids: list[str]) -> tuple[dict[str, sp.csr_matrix], dict[str, str]]:
    """True instances per image from ``annotations.parquet`` or a ``train.csv``."""
    if path.suffix == ".parquet":
        df = read_parquet(path)
        df = df.rename(columns={"image_id": "id"})
    else:
        df = tables.read_train_csv(path)
    missing = sorted(set(image_ids) - set(df["id"]))
    if missing:
        raise CellpipeError(f"no truth for image {missing[0]} ({len(missing)} missing)", where=str(path))
    df = df[df["id"].isin(set(image_ids))]
    truths, types = {}, {}
    for image_id, g in df.groupby("id", sort=False):
        h, w = int(g["height"].iloc[0]), int(g["width"].iloc[0])
        runs = rle.parse_many(g["annotation"].tolist(), h * w, where=str(path))
        truths[image_id] = rle.to_csr(runs, h * w)
        types[image_id] = str(g["cell_type"].iloc[0])
    return truths, types


def load_predictions(path: Path, image_ids: list[str], shape=SHAPE) -> list[ImagePredictions]:
    return predictions.from_frame(read_parquet(path), image_ids, shape, where=str(path))
