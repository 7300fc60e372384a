"""Overlays people look at: true and predicted outlines drawn over the image.

Ground truth in green, predictions in magenta; at IoU 0.5 a matched prediction is a
true positive (outline only), an unmatched prediction a false positive (filled red
tint), an unmatched truth a false negative (filled yellow tint). The panel puts the
plain image beside the overlay, with a legend, so both can be compared at a glance.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from cellpipe.metric import iou_matrix

GREEN = (40, 220, 60)
MAGENTA = (255, 60, 255)
RED = (255, 40, 40)
YELLOW = (255, 220, 0)


def _outline(masks: sp.csr_matrix, shape: tuple[int, int]) -> np.ndarray:
    """Boolean map of instance borders (2 px wide, so they survive downscaling)."""
    out = np.zeros(shape, dtype=bool)
    m = masks.tocsr()
    for k in range(m.shape[0]):
        idx = m.indices[m.indptr[k] : m.indptr[k + 1]]
        if len(idx) == 0:
            continue
        ys, xs = np.divmod(idx, shape[1])
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = np.zeros((y1 - y0 + 2, x1 - x0 + 2), bool)
        crop[ys - y0 + 1, xs - x0 + 1] = True
        edge = crop & ~ndi.binary_erosion(crop, iterations=2)
        ey, ex = np.nonzero(edge)
        ey, ex = ey + y0 - 1, ex + x0 - 1
        ok = (ey >= 0) & (ey < shape[0]) & (ex >= 0) & (ex < shape[1])
        out[ey[ok], ex[ok]] = True
    return out


def _fill(masks: sp.csr_matrix, rows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    if len(rows):
        flat[masks[rows].indices] = True
    return flat.reshape(shape)


def save(panel: Image.Image, path, *, cells: int, voted: str) -> None:
    """Write a panel as PNG with what it shows as text chunks (``cells``, ``voted_class``), deterministically."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("cells", str(int(cells)))
    info.add_text("voted_class", str(voted))
    panel.save(path, pnginfo=info)


def draw(
    grey: np.ndarray, truth: sp.csr_matrix | None, pred: sp.csr_matrix | None, *, title: str = "", iou_threshold: float = 0.5
) -> Image.Image:
    """Side-by-side panel: the image, and the image with outlines and TP/FP/FN marks."""
    shape = grey.shape
    base = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    over = base.copy()
    counts = {}
    if truth is not None and pred is not None:
        iou = iou_matrix(truth, pred)
        hit = iou > iou_threshold
        fn = np.flatnonzero(~hit.any(axis=1))
        fp = np.flatnonzero(~hit.any(axis=0))
        counts = {"TP": int(hit.sum()), "FP": len(fp), "FN": len(fn)}
        for rows, masks, colour in ((fn, truth, YELLOW), (fp, pred, RED)):
            f = _fill(masks, rows, shape)
            over[f] = 0.55 * over[f] + 0.45 * np.array(colour)
    if truth is not None:
        over[_outline(truth, shape)] = GREEN
    if pred is not None:
        over[_outline(pred, shape)] = MAGENTA
    panel = np.concatenate([base, np.full((shape[0], 8, 3), 255.0), over], axis=1)
    legend_h = 28
    img = Image.new("RGB", (panel.shape[1], panel.shape[0] + legend_h), (255, 255, 255))
    img.paste(Image.fromarray(np.clip(panel, 0, 255).astype(np.uint8)), (0, legend_h))
    d = ImageDraw.Draw(img)
    x = 6
    d.text((x, 8), title, fill=(0, 0, 0))
    x = shape[1] + 14
    items = []
    if truth is not None:
        items.append(("truth", GREEN))
    if pred is not None:
        items.append(("prediction", MAGENTA))
    if counts:
        items += [(f"FP {counts['FP']}", RED), (f"FN {counts['FN']}", YELLOW), (f"TP {counts['TP']} (IoU>0.5)", None)]
    for label, colour in items:
        if colour is not None:
            d.rectangle([x, 8, x + 14, 20], fill=colour)
            x += 18
        d.text((x, 8), label, fill=(0, 0, 0))
        x += 8 * len(label) + 14
    return img
