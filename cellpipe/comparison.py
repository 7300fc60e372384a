"""Two runs scored on the same images, compared image by image: is the difference more than the images' noise?

The competition score of a set is the mean of its images' scores, so two runs scored on the
same images differ by the mean of their per-image differences. Resampling the images with
replacement (a paired bootstrap) gives an interval for that mean: how much the difference
would move on another draw of images like these. A lever whose interval holds 0 has not
been shown to help on these images, however its aggregate reads.

The interval covers the images' noise only. A second training seed changes the model
itself (another run's checkpoint, thresholds and type votes), which no resampling of one
run's scores can show; read both before calling a lever a gain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellpipe.errors import CellpipeError

COLUMNS: tuple[str, ...] = ("image_id", "cell_type", "score")
ALL = "all"
# resampled image indices held at once (int64): bounded memory whatever the image count or resample count
_CHUNK_CELLS = 1 << 20


@dataclass(frozen=True)
class Row:
    """The comparison on one group of images (``all``, or one cell type)."""

    group: str
    images: int
    score_a: float
    score_b: float
    difference: float  # b − a
    low: float  # the interval of the difference
    high: float
    b_better: int  # images where b scores higher
    a_better: int

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def read_per_image(path: str | Path) -> pd.DataFrame:
    """A ``score`` stage per-image table (``metrics/*_per_image.csv``): its image ids, cell types and scores, checked."""
    where = str(path)
    try:
        table = pd.read_csv(path, usecols=lambda c: c in COLUMNS, dtype={"image_id": str, "cell_type": str})
    except FileNotFoundError:
        raise CellpipeError("no such file (a score stage per-image table, e.g. metrics/oof_per_image.csv)", where=where) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CellpipeError(f"not a per-image score table: {reason}", where=where) from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        wanted = ", ".join(COLUMNS)
        raise CellpipeError(f"missing column(s) {', '.join(missing)} (a per-image score table has {wanted})", where=where)
    return check(table[list(COLUMNS)], where)


def check(table: pd.DataFrame, where: str) -> pd.DataFrame:
    """``table`` with numeric scores in [0, 1], one row per image, no empty id or type; else the first bad row, named."""
    scores = pd.to_numeric(table["score"], errors="coerce")
    bad = table.index[scores.isna() | (scores < 0) | (scores > 1) | table["image_id"].isna() | table["cell_type"].isna()]
    if len(bad):
        row = table.loc[bad[0]]
        what = f"line {bad[0] + 2}: image {row['image_id']!r}, type {row['cell_type']!r}, score {row['score']!r}"
        raise CellpipeError(f"{what}: needs an id, a type and a score in [0, 1]", where=where)
    repeated = table["image_id"].duplicated()
    if repeated.any():
        first = int(np.flatnonzero(repeated.to_numpy())[0])
        raise CellpipeError(f"line {first + 2}: image {table['image_id'].iloc[first]!r} appears twice", where=where)
    return table.assign(score=scores.astype(float)).reset_index(drop=True)


def paired(a: pd.DataFrame, b: pd.DataFrame, *, resamples: int = 10_000, seed: int = 0, confidence: float = 0.95,
           where_a: str = "a", where_b: str = "b") -> list[Row]:  # fmt: skip
    """``b`` against ``a`` on the same images: all of them, then each cell type, with a paired bootstrap interval.

    Both tables must hold the same images with the same cell types: scores of different
    images are not a comparison, so a mismatch is an error with its counts, never a
    silent intersection. Each group is resampled within itself, ``resamples`` times.
    """
    if resamples < 1:
        raise CellpipeError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise CellpipeError(f"confidence must be in (0, 1), got {confidence}")
    left, right = set(a["image_id"]), set(b["image_id"])
    if not left and not right:
        raise CellpipeError(f"no images to compare: {where_a} and {where_b} are both empty")
    if left != right:
        only_a, only_b = sorted(left - right), sorted(right - left)
        raise CellpipeError(
            f"the two tables score different images: {len(left & right)} shared, {len(only_a)} only in {where_a}"
            f"{' (' + only_a[0] + ', …)' if only_a else ''}, {len(only_b)} only in {where_b}"
            f"{' (' + only_b[0] + ', …)' if only_b else ''}"
        )
    both = a.merge(b, on="image_id", suffixes=("_a", "_b"), validate="one_to_one").set_index("image_id")
    clash = both.index[both["cell_type_a"] != both["cell_type_b"]]
    if len(clash):
        first = both.loc[clash[0]]
        raise CellpipeError(
            f"{len(clash)} image(s) have another cell type in each table, e.g. {clash[0]}: "
            f"{first['cell_type_a']} in {where_a}, {first['cell_type_b']} in {where_b}"
        )
    both = both.sort_index()  # the draws depend on the images, not on the tables' row order
    rng = np.random.default_rng(seed)
    groups = [(ALL, both)] + [(str(t), g) for t, g in both.groupby("cell_type_a", sort=True)]
    return [_row(name, g["score_a"].to_numpy(), g["score_b"].to_numpy(), rng, resamples, confidence) for name, g in groups]


def _row(group: str, a: np.ndarray, b: np.ndarray, rng: np.random.Generator, resamples: int, confidence: float) -> Row:
    diff = b - a
    means = bootstrap_means(diff, rng, resamples)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Row(group, len(diff), float(a.mean()), float(b.mean()), float(diff.mean()), float(low), float(high),
               int((diff > 0).sum()), int((diff < 0).sum()))  # fmt: skip


def bootstrap_means(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Means of ``resamples`` resamples of ``values`` with replacement, drawn a bounded chunk at a time."""
    n = len(values)
    per_chunk = max(1, _CHUNK_CELLS // max(n, 1))
    out = np.empty(resamples)
    for start in range(0, resamples, per_chunk):
        stop = min(start + per_chunk, resamples)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out
