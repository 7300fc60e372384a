"""The competition metric: mean over IoU thresholds of TP / (TP + FP + FN), per image.

For each image, IoU between every true and predicted cell comes from one sparse
product of instance matrices (rows = instances, columns = pixels), so overlapping
truths and overlapping raw predictions are both counted exactly and no Python loop
runs over pairs. With thresholds ≥ 0.5 a cell can match at most one other unless
cells of one side overlap each other heavily, so the one-to-one matching is simply the
pairs above the threshold, with a greedy fallback for that rare case.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

THRESHOLDS: np.ndarray = np.round(np.arange(0.5, 1.0, 0.05), 2)


def as_instances(masks: np.ndarray | sp.spmatrix) -> sp.csr_matrix:
    """Instances of one image as a sparse ``(n, pixels)`` matrix.

    Accepts a sparse matrix, a stack of boolean masks ``(n, h, w)`` or a label image
    ``(h, w)`` (0 = background, labels need not be consecutive).
    """
    if sp.issparse(masks):
        return sp.csr_matrix(masks, dtype=np.float32)
    arr = np.asarray(masks)
    if arr.ndim == 3:
        flat = arr.reshape(arr.shape[0], arr.shape[1] * arr.shape[2]).astype(bool)
        return sp.csr_matrix(flat, dtype=np.float32)
    if arr.ndim == 2:
        flat = arr.ravel()
        labels = np.unique(flat[flat != 0])
        pix = np.flatnonzero(flat)
        rows = np.searchsorted(labels, flat[pix])
        return sp.csr_matrix((np.ones(len(pix), np.float32), (rows, pix)), shape=(len(labels), flat.size))
    raise ValueError(f"expected a label image (h, w) or masks (n, h, w), got shape {arr.shape}")


def iou_matrix(truth: sp.csr_matrix, pred: sp.csr_matrix) -> np.ndarray:
    """Dense ``(n_true, n_pred)`` IoU matrix of two sparse instance matrices."""
    if truth.shape[0] == 0 or pred.shape[0] == 0:
        return np.zeros((truth.shape[0], pred.shape[0]))
    inter = (truth @ pred.T).toarray().astype(np.float64)
    area_t = np.asarray(truth.sum(axis=1)).ravel()
    area_p = np.asarray(pred.sum(axis=1)).ravel()
    union = area_t[:, None] + area_p[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass(frozen=True)
class ImageScore:
    """TP/FP/FN per threshold of one image, and its score."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @property
    def per_threshold(self) -> np.ndarray:
        denom = self.tp + self.fp + self.fn
        # no truths and no predictions: a perfect (empty) answer
        return np.where(denom > 0, self.tp / np.maximum(denom, 1), 1.0)

    @property
    def score(self) -> float:
        return float(self.per_threshold.mean())


def _one_to_one(iou: np.ndarray, t: float) -> int:
    """Matches above ``t`` when some cell has several: greedy by descending IoU.

    The best remaining pair is matched first, as COCO's evaluation matches, not the
    largest possible number of pairs (``scipy.optimize.linear_sum_assignment`` would
    be that): with truths T1, T2 and predictions P1, P2 where IoU(T1, P1) = 0.9,
    IoU(T1, P2) = IoU(T2, P1) = 0.6, greedy matching gives one hit (T1–P1), a maximum
    matching two. It only arises when cells of one side overlap each other heavily,
    which disjoint submissions cannot do.
    """
    rows, cols = np.nonzero(iou > t)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r, used_c = set(), set()
    for r, c in zip(rows[order].tolist(), cols[order].tolist()):
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
    return len(used_r)


def score_iou(iou: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> ImageScore:
    """Counts from an IoU matrix: a pair with IoU > t is a hit, one-to-one.

    Above 0.5 a cell can overlap at most one other cell that much, unless the truths
    (or the predictions) overlap each other heavily; only then is a greedy matching
    needed, and only for the thresholds where it matters.
    """
    n_true, n_pred = iou.shape
    tp = np.zeros(len(thresholds), dtype=np.int64)
    if iou.size:
        above = iou > thresholds.min()
        r, c = np.nonzero(above)
        vals = iou[r, c]
        for k, t in enumerate(thresholds):
            sel = vals > t
            n = int(sel.sum())
            if n and (np.bincount(r[sel]).max() > 1 or np.bincount(c[sel]).max() > 1):
                n = _one_to_one(iou, t)
            tp[k] = n
    return ImageScore(tp=tp, fp=n_pred - tp, fn=n_true - tp)


def score_image(truth, pred, thresholds: np.ndarray = THRESHOLDS) -> ImageScore:
    """Score one image from true and predicted instances (see :func:`as_instances`)."""
    return score_iou(iou_matrix(as_instances(truth), as_instances(pred)), thresholds)


@dataclass
class Report:
    """The dataset score, per class and per threshold, with the per-image table."""

    per_image: pd.DataFrame
    thresholds: np.ndarray = field(default_factory=lambda: THRESHOLDS.copy())

    @property
    def score(self) -> float:
        return float(self.per_image["score"].mean()) if len(self.per_image) else float("nan")

    def per_class(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in self.per_image.groupby("cell_type")["score"].mean().items()}

    def per_threshold(self, by_class: bool = False) -> pd.DataFrame:
        cols = [f"t{t:.2f}" for t in self.thresholds]
        if by_class:
            return self.per_image.groupby("cell_type")[cols].mean()
        return self.per_image[cols].mean().to_frame("all").T

    def to_dict(self) -> dict:
        """Small JSON-able summary for DVC metrics."""
        pi = self.per_image
        return {
            "map_iou": round(self.score, 6),
            "images": int(len(pi)),
            "per_class": {k: round(v, 6) for k, v in self.per_class().items()},
            "per_threshold": {c[1:]: round(float(v), 6) for c, v in self.per_threshold().iloc[0].items()},
            # each class at the IoU thresholds that tell finding a cell (0.5) from outlining it (0.75, 0.9)
            "per_class_at_iou": {
                str(cls): {c[1:]: round(float(row[c]), 6) for c in ("t0.50", "t0.75", "t0.90") if c in row}
                for cls, row in self.per_threshold(by_class=True).iterrows()
            },
            "counts": {
                "tp@0.5": int(pi["tp@0.50"].sum()),
                "fp@0.5": int(pi["fp@0.50"].sum()),
                "fn@0.5": int(pi["fn@0.50"].sum()),
                "true": int(pi["n_true"].sum()),
                "pred": int(pi["n_pred"].sum()),
            },
        }


def evaluate(
    images: Iterable[tuple[str, str, sp.csr_matrix, sp.csr_matrix]],
    thresholds: np.ndarray = THRESHOLDS,
) -> Report:
    """Score ``(image_id, cell_type, truth, pred)`` tuples into a :class:`Report`."""
    rows = []
    for image_id, cell_type, truth, pred in images:
        s = score_image(truth, pred, thresholds)
        row: dict = {
            "image_id": image_id,
            "cell_type": cell_type,
            "score": s.score,
            "n_true": int(truth.shape[0]),
            "n_pred": int(pred.shape[0]),
        }
        for t, v, tp, fp, fn in zip(thresholds, s.per_threshold, s.tp, s.fp, s.fn):
            row[f"t{t:.2f}"] = float(v)
            row[f"tp@{t:.2f}"], row[f"fp@{t:.2f}"], row[f"fn@{t:.2f}"] = int(tp), int(fp), int(fn)
        rows.append(row)
    return Report(pd.DataFrame(rows), np.asarray(thresholds))
