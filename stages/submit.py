"""Stage ``submit``: test detections → non-overlapping masks → ``submission.csv`` (validated)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from cellpipe import predictions, submission, tables, thresholds
from cellpipe.atomic import atomic_path
from cellpipe.config import CELL_TYPES
from cellpipe.console import log
from cellpipe.errors import CellpipeError
from cellpipe.evaluation import read_thresholds


def write_submission(
    pred: predictions.Predictions,
    ids: list[str],
    thresholds_file: Path,
    out: Path,
    *,
    default_threshold: float | None = None,
    allow_missing: bool = False,
    ids_where: str = "sample submission",
    shown_as: Path | None = None,
) -> None:
    """Threshold, de-overlap, encode, validate and write a submission for ``ids``.

    Every id must have been predicted; with ``allow_missing`` the others get an empty
    row (counted in a warning). ``shown_as``: the path to name in the log when ``out`` is
    a temporary that a caller commits with its other outputs. Predicted images that ``ids`` lacks are left out, with
    a warning.
    """
    chosen, post = read_thresholds(thresholds_file, default_threshold)
    fallback = default_threshold if default_threshold is not None else 0.5
    missing = [i for i in ids if i not in pred.sizes]
    if missing and not allow_missing:
        raise CellpipeError(
            f"{len(missing)} of its {len(ids)} image(s) were not predicted (e.g. "
            f"{', '.join(missing[:3])}; predictions: {pred.where}); is the test folder complete? "
            f"--allow-missing writes empty rows for them",
            where=ids_where,
        )
    if missing:
        log(
            f"[yellow]warning: {len(missing)} image(s) were not predicted and get an empty row "
            f"(e.g. {', '.join(missing[:3])})[/yellow]"
        )
    extra = [i for i in pred.sizes if i not in set(ids)]
    if extra:
        log(
            f"[yellow]warning: {len(extra)} predicted image(s) are not in {ids_where} and are left out "
            f"(e.g. {', '.join(extra[:3])})[/yellow]"
        )
    final = []
    for p in pred.select([i for i in ids if i in pred.sizes]):
        _, cells = thresholds.apply_chosen(p, chosen, post, CELL_TYPES[0], fallback)
        final.append((p.image_id, cells, np.arange(cells.shape[0], 0, -1, dtype=np.float64)))  # already disjoint
    final += [(i, None, None) for i in missing]
    df = submission.build(final, ids)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
        summary = submission.validate(tmp, ids, pred.sizes)
    log(f"submission: {summary['rows']} rows, {summary['cells']} cells in {summary['images']} images → {shown_as or out}")


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
    write_submission(
        predictions.read(predictions_file),
        tables.read_sample_submission(sample),
        thresholds_file,
        out,
        allow_missing=allow_missing,
        ids_where=str(sample),
    )
