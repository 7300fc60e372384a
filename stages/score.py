"""Stage ``score``: predictions scored with the competition metric → small metrics JSON.

The DVC stage scores the out-of-fold predictions with cross-fitted thresholds (the
headline: every image scored by a model and thresholds that never saw it), the same with
the final thresholds (chosen on those very images: labelled in-sample) and at a fixed
0.5, and the lockbox with the fold ensemble and with fold 0's model alone. Also scores
any predictions table against any ``train.csv``-format truth.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import pandas as pd
import typer
from rich.table import Table

from cellpipe import metric, thresholds
from cellpipe.atomic import Outputs
from cellpipe.config import CELL_TYPES
from cellpipe.console import console, log
from cellpipe.errors import CellpipeError
from cellpipe.io import write_csv, write_json
from cellpipe.scoring import (
    read_fold_thresholds,
    read_thresholds,
    scored_pairs,
    thresholds_images,
    truth_ids,
    val_image_list,
)


class Duplicates(StrEnum):
    error = "error"
    drop = "drop"


def run(
    predictions: Path = typer.Option(Path("data/predictions/oof.parquet"), help="detections to score"),
    val: Path = typer.Option(Path("data/coco/folds.json"), help="COCO JSON listing the images to score"),
    truth: Path = typer.Option(Path("data/interim/annotations.parquet"), help="truth: annotations.parquet or a train.csv"),
    thresholds_file: Path = typer.Option(
        Path("metrics/thresholds.json"), "--thresholds", help="per-class score thresholds (thresholds stage)"
    ),
    cross_fitted: bool = typer.Option(
        False, "--cross-fitted", help="each image gets the thresholds of its fold (chosen on the other folds: thresholds stage)"
    ),
    fixed_threshold: float | None = typer.Option(None, min=0.0, max=1.0, help="one score threshold for every class instead"),
    out: Path = typer.Option(Path("metrics/oof.json"), help="metrics JSON (DVC metrics)"),
    per_image_out: Path | None = typer.Option(None, help="score per image and threshold (CSV)"),
    per_iou_out: Path | None = typer.Option(None, help="score per IoU threshold, per class (CSV, plots)"),
    per_fold_out: Path | None = typer.Option(None, help="score per fold, per class (CSV, plots; images of --val with a fold)"),
    all_truth_images: bool = typer.Option(
        False, "--all-truth-images", help="score every image of the truth file instead of the images of --val"
    ),
    duplicates: Duplicates = typer.Option(
        Duplicates.error,
        help="rows of a train.csv truth repeating an earlier row's image and mask (the real train.csv has 15): error | drop",
    ),
) -> None:
    chosen, post = read_thresholds(thresholds_file)
    label = f"chosen on {thresholds_file}"
    if fixed_threshold is not None:
        chosen, label = dict.fromkeys(CELL_TYPES, fixed_threshold), f"fixed {fixed_threshold} for every class"
    listed = None if all_truth_images else val_image_list(val)
    ids = truth_ids(truth, duplicates.value) if listed is None else listed["image_id"].tolist()
    if not ids:  # an empty lockbox (cv.lockbox_fraction: 0): nothing to score, said so
        with Outputs() as outputs:
            write_json({"map_iou": None, "images": 0, "thresholds": label, "note": f"{val} lists no images"}, outputs(out))
            for path in (per_image_out, per_iou_out, per_fold_out):
                if path is not None:
                    write_csv(pd.DataFrame(columns=["iou_threshold", "all", *CELL_TYPES]), outputs(path))
        log(f"[yellow]{val} lists no images: nothing scored[/yellow] → {out}")
        return
    pairs, alignment = scored_pairs(
        truth, ids, predictions, truth_where=truth if all_truth_images else val, duplicates=duplicates.value
    )
    fold_of = {} if listed is None else dict(zip(listed["image_id"], listed["fold"]))
    in_sample = len(set(alignment.scored) & thresholds_images(thresholds_file)) if fixed_threshold is None else 0
    if in_sample and not cross_fitted:
        label = f"in-sample: thresholds chosen on the predictions of {in_sample} of these images"
    elif fixed_threshold is None and not cross_fitted:
        label = f"out-of-sample: thresholds chosen on other images ({thresholds_file})"
    per_fold_chosen: dict[int, dict[str, float]] = {}
    if cross_fitted:
        if listed is None or fixed_threshold is not None:
            raise CellpipeError("--cross-fitted needs --val with folds, and no --fixed-threshold")
        per_fold_chosen, honest = read_fold_thresholds(thresholds_file)
        label = (
            "cross-fitted: each fold's images with thresholds chosen on the other folds"
            if honest
            else "in-sample: K=1, the fold's thresholds were chosen on these images"
        )
        in_sample = 0 if honest else len(alignment.scored)
    rows, voted_right = [], 0
    for pred, true, cell_type in pairs:
        use = chosen
        if cross_fitted:
            fold = fold_of[pred.image_id]
            if fold not in per_fold_chosen:
                raise CellpipeError(f"no thresholds for fold {fold} (image {pred.image_id})", where=str(thresholds_file))
            use = per_fold_chosen[fold]
        voted, final = thresholds.apply_chosen(pred, use, post, CELL_TYPES[0])
        voted_right += voted == cell_type
        rows.append((pred.image_id, cell_type, true, final))
    report = metric.evaluate(rows)
    # the voted cell type picks each image's threshold; on test images it is all there is
    summary = {
        **report.to_dict(),
        "thresholds": label,
        "thresholds_in_sample": bool(in_sample),
        "cell_type_vote_accuracy": round(voted_right / len(rows), 6),
        **alignment.counts(),
    }
    per_fold_table = None
    if fold_of and min(fold_of.values()) >= 0:  # folds, not the lockbox
        by_fold = report.per_image.assign(fold=report.per_image["image_id"].map(fold_of))
        summary["per_fold"] = {str(k): round(float(v), 6) for k, v in by_fold.groupby("fold")["score"].mean().items()}
        wide = by_fold.pivot_table(index="fold", columns="cell_type", values="score", aggfunc="mean")
        per_fold_table = pd.DataFrame({"fold": wide.index.astype(int), "all": by_fold.groupby("fold")["score"].mean().to_numpy()})
        for cls in CELL_TYPES:
            per_fold_table[cls] = wide[cls].to_numpy() if cls in wide.columns else float("nan")
    per_class = report.per_threshold(by_class=True).T
    per_iou = pd.DataFrame(
        {"iou_threshold": [float(c[1:]) for c in per_class.index], "all": report.per_threshold().iloc[0].to_numpy()}
    )
    for cls in CELL_TYPES:
        per_iou[cls] = per_class[cls].to_numpy() if cls in per_class.columns else float("nan")
    with Outputs() as outputs:  # every file of this report is replaced together or not at all
        write_json(summary, outputs(out))
        if per_fold_out is not None and per_fold_table is not None:
            write_csv(per_fold_table, outputs(per_fold_out))
        if per_image_out is not None:
            write_csv(report.per_image, outputs(per_image_out))
        if per_iou_out is not None:
            write_csv(per_iou, outputs(per_iou_out))
    table = Table(title=f"MAP-IoU {summary['map_iou']:.4f} over {summary['images']} images ({label})")
    table.add_column("class")
    for t in metric.THRESHOLDS[::2]:
        table.add_column(f"{t:.2f}")
    table.add_column("mean")
    per = report.per_threshold(by_class=True)
    for cls, row in per.iterrows():
        table.add_row(str(cls), *[f"{row[f't{t:.2f}']:.3f}" for t in metric.THRESHOLDS[::2]], f"{summary['per_class'][cls]:.3f}")
    console.print(table)
    log(f"→ {out}")
