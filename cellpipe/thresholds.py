"""Per-class score thresholds tuned on val.

The competition penalises false positives and negatives alike, and the best score cut
differs by cell type (crowded shsy5y and faint astro need lower ones). Each image is
assigned the class that dominates its confident detections (score-weighted vote, see
:mod:`cellpipe.postprocess`; on test images the true type is unknown, so val uses the
same rule), and for each class the
threshold that maximises the mean val score of its images is chosen from a grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import scipy.sparse as sp

from cellpipe import metric, postprocess
from cellpipe.config import PostProcess
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


def sweep(
    preds: Sequence[Instances], truths: Mapping[str, sp.csr_matrix], grid: Sequence[float], pp: PostProcess, default_class: str
) -> pd.DataFrame:
    """Mean val score per (image class, threshold), with TP/FP/FN at IoU 0.5."""
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
    df = pd.DataFrame(rows)
    return df.groupby(["cell_type", "threshold"], as_index=False).agg(
        score=("score", "mean"), tp=("tp", "sum"), fp=("fp", "sum"), fn=("fn", "sum"), images=("image_id", "nunique")
    )


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
