"""Inference: a trained Mask R-CNN on full-size images → scored instance masks.

Instances are returned as sparse ``(n, height*width)`` matrices (see
:mod:`cellpipe.metric`) with scores and class labels, at the image's own resolution.
Optional flip test-time augmentation runs the flipped images too and merges the
passes: matched masks are combined and scores averaged over the passes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from cellpipe.data import normalise_image
from cellpipe.ensemble import merge
from cellpipe.instances import Instances
from cellpipe.models.masks import paste_sparse


def flipped(masks: sp.csr_matrix, shape: tuple[int, int], flip: str) -> sp.csr_matrix:
    """Sparse ``(n, H·W)`` masks of a flipped image mapped back to the image (``flip``: 'h' or 'v')."""
    h, w = shape
    m = masks.tocsr(copy=True)
    y, x = np.divmod(m.indices.astype(np.int64), w)
    m.indices = ((y if flip == "h" else h - 1 - y) * w + (w - 1 - x if flip == "h" else x)).astype(m.indices.dtype)
    m.has_sorted_indices = False
    m.sort_indices()
    return m


def mask_geometry(model: torch.nn.Module) -> str:
    """How a Mask R-CNN's masks go into the image: its transform's geometry (torchvision) or its own."""
    return getattr(getattr(model, "transform", None), "geometry", None) or getattr(model, "mask_geometry", "exact")


def _to_instances(out: dict, shape: tuple[int, int], mask_threshold: float, geometry: str, flip: str | None = None) -> Instances:
    """A model's raw output (boxes in the image, unpasted ``(N, 1, M, M)`` masks) → sparse instances."""
    masks = paste_sparse(out["masks"].float(), out["boxes"], shape, mask_threshold, geometry)
    if flip is not None:
        masks = flipped(masks, shape, flip)
    return Instances(masks, out["scores"].float().cpu().numpy(), out["labels"].cpu().numpy(), shape)


@torch.no_grad()
def predict_image(
    model: torch.nn.Module,
    grey: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    mask_threshold: float = 0.5,
    tta: bool = False,
    tta_iou: float = 0.5,
) -> Instances:
    """Detections of one grey image (uint8 H×W) at full resolution."""
    model.eval()
    x = normalise_image(grey).to(device)
    shape = grey.shape
    geometry = mask_geometry(model)
    with torch.autocast(device_type="cuda", enabled=str(device).startswith("cuda")):
        out = model([x])[0]
    inst = _to_instances(out, shape, mask_threshold, geometry)
    if not tta:
        return inst
    parts = [inst]
    for flip, dim in (("h", -1), ("v", -2)):
        with torch.autocast(device_type="cuda", enabled=str(device).startswith("cuda")):
            o = model([x.flip(dim)])[0]
        parts.append(_to_instances(o, shape, mask_threshold, geometry, flip))
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
    rows, cols, scores, labels = [], [], [], []
    n_out = 0
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
            keep = np.flatnonzero(own)
            if not len(keep):
                continue
            new_row = np.full(n, -1, np.int64)
            new_row[keep] = np.arange(n_out, n_out + len(keep))
            sel = own[which]
            rows.append(new_row[which[sel]])
            cols.append((ty[sel] + y) * width + tx[sel] + x)
            scores.append(np.asarray(inst.scores)[keep])
            labels.append(np.asarray(inst.labels)[keep])
            n_out += len(keep)
    if not n_out:
        return Instances(sp.csr_matrix((0, height * width), dtype=np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                         (height, width))  # fmt: skip
    r, c = np.concatenate(rows), np.concatenate(cols)
    masks = sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(n_out, height * width))
    return Instances(masks, np.concatenate(scores), np.concatenate(labels), (height, width))


def predict_images(
    family,
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
    """Predictions (:class:`cellpipe.predictions.Predictions`) of every image in ``paths`` (id → file).

    Images larger than ``tile`` are predicted window by window (:func:`predict_tiled`);
    one over ``max_pixels`` is refused by name before it is decoded. Each image's
    instances become Parquet-ready rows before the next is read, so memory holds one image.
    """
    from cellpipe import predictions
    from cellpipe.images import read_grey

    def predict_one(grey: np.ndarray) -> Instances:
        return family.predict(model, grey, device=device, mask_threshold=mask_threshold, tta=tta, tta_iou=tta_iou)

    def items():
        for k, (image_id, path) in enumerate(paths.items()):
            yield image_id, predict_tiled(predict_one, read_grey(path, max_pixels=max_pixels), tile, overlap)
            if progress:
                progress(k + 1)

    return predictions.to_frame(items(), classes)
