"""``cellpipe check-submission``: validate a submission file by hand."""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import submission, tables
from stages.common import log


def check(
    file: Path = typer.Argument(..., help="submission CSV (id,predicted)"),
    sample_submission: Path = typer.Option(Path("data/raw/kaggle/sample_submission.csv"),
                                           help="the ids every submission must cover"),
) -> None:
    summary = submission.validate(file, tables.read_sample_submission(sample_submission))
    log(f"{file} is valid: {summary['rows']} rows, {summary['images']} images, {summary['cells']} cells")
