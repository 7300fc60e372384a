"""Raw detections → the final cells of an image: one definition for every consumer.

Training's checkpoint selection, the threshold sweep, the score, the submission and
the overlays all call :func:`final`, so a checkpoint is chosen with exactly the
post-processing its predictions will be scored with. The steps, in order:

1. detections under the score threshold are dropped;
2. class-agnostic NMS: torchvision's box NMS runs per class, so one cell can come
   out once per class; a detection whose box (of its mask) overlaps a higher-scored
   one above ``box_nms_iou`` is dropped (chosen per cell type by the ``thresholds``
   stage: astro's boxes overlap where its masks do not), then one whose mask does above
   ``mask_nms_iou``;
3. overlap removal (the competition wants disjoint masks): each pixel goes to the
   highest-scored instance; an instance left with fewer than ``min_size`` pixels, or
   that lost more than ``max_lost`` of its pixels, is dropped — such a fragment is
   almost always a false positive at every IoU threshold;
4. growth (``grow`` pixels, chosen per cell type by the ``thresholds`` stage): each free
   pixel within that distance of a cell joins the nearest one — scikit-image's
   ``expand_labels``. Mask R-CNN's masks come out smaller than the annotators' outlines
   where cells have thin processes (astro: median 323 px against 776 px of truth on the real
   val images), and a cell drawn a little short of its outline loses IoU at every threshold.

The image's cell type, which picks its per-class threshold, is voted by the
detections scoring at least ``vote_min_score`` (hundreds of low-score detections
would otherwise outvote the confident ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.ndimage as ndi
import scipy.sparse as sp

from cellpipe.config import PostProcess
from cellpipe.metric import iou_matrix


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


def mask_boxes(masks: sp.csr_matrix, width: int) -> np.ndarray:
    """``(n, 4)`` boxes (x0, y0, x1, y1, exclusive) of sparse masks (an empty mask: a zero box)."""
    m = sp.csr_matrix(masks)
    n = m.shape[0]
    out = np.zeros((n, 4), np.float64)
    sizes = np.diff(m.indptr)
    full = np.flatnonzero(sizes)
    if len(full):
        ys, xs = np.divmod(m.indices.astype(np.int64), width)
        starts = m.indptr[:-1][full]
        out[full, 0] = np.minimum.reduceat(xs, starts)
        out[full, 1] = np.minimum.reduceat(ys, starts)
        out[full, 2] = np.maximum.reduceat(xs, starts) + 1
        out[full, 3] = np.maximum.reduceat(ys, starts) + 1
    return out


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by class-agnostic box NMS (in descending score): torchvision's ``nms``.

    torch is imported here, not at module level: score and submit start without it unless
    a class's chosen box-NMS IoU is below 1.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    if len(order) < 2 or iou >= 1.0:
        return order
    import torch
    from torchvision.ops import nms

    # ranks as scores: ties keep their stable order, as the greedy loop this replaced did
    ranks = torch.arange(len(order), 0, -1, dtype=torch.float64)
    kept = nms(torch.from_numpy(np.asarray(boxes, np.float64)[order]), ranks, iou).numpy()
    return order[np.sort(kept)]


def final(masks: sp.csr_matrix, scores: np.ndarray, threshold: float, pp: PostProcess, width: int | None = None) -> sp.csr_matrix:
    """The final, non-overlapping instances of one image (ordered by descending score).

    ``width``: the image's width, needed to find the boxes for box NMS (``pp.box_nms_iou`` < 1) and the
    neighbourhood for growth (``pp.grow`` > 0).
    """
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.flatnonzero(scores >= threshold)
    if pp.box_nms_iou < 1.0 and len(keep) > 1:
        if width is None:
            raise ValueError("box NMS needs the image's width")
        keep = keep[box_nms(mask_boxes(masks[keep], width), scores[keep], pp.box_nms_iou)]
    if pp.mask_nms_iou < 1.0 and len(keep) > 1:
        keep = keep[mask_nms(masks[keep], scores[keep], pp.mask_nms_iou)]
    clean, _ = resolve_overlaps(masks[keep], scores[keep], pp.min_size, pp.max_lost)
    if pp.grow > 0 and clean.shape[0]:
        if width is None:
            raise ValueError("growing cells needs the image's width")
        clean = grow(clean, width, pp.grow)
    return clean


GROW_BAND = 256  # rows of the image handled at once by :func:`grow`


def grow(instances: sp.csr_matrix, width: int, distance: int, band: int = GROW_BAND) -> sp.csr_matrix:
    """Non-overlapping instances (n × pixels of an image ``width`` wide) grown into the free pixels within
    ``distance`` (Euclidean) of them, each free pixel joining its nearest instance; instances keep their
    pixels and order and never take another's — scikit-image's ``expand_labels``, which is a distance
    transform of the background. Rows are handled in bands of ``band`` with ``distance`` rows of margin,
    which is exact (no nearer instance lies farther away) and bounds memory by a band, not the image."""
    return grow_each(instances, width, [distance], band)[0]


def grow_each(instances: sp.csr_matrix, width: int, distances: Sequence[int], band: int = GROW_BAND) -> list[sp.csr_matrix]:
    """:func:`grow` at each of ``distances`` from one distance transform (the threshold sweep tries several)."""
    m = sp.csr_matrix(instances)
    reach = max(distances, default=0)
    if reach <= 0 or m.shape[0] == 0:
        return [m for _ in distances]
    height = m.shape[1] // width
    coo = m.tocoo()
    order = np.argsort(coo.col, kind="stable")
    pixels, owner = coo.col[order].astype(np.int64), coo.row[order].astype(np.int32)
    rows: list[list[np.ndarray]] = [[] for _ in distances]
    cols: list[list[np.ndarray]] = [[] for _ in distances]
    for y0 in range(0, height, band):
        y1 = min(height, y0 + band)
        lo, hi = max(0, y0 - reach), min(height, y1 + reach)
        a, b = np.searchsorted(pixels, [lo * width, hi * width])
        if a == b:
            continue
        labels = np.zeros((hi - lo) * width, np.int32)
        labels[pixels[a:b] - lo * width] = owner[a:b] + 1
        labels = labels.reshape(hi - lo, width)
        dist, (iy, ix) = ndi.distance_transform_edt(labels == 0, return_indices=True)
        core = slice(y0 - lo, y1 - lo)
        dist, nearest = dist[core].ravel(), labels[iy[core], ix[core]].ravel()
        for k, d in enumerate(distances):
            if d <= 0:
                continue
            at = np.flatnonzero(dist <= d)  # every pixel has a nearest cell: the band holds at least one
            rows[k].append(nearest[at] - 1)
            cols[k].append(at + y0 * width)
    out = []
    for d, r, c in zip(distances, rows, cols):
        if d <= 0:
            out.append(m)
            continue
        r_ = np.concatenate(r) if r else np.zeros(0, np.int32)
        c_ = np.concatenate(c) if c else np.zeros(0, np.int64)
        out.append(sp.csr_matrix((np.ones(len(c_), np.float32), (r_, c_)), shape=m.shape))
    return out


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
