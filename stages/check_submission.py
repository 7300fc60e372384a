"""``cellpipe check-submission``: validate a submission file by hand."""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import submission, tables
from cellpipe.console import log
from cellpipe.images import header_size, list_images


def check(
    file: Path = typer.Argument(..., help="submission CSV (id,predicted)"),
    sample_submission: Path = typer.Option(
        Path("data/raw/kaggle/sample_submission.csv"), help="the ids every submission must cover"
    ),
    test_dir: Path | None = typer.Option(
        None, help="the test images (their sizes bound the masks) [default: test/ beside the sample submission]"
    ),
) -> None:
    ids = tables.read_sample_submission(sample_submission)
    folder = test_dir or sample_submission.parent / "test"
    sizes = {i: header_size(p) for i, p in list_images(folder).items()}
    summary = submission.validate(file, ids, sizes)
    log(f"{file} is valid: {summary['rows']} rows, {summary['images']} images, {summary['cells']} cells")
