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
    return merge(parts, tta_iou)


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
