"""Submissions: scored instances → non-overlapping masks → Kaggle RLE rows, checked, written.

Predicted masks of one image must not overlap. Each contested pixel goes to the
highest-scoring instance; instances left smaller than ``min_size`` pixels are dropped. An image
without any cell keeps one row with an empty ``predicted``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellpipe import rle, thresholds
from cellpipe.atomic import atomic_path
from cellpipe.config import CELL_TYPES
from cellpipe.console import log
from cellpipe.errors import CellpipeError
from cellpipe.postprocess import resolve_overlaps
from cellpipe.prediction_table import Predictions
from cellpipe.scoring import check_scores, read_thresholds


def image_rows(image_id: str, instances: sp.csr_matrix) -> list[tuple[str, str]]:
    """Submission rows of one image (one empty row when it has no cell)."""
    strings = rle.to_strings(rle.from_csr(instances))
    return [(image_id, s) for s in strings] or [(image_id, "")]


def build(
    predictions: Iterable[tuple[str, sp.csr_matrix | None, np.ndarray | None]], order: Sequence[str], min_size: int = 0
) -> pd.DataFrame:
    """Submission table in ``order`` (the sample submission's ids) from scored instances.

    ``None`` instances mark an image deliberately left without prediction (one empty row).
    """
    by_id = {}
    for image_id, inst, scores in predictions:
        if inst is None:
            by_id[image_id] = [(image_id, "")]
            continue
        clean, _ = resolve_overlaps(inst, scores, min_size)
        by_id[image_id] = image_rows(image_id, clean)
    missing = [i for i in order if i not in by_id]
    if missing:
        raise CellpipeError(f"no predictions for test image {missing[0]} ({len(missing)} missing)")
    rows = [r for image_id in order for r in by_id[image_id]]
    return pd.DataFrame(rows, columns=["id", "predicted"])


def validate(path: str | Path, expected_ids: Sequence[str], sizes: Mapping[str, tuple[int, int]]) -> dict:
    """Check a submission file: header, known ids, every image present, valid RLE, no overlaps.

    ``sizes`` gives each image's (height, width): RLE runs are checked against the
    image they belong to. Returns a small summary; raises :class:`CellpipeError`
    naming the line on failure.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise CellpipeError("submission file is missing", where=where)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CellpipeError(f"not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8", where=where) from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise CellpipeError(f"not a readable CSV ({exc.__class__.__name__})", where=where) from None
    if list(df.columns) != ["id", "predicted"]:
        raise CellpipeError(f"header must be 'id,predicted', got {','.join(df.columns)!r}", where=where)
    expected = set(expected_ids)
    unknown = np.flatnonzero(~df["id"].isin(expected).to_numpy())
    if len(unknown):
        i = int(unknown[0])
        raise CellpipeError(f"line {i + 2}: id {df['id'].iloc[i]!r} is not a test image", where=where)
    absent = [i for i in expected_ids if i not in set(df["id"])]
    if absent:
        raise CellpipeError(f"image {absent[0]} has no row ({len(absent)} missing)", where=where)
    cells = 0
    for image_id, idx in df.groupby("id", sort=False).indices.items():
        strings = df["predicted"].iloc[idx].tolist()
        nonempty = [s for s in strings if s.strip()]
        if len(nonempty) < len(strings) and nonempty:
            raise CellpipeError(f"image {image_id}: an empty row beside predicted cells", where=where)
        if not nonempty:
            continue
        if image_id not in sizes:
            raise CellpipeError(
                f"image {image_id}: its size is unknown (no image file), so its masks cannot be checked", where=where
            )
        n_pix = sizes[image_id][0] * sizes[image_id][1]
        runs = rle.parse_many(
            nonempty, n_pix, where=where, row_names=[f"line {int(idx[k]) + 2}" for k, s in enumerate(strings) if s.strip()]
        )
        covered = rle.to_csr(runs, n_pix).sum(axis=0).A1
        if (covered > 1).any():
            raise CellpipeError(f"image {image_id}: predicted masks overlap ({int((covered > 1).sum())} pixels)", where=where)
        cells += runs.n
    return {"rows": int(len(df)), "images": int(df["id"].nunique()), "cells": cells}


def write(
    pred: Predictions,
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
    choice = read_thresholds(thresholds_file, default_threshold)
    check_scores(choice, thresholds_file, pred)
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
        _, cells = thresholds.apply_chosen(p, choice, CELL_TYPES[0])
        final.append((p.image_id, cells, np.arange(cells.shape[0], 0, -1, dtype=np.float64)))  # already disjoint
    final += [(i, None, None) for i in missing]
    df = build(final, ids)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
        summary = validate(tmp, ids, pred.sizes)
    log(f"submission: {summary['rows']} rows, {summary['cells']} cells in {summary['images']} images → {shown_as or out}")
