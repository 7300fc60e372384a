"""Model construction and checkpoints, for both backends.

torchvision's Mask R-CNN is the default backend; ``model.backend: detectron2`` builds
detectron2's instead (:mod:`cellpipe.models.d2`, imported only then) behind the same
calling convention, so training, prediction and checkpoints work the same way. ``build`` turns the ``model`` params into a
network: a ResNet-FPN backbone of chosen depth and width (the CPU default is a narrow
ResNet-18 FPN with light heads; the GPU recipe is the stock R50-FPN), anchors sized for
cells, thousands of detections per image. ``initialise`` loads a checkpoint (or
torchvision weights when they can be downloaded), re-initialising only the
class-specific heads when the class count differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cellpipe import checkpoints
from cellpipe.errors import CellpipeError

# heads whose shape depends on the number of classes
CLASS_SPECIFIC = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture knobs (the ``model`` params section)."""

    backend: str = "torchvision"  # torchvision | detectron2
    d2_config: str = ""  # detectron2 only: model-zoo name or YAML path; "" = the knobs below
    backbone: str = "resnet18"
    norm: str = "group"  # backbone: group | batch | frozen
    head_norm: str = "group"  # FPN, box and mask heads: group | none (the from-scratch recipe needs one)
    box_head_convs: int = 0
    fpn_channels: int = 64
    box_head_dim: int = 256
    mask_head_channels: int = 64
    mask_head_layers: int = 2
    anchor_sizes: tuple = (8, 16, 32, 64, 128)  # per FPN level: one size, or a tuple of sizes
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_fg_iou: float = 0.7  # an anchor is a positive at IoU ≥ this with a cell ...
    rpn_bg_iou: float = 0.3  # ... and a negative below this
    mask_geometry: str = "exact"  # exact (pixel-centre targets and paste) | torchvision (its stock ones)
    mask_resolution: int = 28  # side of the predicted mask (28 or 56)
    min_size: int = 260
    max_size: int = 352
    detections_per_img: int = 1000
    rpn_batch_per_image: int = 256
    roi_batch_per_image: int = 128
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 3000
    rpn_post_nms_test: int = 3000
    box_nms_thresh: float = 0.5
    box_score_thresh: float = 0.05
    mask_threshold: float = 0.5
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ModelConfig:
        """From the ``model`` params section or a checkpoint's stored config (lists become tuples)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: _tuple(v) for k, v in params.items() if k in known})

    def level_sizes(self) -> tuple[tuple[int, ...], ...]:
        """Anchor sizes per FPN level, each a tuple."""
        return tuple(tuple(int(x) for x in s) if isinstance(s, tuple | list) else (int(s),) for s in self.anchor_sizes)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _tuple(v: Any) -> Any:
    return tuple(_tuple(x) for x in v) if isinstance(v, list | tuple) else v


def _norm_layer(kind: str):
    if kind == "group":
        return lambda c: nn.GroupNorm(min(32, max(1, c // 16)), c)
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "frozen":
        from torchvision.ops.misc import FrozenBatchNorm2d

        return FrozenBatchNorm2d
    raise CellpipeError(f"model.norm must be group, batch or frozen, got {kind!r}")


BACKENDS = ("torchvision", "detectron2")


def build(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """A Mask R-CNN with ``num_classes`` foreground classes, randomly initialised."""
    if cfg.backend == "detectron2":
        from cellpipe.models import d2

        d2.require()
        return d2.Detectron2MaskRCNN(cfg, num_classes)
    if cfg.backend != "torchvision":
        raise CellpipeError(f"model.backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    if cfg.backbone not in ("resnet18", "resnet34", "resnet50", "resnet101"):
        raise CellpipeError(f"model.backbone must be resnet18/34/50/101, got {cfg.backbone!r}")
    body = getattr(resnet, cfg.backbone)(weights=None, norm_layer=_norm_layer(cfg.norm))
    expansion = 4 if cfg.backbone in ("resnet50", "resnet101") else 1
    in_channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    if cfg.head_norm not in ("group", "none"):
        raise CellpipeError(f"model.head_norm must be group or none, got {cfg.head_norm!r}")
    head_norm = _norm_layer("group") if cfg.head_norm == "group" else None
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               in_channels, cfg.fpn_channels, extra_blocks=LastLevelMaxPool(), norm_layer=head_norm)
    sizes = cfg.level_sizes()
    if len(sizes) != 5 or len({len(s) for s in sizes}) != 1:
        raise CellpipeError(f"model.anchor_sizes needs 5 FPN levels with the same number of sizes each, "
                            f"got {list(cfg.anchor_sizes)}")
    anchors = AnchorGenerator(sizes, (tuple(cfg.aspect_ratios),) * 5)
    if cfg.mask_geometry not in ("exact", "torchvision"):
        raise CellpipeError(f"model.mask_geometry must be exact or torchvision, got {cfg.mask_geometry!r}")
    c = cfg.fpn_channels
    mask_layers = [cfg.mask_head_channels] * cfg.mask_head_layers
    model = MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        image_mean=[0.0, 0.0, 0.0],  # images arrive normalised per image (cellpipe.data)
        image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_test,
        rpn_batch_size_per_image=cfg.rpn_batch_per_image,
        rpn_fg_iou_thresh=cfg.rpn_fg_iou,
        rpn_bg_iou_thresh=cfg.rpn_bg_iou,
        box_head=(FastRCNNConvFCHead((c, 7, 7), [c] * cfg.box_head_convs, [cfg.box_head_dim], norm_layer=head_norm)
                  if cfg.box_head_convs or head_norm else TwoMLPHead(c * 7 * 7, cfg.box_head_dim)),
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, num_classes + 1),
        box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.detections_per_img,
        box_batch_size_per_image=cfg.roi_batch_per_image,
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=cfg.mask_resolution // 2, sampling_ratio=2),
        mask_head=MaskRCNNHeads(c, mask_layers, 1, norm_layer=head_norm),
        mask_predictor=MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], num_classes + 1),
    )
    if cfg.mask_geometry == "exact":
        from cellpipe.models import masks

        masks.exact_geometry(model)
    # training inputs arrive at the model's scale already (cellpipe.data crops them);
    # only inference resizes, from the full image to min_size/max_size
    model.transform._skip_resize = True
    return model


def test_head(model: nn.Module) -> Any:
    """The object holding the test-time ``score_thresh`` and ``detections_per_img`` of either backend."""
    return model.roi_heads if isinstance(model, MaskRCNN) else model


def is_detectron2(model: nn.Module) -> bool:
    return hasattr(model, "net") and hasattr(model, "class_specific")


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load a cellpipe checkpoint as data (never code), with a one-line error when unusable."""
    ckpt = checkpoints.load(path, map_location)
    if "model" not in ckpt:
        raise CellpipeError("not a cellpipe checkpoint (no 'model' state)", where=str(path))
    return ckpt


