"""Inference: a trained Mask R-CNN on full-size images → scored instance masks.

Instances are returned as sparse ``(n, height*width)`` matrices (see
:mod:`cellpipe.metric`) with scores and class labels, at the image's own resolution.
Optional flip test-time augmentation runs the flipped image too and merges the two
detection sets with mask-level NMS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from cellpipe.data import normalise_image
from cellpipe.metric import iou_matrix


@dataclass
class Instances:
    """Detections of one image."""

    masks: sp.csr_matrix
    scores: np.ndarray
    labels: np.ndarray
    shape: tuple[int, int]

    def select(self, keep: np.ndarray) -> Instances:
        return Instances(self.masks[keep], self.scores[keep], self.labels[keep], self.shape)


def _to_instances(out: dict, shape: tuple[int, int], mask_threshold: float, flip: str | None = None) -> Instances:
    masks = out["masks"][:, 0] > mask_threshold
    if flip == "h":
        masks = masks.flip(-1)
    elif flip == "v":
        masks = masks.flip(-2)
    n = masks.shape[0]
    flat = masks.reshape(n, shape[0] * shape[1])
    rows, cols = torch.nonzero(flat, as_tuple=True)
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows.cpu().numpy(), cols.cpu().numpy())),
                      shape=(n, shape[0] * shape[1]))
    return Instances(m, out["scores"].float().cpu().numpy(), out["labels"].cpu().numpy(), shape)


@torch.no_grad()
def predict_image(model: torch.nn.Module, grey: np.ndarray, *, device: torch.device | str = "cpu",
                  mask_threshold: float = 0.5, tta: bool = False, tta_iou: float = 0.5) -> Instances:
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
    return merge_nms(parts, tta_iou)


def merge_nms(parts: list[Instances], iou_threshold: float) -> Instances:
    """Union of detection sets, suppressing masks that overlap a higher-scored one."""
    masks = sp.vstack([p.masks for p in parts]).tocsr()
    scores = np.concatenate([p.scores for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    order = np.argsort(-scores, kind="stable")
    masks, scores, labels = masks[order], scores[order], labels[order]
    iou = iou_matrix(masks, masks)
    np.fill_diagonal(iou, 0)
    keep = np.ones(len(scores), bool)
    for i in range(len(scores)):
        if keep[i]:
            keep[i + 1:] &= ~(iou[i, i + 1:] > iou_threshold)
    return Instances(masks[keep], scores[keep], labels[keep], parts[0].shape)
