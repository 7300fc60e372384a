"""Stage ``score``: val predictions scored with the competition metric → ``metrics/val.json``.

Also scores any predictions table against any ``train.csv``-format truth.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import pandas as pd
import typer
from rich.table import Table

from cellpipe import metric, thresholds
from cellpipe.config import CELL_TYPES
from cellpipe.console import console, log
from cellpipe.evaluation import read_thresholds, scored_pairs, truth_ids, val_image_list
from cellpipe.io import write_csv, write_json


class Duplicates(StrEnum):
    error = "error"
    drop = "drop"


def run(
    predictions: Path = typer.Option(Path("data/predictions/val.parquet"), help="detections to score"),
    val: Path = typer.Option(Path("data/coco/val.json"), help="COCO JSON listing the images to score"),
    truth: Path = typer.Option(Path("data/interim/annotations.parquet"), help="truth: annotations.parquet or a train.csv"),
    thresholds_file: Path = typer.Option(
        Path("metrics/thresholds.json"), "--thresholds", help="per-class score thresholds (thresholds stage)"
    ),
    out: Path = typer.Option(Path("metrics/val.json"), help="metrics JSON (DVC metrics)"),
    per_image_out: Path = typer.Option(Path("metrics/val_per_image.csv"), help="score per image and threshold"),
    per_iou_out: Path = typer.Option(Path("metrics/val_per_iou.csv"), help="score per IoU threshold, per class (plots)"),
    all_truth_images: bool = typer.Option(
        False, "--all-truth-images", help="score every image of the truth file instead of the images of --val"
    ),
    duplicates: Duplicates = typer.Option(
        Duplicates.error,
        help="rows of a train.csv truth repeating an earlier row's image and mask (the real train.csv has 15): error | drop",
    ),
) -> None:
    chosen, post = read_thresholds(thresholds_file)
    ids = truth_ids(truth, duplicates.value) if all_truth_images else val_image_list(val)["image_id"].tolist()
    pairs, alignment = scored_pairs(
        truth, ids, predictions, truth_where=truth if all_truth_images else val, duplicates=duplicates.value
    )
    rows, voted_right = [], 0
    for pred, true, cell_type in pairs:
        voted, final = thresholds.apply_chosen(pred, chosen, post, CELL_TYPES[0])
        voted_right += voted == cell_type
        rows.append((pred.image_id, cell_type, true, final))
    report = metric.evaluate(rows)
    # the voted cell type picks each image's threshold; on test images it is all there is
    summary = {**report.to_dict(), "cell_type_vote_accuracy": round(voted_right / len(rows), 6), **alignment.counts()}
    write_json(summary, out)
    write_csv(report.per_image, per_image_out)
    per_class = report.per_threshold(by_class=True).T
    per_iou = pd.DataFrame(
        {"iou_threshold": [float(c[1:]) for c in per_class.index], "all": report.per_threshold().iloc[0].to_numpy()}
    )
    for cls in CELL_TYPES:
        per_iou[cls] = per_class[cls].to_numpy() if cls in per_class.columns else float("nan")
    write_csv(per_iou, per_iou_out)
    table = Table(title=f"val MAP-IoU {summary['map_iou']:.4f} over {summary['images']} images")
    table.add_column("class")
    for t in metric.THRESHOLDS[::2]:
        table.add_column(f"{t:.2f}")
    table.add_column("mean")
    per = report.per_threshold(by_class=True)
    for cls, row in per.iterrows():
        table.add_row(str(cls), *[f"{row[f't{t:.2f}']:.3f}" for t in metric.THRESHOLDS[::2]], f"{summary['per_class'][cls]:.3f}")
    console.print(table)
    log(f"→ {out}")
