"""Predictions tables: scored instances as Parquet rows (one per detection).

Columns: ``image_id``, ``label`` (class name), ``score``, ``height``, ``width``,
``rle`` (Kaggle RLE of the raw, possibly overlapping mask). Overlap removal and score
cuts happen downstream (thresholds, score, submit), so they can be tuned without
re-running the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellpipe import rle
from cellpipe.errors import CellpipeError
from cellpipe.thresholds import ImagePredictions

if TYPE_CHECKING:  # cellpipe.predict imports torch; reading predictions must not
    from cellpipe.predict import Instances

COLUMNS = ["image_id", "label", "score", "height", "width", "rle"]


def to_frame(items: Iterable[tuple[str, Instances]], class_names: list[str]) -> pd.DataFrame:
    frames = []
    for image_id, inst in items:
        strings = rle.to_strings(rle.from_csr(inst.masks))
        frames.append(pd.DataFrame({
            "image_id": image_id,
            "label": [class_names[int(k) - 1] for k in inst.labels],
            "score": inst.scores.astype(np.float32),
            "height": inst.shape[0], "width": inst.shape[1], "rle": strings}))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            COLUMNS, ["str", "str", "float32", "int64", "int64", "str"])})
    df = pd.concat(frames, ignore_index=True)
    return df[df["rle"] != ""].reset_index(drop=True)


def from_frame(df: pd.DataFrame, image_ids: Iterable[str], shape: tuple[int, int], *, where: str) -> list[ImagePredictions]:
    """Per-image predictions for ``image_ids`` (images without rows get no detections)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CellpipeError(f"predictions table lacks column(s) {', '.join(missing)}", where=where)
    groups = df.groupby("image_id", sort=False).indices
    out = []
    n_pix = shape[0] * shape[1]
    for image_id in image_ids:
        idx = groups.get(image_id, np.zeros(0, dtype=np.int64))
        sub = df.iloc[idx]
        runs = rle.parse_many(sub["rle"].tolist(), n_pix, where=where, row_names=[f"{image_id} #{k}" for k in range(len(sub))])
        out.append(ImagePredictions(image_id, rle.to_csr(runs, n_pix) if len(sub) else sp.csr_matrix((0, n_pix)),
                                    sub["score"].to_numpy(np.float64), sub["label"].to_numpy(str)))
    return out
