"""Raw detections → the final cells of an image: one definition for every consumer.

Training's checkpoint selection, the threshold sweep, the score, the submission and
the overlays all call :func:`final`, so a checkpoint is chosen with exactly the
post-processing its predictions will be scored with. The steps, in order:

1. detections under the score threshold are dropped;
2. class-agnostic mask NMS: torchvision's box NMS runs per class, so one cell can
   come out once per class; a detection whose mask overlaps a higher-scored one above
   ``mask_nms_iou`` is dropped;
3. overlap removal (the competition wants disjoint masks): each pixel goes to the
   highest-scored instance; an instance left with fewer than ``min_size`` pixels, or
   that lost more than ``max_lost`` of its pixels, is dropped — such a fragment is
   almost always a false positive at every IoU threshold.

The image's cell type, which picks its per-class threshold, is voted by the
detections scoring at least ``vote_min_score`` (hundreds of low-score detections
would otherwise outvote the confident ones).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellpipe.config import PostProcess
from cellpipe.metric import iou_matrix
from cellpipe.submission import resolve_overlaps


def mask_nms(masks: sp.csr_matrix, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy class-agnostic mask NMS (in descending score)."""
    n = masks.shape[0]
    order = np.argsort(-np.asarray(scores), kind="stable")
    if n < 2 or iou >= 1.0:
        return order
    m = sp.csr_matrix(masks)[order]
    over = iou_matrix(m, m) > iou
    np.fill_diagonal(over, False)
    keep = np.ones(n, bool)
    for i in range(n):
        if keep[i]:
            keep[i + 1 :] &= ~over[i, i + 1 :]
    return order[keep]


def final(masks: sp.csr_matrix, scores: np.ndarray, threshold: float, pp: PostProcess) -> sp.csr_matrix:
    """The final, non-overlapping instances of one image (ordered by descending score)."""
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.flatnonzero(scores >= threshold)
    if pp.mask_nms_iou < 1.0 and len(keep) > 1:
        keep = keep[mask_nms(masks[keep], scores[keep], pp.mask_nms_iou)]
    clean, _ = resolve_overlaps(masks[keep], scores[keep], pp.min_size, pp.max_lost)
    return clean


def image_class(labels: np.ndarray, scores: np.ndarray, default: str, min_score: float = 0.0) -> str:
    """The class with the largest summed score among detections scoring ≥ ``min_score``.

    Falls back to all detections when none is that confident, and to ``default``
    when the image has none.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if len(labels) == 0:
        return default
    confident = scores >= min_score
    if confident.any():
        labels, scores = labels[confident], scores[confident]
    return str(pd.Series(scores).groupby(labels).sum().idxmax())
