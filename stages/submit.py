"""Stage ``submit``: test detections → non-overlapping masks → ``submission.csv`` (validated)."""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import prediction_table, submission, tables


def run(
    predictions_file: Path = typer.Option(
        Path("data/predictions/test.parquet"), "--predictions", help="test detections (predict stage)"
    ),
    kaggle_dir: Path = typer.Option(
        Path("data/raw/kaggle"), help="Kaggle-layout folder: its sample_submission.csv gives the ids and their order"
    ),
    sample_submission: Path | None = typer.Option(None, help="ids and their order [default: KAGGLE_DIR/sample_submission.csv]"),
    thresholds_file: Path = typer.Option(Path("metrics/thresholds.json"), "--thresholds", help="per-class thresholds"),
    out: Path = typer.Option(Path("data/submission/submission.csv"), help="the submission file"),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="write empty rows for sample-submission ids that were not predicted"
    ),
) -> None:
    sample = sample_submission or kaggle_dir / "sample_submission.csv"
    submission.write(
        prediction_table.read(predictions_file),
        tables.read_sample_submission(sample),
        thresholds_file,
        out,
        allow_missing=allow_missing,
        ids_where=str(sample),
    )
