"""Mask geometry for torchvision's Mask R-CNN: targets and pasting at pixel centres.

torchvision builds each 28×28 mask target with ``roi_align(aligned=False)`` (a
half-pixel shift) and keeps the soft values; at inference it pastes the 28×28
prediction into an integer-rounded box grown by 30/28. Round-tripping perfect masks
through both gives IoU ≈ 0.9: masks come out a few percent too large and shifted up-left,
which costs most of the score at the metric's IoU thresholds 0.75–0.95 on cells of
10–40 px. Here, as in detectron2, a box ``(x0, y0, x1, y1)`` covers continuous
coordinates whose pixel ``i`` has its centre at ``i + 0.5``: targets are
``roi_align(aligned=True)`` thresholded at 0.5, and predictions are resampled with
``grid_sample`` at the centres of the image pixels the box covers.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import roi_align

from cellpipe.images import input_size


def scale_boxes(boxes: torch.Tensor, factor: float) -> torch.Tensor:
    """``(K, 4)`` boxes grown ×``factor`` about their centres (torchvision's ``expand_boxes``), not clipped
    (RoI pooling and the paste clip)."""
    return boxes if factor == 1.0 else tv_roi_heads.expand_boxes(boxes, factor)


def mask_targets(gt_masks: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor, size: int) -> torch.Tensor:
    """Binary ``size×size`` targets of the true masks ``gt_masks[matched]`` inside ``boxes`` (``(K, 4)``)."""
    rois = torch.cat([matched.to(boxes)[:, None], boxes], dim=1)
    soft = roi_align(gt_masks[:, None].to(boxes), rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)[:, 0]
    return (soft >= 0.5).to(boxes)


def mask_loss(
    mask_logits: torch.Tensor,
    proposals: list[torch.Tensor],
    gt_masks: list[torch.Tensor],
    gt_labels: list[torch.Tensor],
    matched: list[torch.Tensor],
    *,
    box_scale: float = 1.0,
    dice_weight: float = 0.0,
) -> torch.Tensor:
    """torchvision's ``maskrcnn_loss`` (same signature) with :func:`mask_targets` as targets, inside the
    proposals grown ×``box_scale`` (the boxes the mask head pooled: ``model.mask_box_scale``), plus
    ``dice_weight`` × :func:`dice_loss` (``model.mask_dice_weight``)."""
    size = mask_logits.shape[-1]
    proposals = [scale_boxes(p, box_scale) for p in proposals]
    labels = torch.cat([lab[idx] for lab, idx in zip(gt_labels, matched)], dim=0)
    targets = torch.cat([mask_targets(m, p, i, size) for m, p, i in zip(gt_masks, proposals, matched)], dim=0)
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    picked = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
    loss = F.binary_cross_entropy_with_logits(picked, targets)
    return loss + dice_weight * dice_loss(picked, targets) if dice_weight else loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over RoIs of 1 − soft Dice between ``sigmoid(logits)`` and binary ``targets`` (both ``(K, M, M)``),
    smoothed by 1 so that an empty target with an empty prediction costs 0.

    BCE averages over pixels: a mask wrong along its outline pays a few pixels' worth, however small the cell.
    Dice is an overlap ratio per RoI, as the metric's IoU is per cell, so an outline error costs a 17-px cell
    what it costs there (V-Net, Milletari et al. 2016; used beside BCE in Kaggle cell-segmentation models)."""
    probs = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    dice = (2 * (probs * t).sum(1) + 1) / (probs.sum(1) + t.sum(1) + 1)
    return (1 - dice).mean()


def maskness(masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """Each ``(N, 1, M, M)`` mask's mean probability over its pixels above ``threshold`` (SOLOv2's "maskness";
    0 where no pixel is above it).

    The box head's class score says whether a box holds a cell, not how sure the mask head is of the outline it
    drew; the competition metric counts a detection as a false positive at every IoU threshold its mask misses,
    so a score that also knows the mask's confidence ranks the detections the metric rewards first."""
    probs = masks.float().flatten(1)
    inside = probs > threshold
    return (probs * inside).sum(1) / inside.sum(1).clamp(min=1)


def _exact_windows(boxes: torch.Tensor, shape: tuple[int, int]) -> list[tuple[int, int, int, int] | None]:
    """Each box's window of image pixels (ix0, iy0, ix1, iy1) under exact geometry (None: empty)."""
    height, width = int(shape[0]), int(shape[1])
    out = []
    for x0, y0, x1, y1 in boxes.detach().to("cpu", torch.float64).tolist():
        if not (x1 > x0 and y1 > y0):
            out.append(None)
            continue
        ix0, iy0 = max(math.floor(x0), 0), max(math.floor(y0), 0)
        ix1, iy1 = min(math.ceil(x1), width), min(math.ceil(y1), height)
        out.append((ix0, iy0, ix1, iy1) if ix1 > ix0 and iy1 > iy0 else None)
    return out


def _exact_crop(mask: torch.Tensor, box: list[float], window: tuple[int, int, int, int]) -> torch.Tensor:
    """One ``(1, M, M)`` mask resampled at the centres of the image pixels of ``window`` → ``(h, w)``."""
    x0, y0, x1, y1 = box
    ix0, iy0, ix1, iy1 = window
    xs = (torch.arange(ix0, ix1, device=mask.device, dtype=mask.dtype) + 0.5 - x0) / (x1 - x0) * 2 - 1
    ys = (torch.arange(iy0, iy1, device=mask.device, dtype=mask.dtype) + 0.5 - y0) / (y1 - y0) * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # (1, h, w, 2) as (x, y)
    return F.grid_sample(mask[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(N, 1, M, M)`` mask probabilities → ``(N, 1, H, W)`` in the image, resampled at pixel centres.

    Dense: N full-size masks. Prediction uses :func:`paste_sparse`, which keeps each mask
    box-sized; this is for measuring the geometry.
    """
    out = masks.new_zeros((masks.shape[0], 1, int(shape[0]), int(shape[1])))
    b = boxes.detach().to("cpu", torch.float64).tolist()
    for k, window in enumerate(_exact_windows(boxes, shape)):
        if window is not None:
            ix0, iy0, ix1, iy1 = window
            out[k, 0, iy0:iy1, ix0:ix1] = _exact_crop(masks[k], b[k], window)
    return out


def _stock_crops(masks: torch.Tensor, boxes: torch.Tensor, shape: tuple[int, int]):
    """torchvision's ``paste_masks_in_image`` (boxes grown by (M+2)/M, integer rounded), one box-sized crop at a time."""
    height, width = int(shape[0]), int(shape[1])
    padded, scale = tv_roi_heads.expand_masks(masks, padding=1)
    grown = tv_roi_heads.expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()
    for k, (bx0, by0, bx1, by1) in enumerate(grown):
        w, h = max(int(bx1 - bx0 + 1), 1), max(int(by1 - by0 + 1), 1)
        x_0, x_1 = max(bx0, 0), min(bx1 + 1, width)
        y_0, y_1 = max(by0, 0), min(by1 + 1, height)
        if x_1 <= x_0 or y_1 <= y_0:
            yield k, None, None
            continue
        m = F.interpolate(padded[k][None].expand(1, 1, -1, -1), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        yield k, (x_0, y_0, x_1, y_1), m[y_0 - by0 : y_1 - by0, x_0 - bx0 : x_1 - bx0]


def paste_sparse(
    masks: torch.Tensor, boxes: torch.Tensor, shape: tuple[int, int], threshold: float, geometry: str = "exact"
) -> sp.csr_matrix:
    """``(N, 1, M, M)`` mask probabilities → the binary masks in the image as a sparse ``(N, H·W)`` matrix.

    Each mask is resampled over its box's pixels only and thresholded there (``> threshold``),
    so memory and time grow with the boxes' area — never N full-size masks, which for a
    thousand detections on a large image would need gigabytes. ``geometry``: ``exact``
    (pixel centres, as detectron2) or ``torchvision`` (its stock paste), the same pixels
    either would give pasted densely.
    """
    n = masks.shape[0]
    height, width = int(shape[0]), int(shape[1])
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    if geometry == "exact":
        b = boxes.detach().to("cpu", torch.float64).tolist()
        windows = _exact_windows(boxes, shape)
        crops = ((k, w, None if w is None else _exact_crop(masks[k], b[k], w)) for k, w in enumerate(windows))
    else:
        crops = _stock_crops(masks, boxes, shape)
    for k, window, crop in crops:
        if window is None:
            continue
        x_0, y_0 = window[0], window[1]
        ys, xs = torch.nonzero(crop > threshold, as_tuple=True)
        if len(ys):
            flat = (ys.cpu().numpy().astype(np.int64) + y_0) * width + xs.cpu().numpy().astype(np.int64) + x_0
            rows.append(np.full(len(flat), k, np.int64))
            cols.append(flat)
    if not rows:
        return sp.csr_matrix((n, height * width), dtype=np.float32)
    r, c = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(n, height * width))


class SparseTransform(GeneralizedRCNNTransform):
    """torchvision's input/output transform, leaving the masks to be pasted sparsely.

    torchvision's ``postprocess`` pastes every detection's mask into a full-size image
    (N × H × W floats: 1.5 GB for a thousand detections on one 704×520 image). Here it
    only maps the boxes back to the image; ``masks`` stay the ``(N, 1, M, M)``
    probabilities and :func:`paste_sparse` pastes them box by box with the model's
    ``geometry``.
    """

    geometry = "torchvision"
    mask_box_scale = 1.0  # masks predicted over the boxes × this (model.mask_box_scale): pasted there

    def postprocess(
        self, result: list[dict], image_shapes: list[tuple[int, int]], original_image_sizes: list[tuple[int, int]]
    ) -> list[dict]:
        if self.training:
            return result
        for pred, shape, original in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], shape, original)
            if self.mask_box_scale != 1.0:
                pred["mask_rois"] = scale_boxes(pred["boxes"], self.mask_box_scale)
        return result


class ExactTransform(SparseTransform):
    """:class:`SparseTransform` resizing like cellpipe's training data, for exact geometry.

    Inference images are resized with antialiasing, as :mod:`cellpipe.models.rcnn` resizes the
    training images (torchvision's own resize has none, so a downscaled test image would
    look sharper than anything seen in training), and masks are pasted at pixel centres.
    """

    geometry = "exact"

    def resize(self, image: torch.Tensor, target: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        if self.training and self._skip_resize:
            return image, target
        h, w = image.shape[-2:]
        size = input_size(h, w, self.min_size[-1], self.max_size)
        if size == (h, w):
            return image, target
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), size)
            if "masks" in target:
                target["masks"] = F.interpolate(target["masks"][:, None].float(), size=size)[:, 0].byte()
        return image, target


def sparse_transform(model: MaskRCNN, geometry: str) -> None:
    """Give ``model`` the transform of ``geometry`` that leaves masks unpasted (no state: weights unchanged)."""
    t = model.transform
    cls = ExactTransform if geometry == "exact" else SparseTransform
    model.transform = cls(
        t.min_size, t.max_size, t.image_mean, t.image_std, size_divisible=t.size_divisible, fixed_size=t.fixed_size
    )


def exact_geometry(model: MaskRCNN) -> None:
    """Give a torchvision Mask R-CNN exact mask targets, exact pasting and small initial mask logits.

    The mask logits start near zero (N(0, 0.001), bias 0, as detectron2 initialises
    them): a cell's first mask predictions are uncertain everywhere instead of carrying
    the random structure of a Kaiming-initialised layer.
    """
    sparse_transform(model, "exact")  # the exact mask loss: torchvision_heads.CellRoIHeads (exact_masks)
    logits = model.roi_heads.mask_predictor.mask_fcn_logits
    torch.nn.init.normal_(logits.weight, std=0.001)
    torch.nn.init.zeros_(logits.bias)
