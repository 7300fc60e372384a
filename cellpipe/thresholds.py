"""Per-class score thresholds, chosen on out-of-fold predictions (cross-fitted).

The competition penalises false positives and negatives alike, and the best score cut
differs by cell type (crowded shsy5y and faint astro need lower ones). Each image is
assigned the class that dominates its confident detections (score-weighted vote, see
:mod:`cellpipe.postprocess`; on test images the true type is unknown, so val uses the
same rule), and for each class the
threshold that maximises the mean score of its images is chosen from a grid.

Choosing thresholds on the images that are then scored inflates the score. With K folds
the thresholds applied to fold k's images are chosen on the other folds' out-of-fold
predictions (:func:`cross_fit`); the thresholds for lockbox and test images are chosen
on all out-of-fold predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import scipy.sparse as sp

from cellpipe import metric, postprocess
from cellpipe.config import PostProcess
from cellpipe.errors import CellpipeError
from cellpipe.instances import Instances


def apply(pred: Instances, threshold: float, pp: PostProcess) -> sp.csr_matrix:
    """Final non-overlapping instances of an image at a score threshold."""
    return postprocess.final(pred.masks, pred.scores, threshold, pp)


def voted_class(pred: Instances, pp: PostProcess, default_class: str) -> str:
    return postprocess.image_class(pred.labels, pred.scores, default_class, pp.vote_min_score)


def apply_chosen(
    pred: Instances, chosen: Mapping[str, float], pp: PostProcess, default_class: str, fallback: float = 0.5
) -> tuple[str, sp.csr_matrix]:
    """The image's voted class and its final instances under the chosen per-class thresholds."""
    cls = voted_class(pred, pp, default_class)
    return cls, apply(pred, chosen.get(cls, fallback), pp)


def per_image(
    preds: Sequence[Instances], truths: Mapping[str, sp.csr_matrix], grid: Sequence[float], pp: PostProcess, default_class: str
) -> pd.DataFrame:
    """Score of every image at every threshold of the grid, with its voted class and TP/FP/FN at IoU 0.5."""
    rows = []
    for p in preds:
        cls = voted_class(p, pp, default_class)
        truth = truths[p.image_id]
        for t in grid:
            s = metric.score_image(truth, apply(p, t, pp))
            rows.append(
                {
                    "image_id": p.image_id,
                    "cell_type": cls,
                    "threshold": round(float(t), 4),
                    "score": s.score,
                    "tp": int(s.tp[0]),
                    "fp": int(s.fp[0]),
                    "fn": int(s.fn[0]),
                }
            )
    return pd.DataFrame(rows, columns=["image_id", "cell_type", "threshold", "score", "tp", "fp", "fn"])


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean score per (image class, threshold), with TP/FP/FN at IoU 0.5 summed."""
    return rows.groupby(["cell_type", "threshold"], as_index=False).agg(
        score=("score", "mean"), tp=("tp", "sum"), fp=("fp", "sum"), fn=("fn", "sum"), images=("image_id", "nunique")
    )


def cross_fit(
    rows: pd.DataFrame, fold_of: Mapping[str, int], folds: Sequence[int], classes: Sequence[str], fallback: float
) -> dict[int, dict[str, float]]:
    """For each fold k, the thresholds chosen on the *other* folds' images only (``rows``: :func:`per_image`).

    Applied to fold k's images, they score those images out of sample: neither the
    model nor the thresholds saw them. A class absent from the other folds gets ``fallback``.
    """
    fold = rows["image_id"].map(fold_of)
    if fold.isna().any():
        missing = rows.loc[fold.isna(), "image_id"].iloc[0]
        raise CellpipeError(f"image {missing} has no fold")
    return {int(k): choose(aggregate(rows[fold != k]), classes, fallback) for k in folds}


def choose(table: pd.DataFrame, classes: Sequence[str], fallback: float) -> dict[str, float]:
    """Best threshold per class (the lowest among ties); ``fallback`` for classes without val images."""
    out = {}
    for c in classes:
        sub = table[table["cell_type"] == c]
        if sub.empty:
            out[c] = fallback
            continue
        best = sub["score"].max()
        out[c] = float(sub.loc[sub["score"] >= best - 1e-12, "threshold"].min())
    return out