def initialise(model: nn.Module, init: str, *, where: str = "init") -> str:
    """Initialise ``model`` from ``init``: 'none', 'imagenet', 'coco' or a checkpoint path.

    Returns a short description of what was loaded. With a checkpoint, every tensor
    must match except the class-specific heads, which are kept at their random
    initialisation when the class count differs.
    """
    if init in ("none", ""):
        return "random initialisation"
    detectron2 = is_detectron2(model)
    if init in ("imagenet", "coco"):
        if detectron2:
            raise CellpipeError(f"init {init!r} downloads torchvision weights; with model.backend detectron2 give a "
                                f"detectron2 checkpoint path (.pth/.pkl) instead")
        return _torchvision_weights(model, init)
    if detectron2 and str(init).endswith(".pkl"):  # model-zoo / LIVECell pickles
        from cellpipe.models import d2

        return d2.load_detectron2_checkpoint(model, init)
    ckpt = load_checkpoint(init)
    if detectron2 and "model_config" not in ckpt:  # a detectron2 .pth, not one of ours
        from cellpipe.models import d2

        return d2.load_detectron2_checkpoint(model, init)
    class_specific = getattr(model, "class_specific", CLASS_SPECIFIC)
    state = ckpt["model"]
    own = model.state_dict()
    skipped = []
    for key, value in own.items():
        if key not in state:
            raise CellpipeError(f"checkpoint lacks {key}: it was trained with another architecture "
                                f"(compare the model params)", where=str(init))
        if state[key].shape != value.shape:
            if key.startswith(class_specific):
                skipped.append(key)
                continue
            raise CellpipeError(f"{key} has shape {tuple(state[key].shape)} in the checkpoint but "
                                f"{tuple(value.shape)} in the model: another architecture", where=str(init))
    model.load_state_dict({k: v for k, v in state.items() if k in own and k not in skipped}, strict=False)
    if skipped:
        return f"{init} (class-specific heads re-initialised: {len(skipped)} tensors)"
    return str(init)


def _torchvision_weights(model: MaskRCNN, which: str) -> str:
    """ImageNet backbone or COCO Mask R-CNN weights from torchvision (needs a download)."""
    from torchvision.models import get_model_weights

    try:
        if which == "imagenet":
            blocks = model.backbone.body
            n3 = len(blocks.layer3)
            expansion_4 = hasattr(blocks.layer1[0], "conv3")
            arch = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50", (True, 23): "resnet101"}[
                (expansion_4, n3)]
            weights = get_model_weights(arch).DEFAULT
            state = weights.get_state_dict(progress=False)
            missing = model.backbone.body.load_state_dict(
                {k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
            return f"torchvision ImageNet {arch} backbone ({len(missing.missing_keys)} keys left random)"
        weights = get_model_weights("maskrcnn_resnet50_fpn").DEFAULT
        state = weights.get_state_dict(progress=False)
    except KeyError:
        raise CellpipeError(f"no torchvision {which} weights for this backbone") from None
    except Exception as exc:  # URLError, HTTPError, OSError when offline
        raise CellpipeError(
            f"could not download torchvision {which} weights ({exc.__class__.__name__}); this machine seems "
            f"offline: use init 'none' or a checkpoint path") from None
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) // 2:
        raise CellpipeError("torchvision COCO weights need model.backbone resnet50 with fpn_channels 256, "
                            "box_head_dim 1024, mask_head_channels 256, mask_head_layers 4")
    model.load_state_dict(usable, strict=False)
    return f"torchvision COCO Mask R-CNN ({len(usable)}/{len(own)} tensors)"
