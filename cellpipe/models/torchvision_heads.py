"""What torchvision's Mask R-CNN does differently from detectron2's, each as a switch (``model`` params).

On the synthetic default detectron2 led torchvision 0.418 vs 0.384 on the lockbox with the
same layers and budget, the gap at IoU 0.5 (finding cells). The differences left, each
applied to a built torchvision model by :func:`apply`:

- ``roi_align: aligned`` — RoI features pooled with ``roi_align(aligned=True)`` for the
  box and the mask head (detectron2's ROIAlignV2). torchvision's ``MultiScaleRoIAlign``
  pools half a feature cell off (``aligned=False``) while the exact mask targets are
  aligned: features and targets sit 2 px apart at P2, a tenth of a small cell.
- ``head_init: detectron2`` — box-head FC layers ``c2_xavier_fill`` (Kaiming uniform,
  a = 1), convolutions in the heads ``c2_msra_fill`` (Kaiming normal, fan out), class
  scores N(0, 0.01), box deltas N(0, 0.001), biases 0.
- ``box_loss_beta`` — the smooth-L1 β of the RPN's and the RoI head's box losses
  (torchvision 1/9; detectron2 0, plain L1).

And one of cellpipe's own, ``mask_box_scale``: the mask head pools, learns and predicts over each box
grown about its centre, so a mask can reach past a box drawn around a cell's body (astro's thin
processes, which the boxes miss); the targets and the paste use the same grown boxes. And
``mask_dice_weight``: a Dice term beside the mask head's BCE (``masks.dice_loss``).

Weight decay on norm layers (detectron2: none) is the optimiser's (``weight_decay_norm``
of the training params); GroupNorm in the backbone is ``model.norm: group``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from cellpipe.config import Model

TORCHVISION_BETA = 1 / 9


class AlignedRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` with ``aligned=True``: a box's corners at pixel corners, features sampled at
    pixel centres (detectron2's ROIAlignV2). No state of its own: checkpoints are unchanged."""

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]):
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale, self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        pool = partial(roi_align, output_size=self.output_size, sampling_ratio=self.sampling_ratio, aligned=True)
        if len(features) == 1:
            return pool(features[0], rois, spatial_scale=self.scales[0])
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == level)[0]
            result[idx] = pool(feature, rois[idx], spatial_scale=scale).to(result.dtype)
        return result


def _box_loss(class_logits, box_regression, labels, regression_targets, *, beta: float):
    """torchvision's ``fastrcnn_loss`` with the smooth-L1 β as a parameter (0: L1)."""
    labels = torch.cat(labels, dim=0)
    regression_targets = torch.cat(regression_targets, dim=0)
    classification_loss = F.cross_entropy(class_logits, labels)
    positive = torch.where(labels > 0)[0]
    n = class_logits.shape[0]
    box_regression = box_regression.reshape(n, box_regression.size(-1) // 4, 4)
    box_loss = F.smooth_l1_loss(box_regression[positive, labels[positive]], regression_targets[positive], beta=beta,
                                reduction="sum")  # fmt: skip
    return classification_loss, box_loss / labels.numel()


class GrownBoxPool(nn.Module):
    """A mask RoI pooler fed each box grown ×``factor`` (``model.mask_box_scale``). No parameters of its
    own (nor has the pooler it wraps): checkpoints are unchanged."""

    def __init__(self, pool: nn.Module, factor: float):
        super().__init__()
        self.pool, self.factor = pool, factor

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]):
        from cellpipe.models import masks

        return self.pool(x, [masks.scale_boxes(b, self.factor) for b in boxes], image_shapes)


class CellRoIHeads(RoIHeads):
    """torchvision's RoI heads with cellpipe's losses: exact mask targets (``exact_masks``), with a Dice term
    beside their BCE (``mask_dice``), and the box loss's smooth-L1 β (``box_beta``). torchvision calls
    module-level loss functions from inside ``forward``; they are swapped for this model's forward only, and
    put back after, whatever happens. No state of its own: only the losses differ."""

    exact_masks = False
    box_beta = TORCHVISION_BETA
    mask_dice = 0.0
    cell_scores = False  # predict.scores: cell (a predict-time setting, never in the state dict)

    def forward(self, *args, **kwargs):
        from cellpipe.models import masks

        saved = tv_roi_heads.maskrcnn_loss, tv_roi_heads.fastrcnn_loss
        if self.exact_masks:
            grown = getattr(self.mask_roi_pool, "factor", 1.0)  # GrownBoxPool's: targets from the boxes it pooled
            tv_roi_heads.maskrcnn_loss = (
                partial(masks.mask_loss, box_scale=grown, dice_weight=self.mask_dice)
                if (grown, self.mask_dice) != (1.0, 0.0)
                else masks.mask_loss
            )
        if self.box_beta != TORCHVISION_BETA:
            tv_roi_heads.fastrcnn_loss = partial(_box_loss, beta=self.box_beta)
        try:
            return super().forward(*args, **kwargs)
        finally:
            tv_roi_heads.maskrcnn_loss, tv_roi_heads.fastrcnn_loss = saved

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        if not self.cell_scores:
            return super().postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        return cell_detections(self, class_logits, box_regression, proposals, image_shapes)


