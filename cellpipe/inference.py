"""Inference: a trained model of any family on images of any size → scored instance masks.

Instances are sparse ``(n, height·width)`` matrices (see :mod:`cellpipe.instances`) with
scores and class labels, at each image's own resolution. Flip test-time augmentation
runs the horizontally and vertically flipped images too and merges the three passes
(:func:`cellpipe.merging.merge`: matched masks combined, scores averaged over the
passes), unless the family has its own (cellpose averages its flow maps). Images larger
than the training images are predicted in overlapping windows (:func:`predict_tiled`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from cellpipe import prediction_table
from cellpipe.images import read_grey
from cellpipe.instances import Instances
from cellpipe.merging import merge
from cellpipe.models import Family


def flipped(masks: sp.csr_matrix, shape: tuple[int, int], flip: str) -> sp.csr_matrix:
    """Sparse ``(n, H·W)`` masks of a flipped image mapped back to the image (``flip``: 'h' or 'v')."""
    h, w = shape
    m = masks.tocsr(copy=True)
    y, x = np.divmod(m.indices.astype(np.int64), w)
    m.indices = ((y if flip == "h" else h - 1 - y) * w + (w - 1 - x if flip == "h" else x)).astype(m.indices.dtype)
    m.has_sorted_indices = False
    m.sort_indices()
    return m


def predict_image(
    family: Family,
    model: torch.nn.Module,
    grey: np.ndarray,
    *,
    device,
    mask_threshold: float,
    tta: bool = False,
    tta_iou: float = 0.5,
) -> Instances:
    """One image's instances: a single pass, or with flip test-time augmentation."""
    if not tta:
        return family.predict(model, grey, device=device, mask_threshold=mask_threshold)
    if family.own_tta:
        return family.predict_tta(model, grey, device=device, mask_threshold=mask_threshold)
    parts = [family.predict(model, grey, device=device, mask_threshold=mask_threshold)]
    for flip, axis in (("h", 1), ("v", 0)):
        inst = family.predict(model, np.ascontiguousarray(np.flip(grey, axis)), device=device, mask_threshold=mask_threshold)
        parts.append(Instances(flipped(inst.masks, grey.shape, flip), inst.scores, inst.labels, inst.shape))
    return merge(parts, tta_iou)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start of each window of ``tile`` pixels covering ``length``, neighbours overlapping by at least ``overlap``."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    return [*range(0, length - tile, step), length - tile]


def _cores(starts: list[int], tile: int, length: int) -> tuple[list[float], list[float]]:
    """Each window's own stretch: from the middle of its overlap with the previous window to the middle of the next."""
    seams = [(starts[i - 1] + tile + starts[i]) / 2 for i in range(1, len(starts))]
    return [0.0, *seams], [*seams, float(length)]


def predict_tiled(predict_one, grey: np.ndarray, tile: tuple[int, int], overlap: int) -> Instances:
    """Instances of an image of any size: whole when it fits in ``tile`` (height, width), else window by window.

    Windows of ``tile`` pixels (the size the model was trained on, so cells keep the scale
    it learned) overlap by at least ``overlap``; each detection belongs to the window in
    whose own stretch (up to the middle of each overlap) its centroid lies, so a cell
    crossing a seam comes out once, whole, from the window that holds it whole (any cell
    smaller than the overlap). Memory and time grow with the image's pixels, not with the
    windows × detections.
    """
    height, width = grey.shape
    th, tw = min(tile[0], height), min(tile[1], width)
    if (th, tw) == (height, width):
        return predict_one(grey)
    ys, xs = tile_starts(height, th, overlap), tile_starts(width, tw, overlap)
    (ylo, yhi), (xlo, xhi) = _cores(ys, th, height), _cores(xs, tw, width)
    index = np.int32 if height * width < 2**31 else np.int64
    sizes, cols, scores, labels = [], [], [], []  # kept detections' pixel counts and pixels (image columns), in order
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            inst = predict_one(np.ascontiguousarray(grey[y : y + th, x : x + tw]))
            m = inst.masks.tocsr()
            n = m.shape[0]
            if n == 0:
                continue
            size = np.diff(m.indptr)
            which = np.repeat(np.arange(n), size)
            ty, tx = np.divmod(m.indices.astype(np.int64), tw)
            cy = np.bincount(which, weights=ty + 0.5, minlength=n) / np.maximum(size, 1) + y
            cx = np.bincount(which, weights=tx + 0.5, minlength=n) / np.maximum(size, 1) + x
            own = (size > 0) & (cy >= ylo[i]) & (cy < yhi[i]) & (cx >= xlo[j]) & (cx < xhi[j])
            if not own.any():
                continue
            sel = own[which]  # the kept detections' pixels, still grouped by detection in order
            sizes.append(size[own])
            cols.append(((ty[sel] + y) * width + tx[sel] + x).astype(index))
            scores.append(np.asarray(inst.scores)[own])
            labels.append(np.asarray(inst.labels)[own])
    if not sizes:
        empty = sp.csr_matrix((0, height * width), dtype=np.float32)
        return Instances(empty, np.zeros(0, np.float32), np.zeros(0, np.int64), (height, width))
    counts = np.concatenate(sizes)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64 if counts.sum() >= 2**31 else index)
    indices = np.concatenate(cols)
    masks = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(counts), height * width))
    return Instances(masks, np.concatenate(scores), np.concatenate(labels), (height, width))


def predict_images(
    family: Family,
    model: torch.nn.Module,
    paths: dict[str, Path],
    classes: list[str],
    *,
    device,
    mask_threshold: float,
    tta: bool = False,
    tta_iou: float = 0.5,
    tile: tuple[int, int] = (520, 704),
    overlap: int = 128,
    max_pixels: int = 100_000_000,
    progress=None,
):
    """Predictions (:class:`cellpipe.prediction_table.Predictions`) of every image in ``paths`` (id → file).

    Images larger than ``tile`` are predicted window by window (:func:`predict_tiled`);
    one over ``max_pixels`` is refused by name before it is decoded. Each image's
    instances become Parquet-ready rows before the next is read, so memory holds one image.
    """

    def predict_one(grey: np.ndarray) -> Instances:
        return predict_image(family, model, grey, device=device, mask_threshold=mask_threshold, tta=tta, tta_iou=tta_iou)

    def items():
        for k, (image_id, path) in enumerate(paths.items()):
            yield image_id, predict_tiled(predict_one, read_grey(path, max_pixels=max_pixels), tile, overlap)
            if progress:
                progress(k + 1)

    return prediction_table.to_frame(items(), classes)
