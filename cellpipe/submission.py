"""Submission encoding: scored instances → non-overlapping masks → Kaggle RLE rows.

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

from cellpipe import rle
from cellpipe.errors import CellpipeError


def resolve_overlaps(
    instances: sp.csr_matrix, scores: np.ndarray, min_size: int = 0, max_lost: float = 1.0
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Give each pixel to the highest-scoring kept instance; drop instances under ``min_size``.

    Instances are taken in descending score; each keeps the pixels no kept instance
    took before it, and is dropped (leaving its pixels free) when fewer than
    ``min_size`` remain or when it lost more than the fraction ``max_lost`` of its
    pixels. One pass over sparse pixel lists with a shared "taken" array: no
    full-size mask per instance. Returns the non-overlapping instances (ordered by
    descending score) and the index of each kept instance in the input.
    """
    m = sp.csr_matrix(instances)
    n = m.shape[0]
    if n == 0:
        return m, np.zeros(0, dtype=np.int64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    taken = np.zeros(m.shape[1], dtype=bool)
    indptr, indices = m.indptr, m.indices
    kept, pieces = [], []
    floor = max(min_size, 1)
    for k in order:
        pix = indices[indptr[k] : indptr[k + 1]]
        free = pix[~taken[pix]]
        if len(free) >= floor and len(free) >= (1.0 - max_lost) * len(pix):
            taken[free] = True
            kept.append(k)
            pieces.append(np.sort(free))
    counts = np.array([len(p) for p in pieces], dtype=np.int64)
    cols = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    out = sp.csr_matrix(
        (np.ones(len(cols), np.float32), cols, np.concatenate([[0], np.cumsum(counts)])), shape=(len(kept), m.shape[1])
    )
    return out, np.asarray(kept, dtype=np.int64)


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
