"""Do the RPN's anchors fit the cells? Coverage of the true boxes, and anchor sizes suggested from them.

An RPN learns from anchors that overlap a true box at IoU ≥ ``rpn_fg_iou`` (0.7). A
cell whose best anchor stays below that gets only a low-quality match, so with
anchors that do not fit the cells the RPN learns from poor positives. torchvision
places each FPN level's anchors on a grid of its stride (4, 8, 16, 32, 64 px for
P2–P6), centred on grid points, one per size × aspect ratio; the coverage here uses
that same geometry: for every true box, the best IoU over the anchors centred at the
grid points around its centre, on every level.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STRIDES = (4, 8, 16, 32, 64)  # P2..P6 of an FPN on a ResNet


def base_anchors(sizes: Sequence[int], ratios: Sequence[float]) -> np.ndarray:
    """(k, 4) anchors centred at 0, as torchvision's AnchorGenerator makes them (rounded)."""
    scales = np.asarray(sizes, dtype=np.float64)
    r = np.sqrt(np.asarray(ratios, dtype=np.float64))
    ws = (scales[None, :] / r[:, None]).ravel()
    hs = (scales[None, :] * r[:, None]).ravel()
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2)


def _level_iou(boxes: np.ndarray, sizes: Sequence[int], ratios: Sequence[float], stride: int) -> np.ndarray:
    """Best IoU of each box with the anchors of one level centred on the 3×3 grid points around its centre."""
    best = np.zeros(len(boxes))
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    base = base_anchors(sizes, ratios)  # (k, 4)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            gx = (np.round(cx / stride) + dx) * stride
            gy = (np.round(cy / stride) + dy) * stride
            a = base[None, :, :] + np.stack([gx, gy, gx, gy], axis=1)[:, None, :]  # (n, k, 4)
            iw = np.clip(np.minimum(a[..., 2], boxes[:, None, 2]) - np.maximum(a[..., 0], boxes[:, None, 0]), 0, None)
            ih = np.clip(np.minimum(a[..., 3], boxes[:, None, 3]) - np.maximum(a[..., 1], boxes[:, None, 1]), 0, None)
            inter = iw * ih
            union = area[:, None] + (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) - inter
            best = np.maximum(best, (inter / np.maximum(union, 1e-9)).max(axis=1))
    return best


def best_iou(
    boxes: np.ndarray, level_sizes: Sequence[Sequence[int]], ratios: Sequence[float], strides: Sequence[int] = STRIDES
) -> np.ndarray:
    """For each box ``(x0, y0, x1, y1)``, the best IoU of any anchor on the grids of the levels."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    best = np.zeros(len(boxes))
    for sizes, stride in zip(level_sizes, strides):
        best = np.maximum(best, _level_iou(boxes, sizes, ratios, stride))
    return best


def suggest(
    boxes: np.ndarray,
    ratios: Sequence[float],
    per_level: int = 2,
    fg_iou: float = 0.7,
    strides: Sequence[int] = STRIDES,
    rounds: int = 2,
) -> list[list[int]]:
    """Anchor sizes per level that maximise the share of boxes with an anchor at IoU ≥ ``fg_iou``.

    Coordinate ascent from a geometric series over the box scales (``sqrt(w·h)``, 1st to
    99th percentile): each size of each level in turn is replaced by the candidate
    (a geometric grid from 2 to 2× the largest box) that covers the most boxes, ties
    broken by the mean best IoU; sizes keep growing from level to level. The anchors'
    grid offsets on coarse levels are part of the objective.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    levels = len(strides)
    scale = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    if not len(scale):
        return [[8 * 2**k] * per_level for k in range(levels)]
    lo, hi = np.percentile(scale, [1, 99])
    start = np.maximum(np.round(np.geomspace(max(lo, 2.0), max(hi, lo + 1, 3.0), levels * per_level)), 2).astype(int)
    sizes = [list(start[k * per_level : (k + 1) * per_level]) for k in range(levels)]
    candidates = np.unique(np.round(np.geomspace(2, max(2 * scale.max(), 4), 48)).astype(int))
    per = [_level_iou(boxes, sizes[k], ratios, strides[k]) for k in range(levels)]

    def objective(best: np.ndarray) -> tuple[float, float]:
        return float((best >= fg_iou).mean()), float(best.mean())

    for _ in range(rounds):
        for k in range(levels):
            others = np.max([per[j] for j in range(levels) if j != k], axis=0) if levels > 1 else np.zeros(len(boxes))
            for slot in range(per_level):
                best_val, best_size, best_arr = None, sizes[k][slot], per[k]
                # sizes grow with the level (coarser features for larger cells), never overlapping
                low = max(sizes[k - 1]) if k else 0
                high = min(sizes[k + 1]) if k + 1 < levels else np.inf
                for c in candidates[(candidates >= low) & (candidates <= high)]:
                    trial = [*sizes[k][:slot], int(c), *sizes[k][slot + 1 :]]
                    arr = _level_iou(boxes, trial, ratios, strides[k])
                    val = objective(np.maximum(others, arr))
                    if best_val is None or val > best_val:
                        best_val, best_size, best_arr = val, int(c), arr
                sizes[k][slot] = best_size
                per[k] = best_arr
    return [sorted(int(x) for x in s) for s in sizes]


def report(
    boxes: np.ndarray,
    level_sizes: Sequence[Sequence[int]],
    ratios: Sequence[float],
    thresholds: Sequence[float] = (0.5, 0.6, 0.7),
) -> dict:
    """Share of boxes whose best anchor reaches each IoU threshold, and the median best IoU."""
    iou = best_iou(boxes, level_sizes, ratios)
    return {
        "boxes": int(len(iou)),
        "median_best_iou": round(float(np.median(iou)) if len(iou) else 0.0, 4),
        **{f"share_iou_{t:.1f}": round(float((iou >= t).mean()) if len(iou) else 0.0, 4) for t in thresholds},
    }
