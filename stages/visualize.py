"""Stage ``visualize``: overlays of predictions on images, for ``dvc plots show``.

A fixed handful of val images per cell type (ground truth and predictions with
TP/FP/FN at IoU 0.5) and every test image (predictions only), as PNG panels.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cellpipe import overlay, thresholds
from cellpipe.atomic import atomic_path
from cellpipe.errors import CellpipeError
from cellpipe.images import read_grey
from cellpipe.tables import CELL_TYPES
from stages.common import log
from stages.evaluation import image_folder, load_predictions, load_truth, val_image_list


def run(
    val_predictions: Path = typer.Option(Path("data/predictions/val.parquet"), help="val detections"),
    test_predictions: Path = typer.Option(Path("data/predictions/test.parquet"), help="test detections"),
    val: Path = typer.Option(Path("data/coco/val.json"), help="COCO JSON of the val split"),
    truth: Path = typer.Option(Path("data/interim/annotations.parquet"), help="truth: annotations.parquet or a train.csv"),
    test_dir: Path = typer.Option(Path("data/raw/kaggle/test"), help="folder of test images"),
    thresholds_file: Path = typer.Option(Path("metrics/thresholds.json"), "--thresholds", help="per-class thresholds"),
    per_type: int = typer.Option(2, help="val images drawn per cell type"),
    out: Path = typer.Option(Path("plots/overlays"), help="folder of overlay PNGs"),
) -> None:
    if not thresholds_file.is_file():
        raise CellpipeError("thresholds file is missing", where=str(thresholds_file))
    th = json.loads(thresholds_file.read_text())
    images = val_image_list(val)
    chosen = images.sort_values("image_id").groupby("cell_type").head(per_type)
    paths = {str(im.get("kaggle_id", im["id"])): im["path"] for im in json.loads(val.read_text())["images"]}
    ids = chosen["image_id"].tolist()
    truths, types = load_truth(truth, ids)
    with atomic_path(out, directory=True) as tmp:
        for pred in load_predictions(val_predictions, ids):
            _, final = thresholds.apply_chosen(pred, th["score_threshold"], th.get("min_size", 0), CELL_TYPES[0])
            grey = read_grey(paths[pred.image_id])
            title = f"val {pred.image_id} ({types[pred.image_id]}): truth vs prediction"
            overlay.draw(grey, truths[pred.image_id], final, title=title).save(
                tmp / f"val_{types[pred.image_id]}_{pred.image_id}.png")
        test = image_folder(test_dir)
        for pred in load_predictions(test_predictions, [i for i, _ in test]):
            cls, final = thresholds.apply_chosen(pred, th["score_threshold"], th.get("min_size", 0), CELL_TYPES[0])
            grey = read_grey(dict(test)[pred.image_id])
            overlay.draw(grey, None, final, title=f"test {pred.image_id} (predicted {cls}): {final.shape[0]} cells").save(
                tmp / f"test_{pred.image_id}.png")
    log(f"overlays of {len(ids)} val and {len(test)} test images → {out}")
