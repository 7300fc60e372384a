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
from cellpipe.instances import Instances
from cellpipe.metric import iou_matrix


def _to_instances(out: dict, shape: tuple[int, int], mask_threshold: float, flip: str | None = None) -> Instances:
    masks = out["masks"][:, 0] > mask_threshold
    if flip == "h":
        masks = masks.flip(-1)
    elif flip == "v":
        masks = masks.flip(-2)
    n = masks.shape[0]
    flat = masks.reshape(n, shape[0] * shape[1])
    rows, cols = torch.nonzero(flat, as_tuple=True)
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows.cpu().numpy(), cols.cpu().numpy())), shape=(n, shape[0] * shape[1]))
    return Instances(m, out["scores"].float().cpu().numpy(), out["labels"].cpu().numpy(), shape)


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
    with torch.autocast(device_type="cuda", enabled=str(device).startswith("cuda")):
        out = model([x])[0]
    inst = _to_instances(out, shape, mask_threshold)
    if not tta:
        return inst
    parts = [inst]
    for flip, dim in (("h", -1), ("v", -2)):
        with torch.autocast(device_type="cuda", enabled=str(device).startswith("cuda")):
            o = model([x.flip(dim)])[0]
        parts.append(_to_instances(o, shape, mask_threshold, flip))
    return merge_passes(parts, tta_iou)


def merge_passes(parts: list[Instances], iou_threshold: float) -> Instances:
    """Combine the detections of several passes (flips) of one image.

    Detections of different passes whose masks overlap above ``iou_threshold`` are one
    cell (greedy, by descending score, at most one detection per pass). A cell's score
    is the mean over *all* passes, a pass that missed it counting 0 — a detection seen
    in one pass of three keeps a third of its score — and its mask holds the pixels of
    at least half of its detections (the majority of its masks).
    """
    n_passes = len(parts)
    masks = sp.vstack([p.masks for p in parts]).tocsr()
    scores = np.concatenate([p.scores for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    source = np.concatenate([np.full(len(p.scores), k) for k, p in enumerate(parts)])
    order = np.argsort(-scores, kind="stable")
    masks, scores, labels, source = masks[order], scores[order], labels[order], source[order]
    iou = iou_matrix(masks, masks)
    used = np.zeros(len(scores), bool)
    rows, out_scores, out_labels = [], [], []
    for i in range(len(scores)):
        if used[i]:
            continue
        members = [i]
        used[i] = True
        for k in range(n_passes):
            if k == source[i]:
                continue
            cand = np.flatnonzero(~used & (source == k) & (iou[i] > iou_threshold))
            if len(cand):
                j = cand[np.argmax(iou[i, cand])]
                members.append(j)
                used[j] = True
        votes = np.asarray(masks[members].sum(axis=0)).ravel()
        rows.append(sp.csr_matrix((votes * 2 >= len(members)).astype(np.float32)))
        out_scores.append(scores[members].sum() / n_passes)
        out_labels.append(labels[i])
    shape = parts[0].shape
    if not rows:
        return Instances(
            sp.csr_matrix((0, shape[0] * shape[1]), dtype=np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), shape
        )
    merged = sp.vstack(rows).tocsr()
    merged.eliminate_zeros()
    keep = np.asarray(merged.sum(axis=1)).ravel() > 0
    return Instances(merged[keep], np.asarray(out_scores, np.float32)[keep], np.asarray(out_labels)[keep], shape)


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
    progress=None,
):
    """Predictions (:class:`cellpipe.predictions.Predictions`) of every image in ``paths`` (id → file)."""
    from cellpipe import predictions
    from cellpipe.images import read_grey

    items = []
    for k, (image_id, path) in enumerate(paths.items()):
        items.append(
            (
                image_id,
                family.predict(model, read_grey(path), device=device, mask_threshold=mask_threshold, tta=tta, tta_iou=tta_iou),
            )
        )
        if progress:
            progress(k + 1)
    return predictions.to_frame(items, classes)
