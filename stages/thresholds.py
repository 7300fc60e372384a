"""Stage ``thresholds``: per-class score thresholds that maximise val MAP-IoU."""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import thresholds
from cellpipe.config import CELL_TYPES, PARAMS_HELP, load
from cellpipe.console import log
from cellpipe.evaluation import scored_pairs, val_image_list
from cellpipe.io import write_csv, write_json


def run(
    predictions: Path = typer.Option(Path("data/predictions/val.parquet"), help="val detections (predict stage)"),
    val: Path = typer.Option(Path("data/coco/val.json"), help="COCO JSON of the val split (its images)"),
    truth: Path = typer.Option(Path("data/interim/annotations.parquet"), help="truth: annotations.parquet or a train.csv"),
    out: Path = typer.Option(Path("metrics/thresholds.json"), help="chosen thresholds"),
    sweep_out: Path = typer.Option(Path("metrics/threshold_sweep.csv"), help="val score per threshold, a column per class"),
    counts_out: Path = typer.Option(Path("metrics/threshold_counts.csv"), help="TP/FP/FN at IoU 0.5 per threshold"),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    params_ = load(params, "thresholds", "postprocess")
    p, post = params_.thresholds, params_.postprocess
    pairs, _ = scored_pairs(truth, val_image_list(val)["image_id"].tolist(), predictions, truth_where=val)
    preds = [pred for pred, _, _ in pairs]
    truths = {pred.image_id: t for pred, t, _ in pairs}
    table = thresholds.sweep(preds, truths, p.grid, post, default_class=CELL_TYPES[0])
    chosen = thresholds.choose(table, list(CELL_TYPES), p.fallback)
    wide = table.pivot(index="threshold", columns="cell_type", values="score").reset_index()
    write_csv(wide.reindex(columns=["threshold", *CELL_TYPES]), sweep_out)
    write_csv(table.groupby("threshold", as_index=False)[["tp", "fp", "fn"]].sum(), counts_out)
    write_json({"score_threshold": chosen, "postprocess": post.model_dump()}, out)
    log(f"thresholds {chosen} → {out}")
