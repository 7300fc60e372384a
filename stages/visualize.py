"""Stage ``visualize``: overlays of predictions on images, for ``dvc plots show``.

A fixed handful of val images per cell type (ground truth and predictions with
TP/FP/FN at IoU 0.5) and every test image (predictions only), as PNG panels, each
drawn at the threshold of its voted class (the per-class thresholds of the
``thresholds`` stage); each PNG records its cell count and voted class as text chunks.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import coco, overlay, prediction_table, thresholds
from cellpipe.atomic import atomic_path
from cellpipe.config import CELL_TYPES
from cellpipe.console import log
from cellpipe.images import list_images, read_grey
from cellpipe.scoring import check_scores, read_thresholds, scored_pairs, val_image_list


def run(
    val_predictions: Path = typer.Option(Path("data/predictions/oof.parquet"), help="out-of-fold (val) detections"),
    test_predictions: Path = typer.Option(Path("data/predictions/test.parquet"), help="test detections"),
    val: Path = typer.Option(Path("data/coco/folds.json"), help="COCO JSON of the predicted images (the folds)"),
    truth: Path = typer.Option(Path("data/interim/annotations.parquet"), help="truth: annotations.parquet or a train.csv"),
    kaggle_dir: Path = typer.Option(Path("data/raw/kaggle"), help="Kaggle-layout folder whose test/ images to draw"),
    test_dir: Path | None = typer.Option(None, help="folder of test images instead [default: KAGGLE_DIR/test]"),
    thresholds_file: Path = typer.Option(Path("metrics/thresholds.json"), "--thresholds", help="per-class thresholds"),
    per_type: int = typer.Option(2, help="val images drawn per cell type"),
    out: Path = typer.Option(Path("plots/overlays"), help="folder of overlay PNGs"),
) -> None:
    choice = read_thresholds(thresholds_file)
    images = val_image_list(val)
    drawn_val = images.sort_values("image_id").groupby("cell_type").head(per_type)
    paths = coco.image_paths(coco.load_json(val), val)
    val_pred, test_pred = prediction_table.read(val_predictions), prediction_table.read(test_predictions)
    for table in (val_pred, test_pred):
        check_scores(choice, thresholds_file, table)
    pairs, _ = scored_pairs(truth, drawn_val["image_id"].tolist(), val_pred, truth_where=val, chosen=True)
    test = list_images(test_dir or kaggle_dir / "test")
    drawn = [i for i in test if i in test_pred.sizes]
    if len(drawn) < len(test):
        log(f"[yellow]warning: {len(test) - len(drawn)} test image(s) were not predicted and are not drawn[/yellow]")
    with atomic_path(out, directory=True) as tmp:
        for pred, true, cell_type in pairs:
            voted, final = thresholds.apply_chosen(pred, choice, CELL_TYPES[0])
            title = f"val {pred.image_id} ({cell_type}, voted {voted}): truth vs prediction"
            panel = overlay.draw(read_grey(paths[pred.image_id]), true, final, title=title)
            overlay.save(panel, tmp / f"val_{cell_type}_{pred.image_id}.png", cells=final.shape[0], voted=voted)
        for pred in test_pred.select(drawn):
            cls, final = thresholds.apply_chosen(pred, choice, CELL_TYPES[0])
            title = f"test {pred.image_id} (predicted {cls}): {final.shape[0]} cells"
            panel = overlay.draw(read_grey(test[pred.image_id]), None, final, title=title)
            overlay.save(panel, tmp / f"test_{pred.image_id}.png", cells=final.shape[0], voted=cls)
    log(f"overlays of {len(pairs)} val and {len(drawn)} test images → {out}")