def cell_detections(heads: RoIHeads, class_logits, box_regression, proposals, image_shapes):
    """One detection per proposal, scored 1 − P(background) and labelled with its likeliest type
    (``predict.scores: cell``), then one box NMS over every type.

    torchvision emits a proposal once per type it passes, each scored by that type's probability alone: a cell
    the box head cannot place between two types (astro bodies that look like cort) comes out twice at half
    its confidence, and overlap removal keeps one of the halves. Every image holds one cell type, which the
    image's vote decides; what a cell needs is its probability of being a cell. The box is the likeliest
    type's regression, the mask head predicts that type's mask, as it does for torchvision's detections.
    """
    from torchvision.ops import boxes as box_ops

    counts = [len(p) for p in proposals]
    boxes_all = heads.box_coder.decode(box_regression, proposals).reshape(*class_logits.shape, 4)  # (N, classes, 4), N ≥ 0
    probs_all = F.softmax(class_logits, -1)
    out_boxes, out_scores, out_labels = [], [], []
    for boxes, probs, shape in zip(boxes_all.split(counts, 0), probs_all.split(counts, 0), image_shapes):
        labels = probs[:, 1:].argmax(dim=1) + 1
        scores = probs[:, 1:].sum(dim=1)  # 1 − P(background), without its rounding
        boxes = box_ops.clip_boxes_to_image(boxes[torch.arange(len(labels), device=labels.device), labels], shape)
        keep = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.nms(boxes, scores, heads.nms_thresh)[: heads.detections_per_img]
        out_boxes.append(boxes[keep])
        out_scores.append(scores[keep])
        out_labels.append(labels[keep])
    return out_boxes, out_scores, out_labels


class CellRPN(RegionProposalNetwork):
    """torchvision's RPN with the smooth-L1 β of its box loss as a parameter (``box_beta``)."""

    box_beta = TORCHVISION_BETA

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        positive, negative = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(positive, dim=0))[0]
        negative = torch.where(torch.cat(negative, dim=0))[0]
        sampled = torch.cat([positive, negative], dim=0)
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        box_loss = F.smooth_l1_loss(pred_bbox_deltas[positive], regression_targets[positive], beta=self.box_beta,
                                    reduction="sum") / sampled.numel()  # fmt: skip
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return objectness_loss, box_loss


def detectron2_init(model: MaskRCNN) -> None:
    """Initialise the box and mask heads as detectron2 does (see the module doc)."""
    heads = model.roi_heads
    for module in heads.box_head.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, a=1)  # c2_xavier_fill
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")  # c2_msra_fill
        if isinstance(module, nn.Linear | nn.Conv2d) and module.bias is not None:
            nn.init.zeros_(module.bias)
    nn.init.normal_(heads.box_predictor.cls_score.weight, std=0.01)
    nn.init.normal_(heads.box_predictor.bbox_pred.weight, std=0.001)
    for layer in (heads.box_predictor.cls_score, heads.box_predictor.bbox_pred):
        nn.init.zeros_(layer.bias)
    mask_layers = [*heads.mask_head.modules(), heads.mask_predictor.conv5_mask]
    for module in mask_layers:
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    logits = heads.mask_predictor.mask_fcn_logits
    nn.init.normal_(logits.weight, std=0.001)
    nn.init.zeros_(logits.bias)


def apply(model: MaskRCNN, cfg: Model) -> None:
    """Set ``cfg``'s detectron2-parity switches on a freshly built model (pooling, losses, initialisation)."""
    model.roi_heads.__class__ = CellRoIHeads
    model.roi_heads.exact_masks = cfg.mask_geometry == "exact"
    model.roi_heads.box_beta = cfg.box_loss_beta
    model.roi_heads.mask_dice = cfg.mask_dice_weight
    if cfg.box_loss_beta != TORCHVISION_BETA:
        model.rpn.__class__ = CellRPN
        model.rpn.box_beta = cfg.box_loss_beta
    if cfg.roi_align == "aligned":
        for name in ("box_roi_pool", "mask_roi_pool"):
            pooler = getattr(model.roi_heads, name)
            pooler.__class__ = AlignedRoIAlign
    if cfg.head_init == "detectron2":
        detectron2_init(model)
    if cfg.mask_box_scale != 1.0:  # the config allows it with exact geometry only (its loss and paste)
        model.roi_heads.mask_roi_pool = GrownBoxPool(model.roi_heads.mask_roi_pool, cfg.mask_box_scale)
        model.transform.mask_box_scale = cfg.mask_box_scale  # pastes the masks over the boxes they were predicted in
