"""Stage ``submit``: test detections → non-overlapping masks → ``submission.csv`` (validated)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cellpipe import submission, tables, thresholds
from cellpipe.atomic import atomic_path
from cellpipe.errors import CellpipeError
from cellpipe.tables import CELL_TYPES
from stages.common import log
from stages.evaluation import load_predictions


def write_submission(predictions: Path, ids: list[str], thresholds_file: Path, out: Path,
                     default_threshold: float | None = None) -> None:
    """Threshold, de-overlap, encode, validate and write a submission for ``ids``."""
    if thresholds_file.is_file():
        th = json.loads(thresholds_file.read_text())
    elif default_threshold is not None:
        th = {"score_threshold": {}, "min_size": 0}
        log(f"[yellow]{thresholds_file} not found: score threshold {default_threshold} for every class[/yellow]")
    else:
        raise CellpipeError("thresholds file is missing", where=str(thresholds_file))
    fallback = default_threshold if default_threshold is not None else 0.5
    final = []
    for pred in load_predictions(predictions, ids):
        cls = thresholds.image_class(pred.labels, pred.scores, CELL_TYPES[0])
        keep = pred.scores >= th["score_threshold"].get(cls, fallback)
        final.append((pred.image_id, pred.masks[keep], pred.scores[keep]))
    df = submission.build(final, ids, th.get("min_size", 0))
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
        summary = submission.validate(tmp, ids)
    log(f"submission: {summary['rows']} rows, {summary['cells']} cells in {summary['images']} images → {out}")


def run(
    predictions: Path = typer.Option(Path("data/predictions/test.parquet"), help="test detections (predict stage)"),
    sample_submission: Path = typer.Option(Path("data/raw/kaggle/sample_submission.csv"), help="ids and their order"),
    thresholds_file: Path = typer.Option(Path("metrics/thresholds.json"), "--thresholds", help="per-class thresholds"),
    out: Path = typer.Option(Path("data/submission/submission.csv"), help="the submission file"),
) -> None:
    write_submission(predictions, tables.read_sample_submission(sample_submission), thresholds_file, out)
