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

import torch
import torch.nn.functional as F
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import roi_align

from cellpipe.images import input_size


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
) -> torch.Tensor:
    """torchvision's ``maskrcnn_loss`` (same signature) with :func:`mask_targets` as targets."""
    size = mask_logits.shape[-1]
    labels = torch.cat([lab[idx] for lab, idx in zip(gt_labels, matched)], dim=0)
    targets = torch.cat([mask_targets(m, p, i, size) for m, p, i in zip(gt_masks, proposals, matched)], dim=0)
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    picked = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(picked, targets)


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(N, 1, M, M)`` mask probabilities → ``(N, 1, H, W)`` in the image, resampled at pixel centres.

    Each mask is resampled only over the pixels its box touches (as detectron2 does on
    CPU), so the cost grows with the boxes' area, not N × the image size.
    """
    n = masks.shape[0]
    height, width = int(shape[0]), int(shape[1])
    out = masks.new_zeros((n, 1, height, width))
    if n == 0:
        return out
    b = boxes.detach().to("cpu", torch.float64).tolist()
    for k, (x0, y0, x1, y1) in enumerate(b):
        if not (x1 > x0 and y1 > y0):
            continue
        ix0, iy0 = max(math.floor(x0), 0), max(math.floor(y0), 0)
        ix1, iy1 = min(math.ceil(x1), width), min(math.ceil(y1), height)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        xs = (torch.arange(ix0, ix1, device=masks.device, dtype=masks.dtype) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(iy0, iy1, device=masks.device, dtype=masks.dtype) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # (1, h, w, 2) as (x, y)
        out[k, :, iy0:iy1, ix0:ix1] = F.grid_sample(
            masks[k : k + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )[0]
    return out


class ExactTransform(GeneralizedRCNNTransform):
    """torchvision's input/output transform, resizing like cellpipe's training data and pasting exactly.

    Inference images are resized with antialiasing, as :mod:`cellpipe.data` resizes the
    training images (torchvision's own resize has none, so a downscaled test image would
    look sharper than anything seen in training), and masks are pasted by
    :func:`paste_masks`.
    """

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

    def postprocess(
        self, result: list[dict], image_shapes: list[tuple[int, int]], original_image_sizes: list[tuple[int, int]]
    ) -> list[dict]:
        if self.training:
            return result
        for pred, shape, original in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], shape, original)
            if "masks" in pred:
                pred["masks"] = paste_masks(pred["masks"], pred["boxes"], original)
        return result


class ExactRoIHeads(RoIHeads):
    """torchvision's RoI heads with :func:`mask_loss` as the mask loss.

    torchvision calls its module-level ``maskrcnn_loss`` from inside ``forward``; it is
    swapped for this model's forward only, and put back after, whatever happens.
    """

    def forward(self, *args, **kwargs):
        original = tv_roi_heads.maskrcnn_loss
        tv_roi_heads.maskrcnn_loss = mask_loss
        try:
            return super().forward(*args, **kwargs)
        finally:
            tv_roi_heads.maskrcnn_loss = original


def exact_geometry(model: MaskRCNN) -> None:
    """Give a torchvision Mask R-CNN exact mask targets, exact pasting and small initial mask logits.

    The mask logits start near zero (N(0, 0.001), bias 0, as detectron2 initialises
    them): a cell's first mask predictions are uncertain everywhere instead of carrying
    the random structure of a Kaiming-initialised layer.
    """
    t = model.transform
    model.transform = ExactTransform(
        t.min_size, t.max_size, t.image_mean, t.image_std, size_divisible=t.size_divisible, fixed_size=t.fixed_size
    )
    model.roi_heads.__class__ = ExactRoIHeads  # adds no state: only the loss differs
    logits = model.roi_heads.mask_predictor.mask_fcn_logits
    torch.nn.init.normal_(logits.weight, std=0.001)
    torch.nn.init.zeros_(logits.bias)
