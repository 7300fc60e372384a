"""torchvision's Mask R-CNN, built from the ``model`` params (the default family).

A ResNet-FPN backbone of chosen depth and width (the CPU default is a narrow ResNet-18
FPN with light heads; the GPU recipe is the stock R50-FPN), anchors sized for cells,
thousands of detections per image, and — unless ``model.mask_geometry`` says
otherwise — exact mask geometry (:mod:`cellpipe.models.masks`). Initialisation from
torchvision's ImageNet/COCO weights needs a download and says so clearly offline.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cellpipe.config import Model
from cellpipe.errors import CellpipeError
from cellpipe.models import Limits, masks, torchvision_heads
from cellpipe.models.rcnn import RCNNFamily


class TorchvisionMaskRCNN(RCNNFamily):
    name = "torchvision Mask R-CNN"
    # heads whose shape depends on the number of classes
    class_specific = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")

    def build(self, cfg: Model, num_classes: int) -> nn.Module:
        return build(cfg, num_classes)

    def initialise(self, model: nn.Module, init: str) -> str:
        if init in ("imagenet", "coco"):
            return _torchvision_weights(model, init)
        return super().initialise(model, init)

    def _limits_holder(self, model: nn.Module):
        return model.roi_heads

    def _inference_proposals(self, model: nn.Module) -> tuple[dict, object]:
        return model.rpn._post_nms_top_n, "testing"  # {"training": n, "testing": n}

    def limits(self, model: nn.Module) -> Limits:
        return replace(super().limits(model), cell_scores=bool(getattr(model.roi_heads, "cell_scores", False)))

    def set_limits(self, model: nn.Module, limits: Limits) -> None:
        super().set_limits(model, limits)
        if limits.cell_scores is not None:
            model.roi_heads.cell_scores = bool(limits.cell_scores)  # CellRoIHeads' (torchvision_heads.apply)


def _norm_layer(kind: str):
    if kind == "group":
        return lambda c: nn.GroupNorm(min(32, max(1, c // 16)), c)
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "frozen":
        from torchvision.ops.misc import FrozenBatchNorm2d

        return FrozenBatchNorm2d
    raise ValueError(kind)


def build(cfg: Model, num_classes: int) -> MaskRCNN:
    """A Mask R-CNN with ``num_classes`` foreground classes, randomly initialised."""
    body = getattr(resnet, cfg.backbone)(weights=None, norm_layer=_norm_layer(cfg.norm))
    expansion = 4 if cfg.backbone in ("resnet50", "resnet101") else 1
    in_channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    head_norm = _norm_layer("group") if cfg.head_norm == "group" else None
    backbone = BackboneWithFPN(
        body,
        {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels,
        cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=head_norm,
    )
    anchors = AnchorGenerator(cfg.level_sizes(), (tuple(cfg.aspect_ratios),) * 5)
    c = cfg.fpn_channels
    mask_layers = [cfg.mask_head_channels] * cfg.mask_head_layers
    model = MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        image_mean=[0.0, 0.0, 0.0],  # images arrive normalised per image (cellpipe.models.rcnn)
        image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_test,
        rpn_batch_size_per_image=cfg.rpn_batch_per_image,
        rpn_fg_iou_thresh=cfg.rpn_fg_iou,
        rpn_bg_iou_thresh=cfg.rpn_bg_iou,
        box_head=(
            FastRCNNConvFCHead((c, 7, 7), [c] * cfg.box_head_convs, [cfg.box_head_dim], norm_layer=head_norm)
            if cfg.box_head_convs or head_norm
            else TwoMLPHead(c * 7 * 7, cfg.box_head_dim)
        ),
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, num_classes + 1),
        box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.detections_per_img,
        box_batch_size_per_image=cfg.roi_batch_per_image,
        box_positive_fraction=cfg.roi_positive_fraction,
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=cfg.mask_resolution // 2, sampling_ratio=2),
        mask_head=MaskRCNNHeads(c, mask_layers, 1, norm_layer=head_norm),
        mask_predictor=MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], num_classes + 1),
    )
    if cfg.mask_geometry == "exact":
        masks.exact_geometry(model)
    else:
        masks.sparse_transform(model, "torchvision")
    torchvision_heads.apply(model, cfg)
    # training inputs arrive at the model's scale already (cellpipe.models.rcnn crops them);
    # only inference resizes, from the full image to min_size/max_size
    model.transform._skip_resize = True
    return model


def _torchvision_weights(model: MaskRCNN, which: str) -> str:
    """ImageNet backbone or COCO Mask R-CNN weights from torchvision (needs a download)."""
    from torchvision.models import get_model_weights

    try:
        if which == "imagenet":
            blocks = model.backbone.body
            n3 = len(blocks.layer3)
            expansion_4 = hasattr(blocks.layer1[0], "conv3")
            arch = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50", (True, 23): "resnet101"}[
                (expansion_4, n3)
            ]
            weights = get_model_weights(arch).DEFAULT
            state = weights.get_state_dict(progress=False)
            missing = model.backbone.body.load_state_dict(
                {k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False
            )
            return f"torchvision ImageNet {arch} backbone ({len(missing.missing_keys)} keys left random)"
        weights = get_model_weights("maskrcnn_resnet50_fpn").DEFAULT
        state = weights.get_state_dict(progress=False)
    except KeyError:
        raise CellpipeError(f"no torchvision {which} weights for this backbone") from None
    except Exception as exc:  # URLError, HTTPError, OSError when offline
        raise CellpipeError(
            f"could not download torchvision {which} weights ({exc.__class__.__name__}); this machine seems "
            f"offline: use init 'none' or a checkpoint path"
        ) from None
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) // 2:
        raise CellpipeError(
            "torchvision COCO weights need model.backbone resnet50 with fpn_channels 256, "
            "box_head_dim 1024, mask_head_channels 256, mask_head_layers 4"
        )
    model.load_state_dict(usable, strict=False)
    return f"torchvision COCO Mask R-CNN ({len(usable)}/{len(own)} tensors)"
