"""The detectron2 backend: detectron2's Mask R-CNN behind torchvision's calling convention.

:class:`Detectron2MaskRCNN` wraps a detectron2 ``GeneralizedRCNN`` so that it takes
and returns exactly what torchvision's ``MaskRCNN`` does (a list of 3×H×W float images;
in training, targets with ``boxes``/``labels``/``masks`` → a dict of losses; in
evaluation, per image ``boxes``/``scores``/``labels``/``masks`` at the input's size).
Everything around the model — the data, the training engine with its eval-every-N,
best-checkpoint keeping, resume and dvclive logs, prediction, thresholds, the metric and
the submission — is shared by both backends and cannot drift apart.

The architecture comes either from cellpipe's ``model`` params (mapped onto detectron2's
``Base-RCNN-FPN`` config, so both backends build the same network) or from a detectron2
config (``model.d2_config``: a model-zoo name such as
``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml`` or a YAML path such as
LIVECell's); the params always set the class count, the test-time limits and the
sampling sizes. detectron2 is imported only here, and only when this backend is chosen.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cellpipe import checkpoints
from cellpipe.errors import CellpipeError
from cellpipe.models import load_checkpoint
from cellpipe.models.rcnn import RCNNFamily

if TYPE_CHECKING:
    from cellpipe.config import Model

INSTALL_HINT = "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' 'setuptools<81'"
BASE_CONFIG = "Base-RCNN-FPN.yaml"
NORMS = {"group": "GN", "batch": "BN", "frozen": "FrozenBN"}


def _import() -> None:
    """Import the detectron2 modules this backend uses, without their deprecation noise."""
    with warnings.catch_warnings():
        # pkg_resources (model_zoo), torch.jit.script (structures): upstream's, not the user's concern
        warnings.simplefilter("ignore")
        import detectron2.checkpoint  # noqa: F401
        import detectron2.config  # noqa: F401
        import detectron2.model_zoo  # noqa: F401
        import detectron2.modeling  # noqa: F401
        import detectron2.structures  # noqa: F401
        import detectron2.utils.events  # noqa: F401
    warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
    # "is_fx_tracing will return true for both ...", logged once per process by torch for detectron2's code
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def available() -> bool:
    try:
        _import()
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


def require() -> None:
    """A one-line error with the install command when detectron2 cannot be imported."""
    try:
        _import()
    except Exception as exc:  # noqa: BLE001
        raise CellpipeError(
            f"model.backend is detectron2 but detectron2 cannot be imported "
            f"({exc.__class__.__name__}: {exc}); install it with: {INSTALL_HINT}"
        ) from None


def _config_file(name: str) -> str:
    if Path(name).is_file():
        return str(name)
    from detectron2 import model_zoo

    try:
        return model_zoo.get_config_file(name)
    except RuntimeError:
        raise CellpipeError(
            f"model.d2_config {name!r} is neither a YAML file nor a detectron2 model-zoo "
            f"config (e.g. COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml)"
        ) from None


def make_config(mc: Model, num_classes: int):
    """detectron2 ``CfgNode`` for ``mc``: the architecture from params or ``mc.d2_config``."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(_config_file(mc.d2_config or BASE_CONFIG))
    m = cfg.MODEL
    m.MASK_ON = True
    m.DEVICE = "cpu"  # moved with .to(device) like any module
    m.WEIGHTS = ""
    if not mc.d2_config:  # the same network as the torchvision backend builds from these params
        depth = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}.get(mc.backbone)
        if depth is None:
            raise CellpipeError(f"model.backbone must be resnet18/34/50/101, got {mc.backbone!r}")
        if mc.norm not in NORMS:
            raise CellpipeError(f"model.norm must be group, batch or frozen, got {mc.norm!r}")
        m.RESNETS.DEPTH = depth
        if depth < 50:
            m.RESNETS.RES2_OUT_CHANNELS = 64
        m.RESNETS.NORM = NORMS[mc.norm]
        m.BACKBONE.FREEZE_AT = 0  # nothing is pretrained: every stage learns
        head_norm = "GN" if mc.head_norm == "group" else ""
        if head_norm:  # detectron2's GroupNorm has 32 groups
            for key in ("fpn_channels", "mask_head_channels"):
                if getattr(mc, key) % 32:
                    raise CellpipeError(
                        f"model.{key} must be a multiple of 32 for detectron2's GroupNorm "
                        f"(head_norm: group), got {getattr(mc, key)}"
                    )
        m.FPN.OUT_CHANNELS = mc.fpn_channels
        m.FPN.NORM = head_norm
        if mc.box_head_convs or head_norm:
            m.ROI_BOX_HEAD.NUM_CONV, m.ROI_BOX_HEAD.CONV_DIM = mc.box_head_convs, mc.fpn_channels
            m.ROI_BOX_HEAD.NUM_FC, m.ROI_BOX_HEAD.NORM = 1, head_norm
        m.ROI_BOX_HEAD.FC_DIM = mc.box_head_dim
        m.ROI_MASK_HEAD.NUM_CONV, m.ROI_MASK_HEAD.CONV_DIM = mc.mask_head_layers, mc.mask_head_channels
        m.ROI_MASK_HEAD.NORM = head_norm
        m.ANCHOR_GENERATOR.SIZES = [list(s) for s in mc.level_sizes()]
        m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[float(a) for a in mc.aspect_ratios]]
        m.ROI_MASK_HEAD.POOLER_RESOLUTION = mc.mask_resolution // 2
    # images arrive normalised per image (cellpipe.models.rcnn): no second normalisation
    m.PIXEL_MEAN, m.PIXEL_STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    m.ROI_HEADS.NUM_CLASSES = num_classes
    m.ROI_HEADS.BATCH_SIZE_PER_IMAGE = mc.roi_batch_per_image
    m.ROI_HEADS.POSITIVE_FRACTION = mc.roi_positive_fraction
    m.ROI_HEADS.SCORE_THRESH_TEST = mc.box_score_thresh
    m.ROI_HEADS.NMS_THRESH_TEST = mc.box_nms_thresh
    m.RPN.BATCH_SIZE_PER_IMAGE = mc.rpn_batch_per_image
    m.RPN.IOU_THRESHOLDS = [mc.rpn_bg_iou, mc.rpn_fg_iou]
    m.RPN.PRE_NMS_TOPK_TRAIN, m.RPN.POST_NMS_TOPK_TRAIN = mc.rpn_pre_nms_train, mc.rpn_post_nms_train
    m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TEST = mc.rpn_pre_nms_test, mc.rpn_post_nms_test
    cfg.TEST.DETECTIONS_PER_IMAGE = mc.detections_per_img
    return cfg


def _predictor_knob(name: str) -> property:
    """A run-time setting of detectron2's box predictor, read and set on the wrapper."""
    return property(
        lambda self: getattr(self.net.roi_heads.box_predictor, name),
        lambda self, value: setattr(self.net.roi_heads.box_predictor, name, value),
    )


class Detectron2MaskRCNN(nn.Module):
    """detectron2's Mask R-CNN with torchvision's inputs and outputs (see the module doc)."""

    # heads whose shape depends on the number of classes
    class_specific = ("net.roi_heads.box_predictor.", "net.roi_heads.mask_head.predictor.")
    mask_geometry = "exact"  # detectron2 pastes at pixel centres

    def __init__(self, mc: Model, num_classes: int) -> None:
        super().__init__()
        from detectron2.modeling import build_model

        self.config = make_config(mc, num_classes)
        self.net = build_model(self.config)
        self.min_size, self.max_size = mc.min_size, mc.max_size
        self._iteration = 0

    # -- the knobs the engine and predict change at run time, under torchvision's names
    score_thresh = _predictor_knob("test_score_thresh")
    detections_per_img = _predictor_knob("test_topk_per_image")
    nms_thresh = _predictor_knob("test_nms_thresh")

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> Any:
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return self._losses(images, targets)
        return self._detect(images)

    def _losses(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        from detectron2.structures import BitMasks, Boxes, Instances
        from detectron2.utils.events import EventStorage

        inputs = []
        for image, t in zip(images, targets):
            inst = Instances(tuple(image.shape[-2:]))
            inst.gt_boxes = Boxes(t["boxes"].float())
            inst.gt_classes = t["labels"].long() - 1  # torchvision counts background as 0
            inst.gt_masks = BitMasks(t["masks"].bool())
            inputs.append({"image": image, "instances": inst})
        # detectron2's heads log training statistics into an event storage
        with EventStorage(self._iteration):
            losses = self.net(inputs)
        self._iteration += 1
        return losses

    def _detect(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections with boxes in the image and masks left unpasted (``(N, 1, M, M)`` probabilities).

        detectron2's own post-processing pastes every mask into a full-size image; here the
        boxes are scaled and clipped as ``detector_postprocess`` does and the masks are
        pasted box by box downstream (:func:`cellpipe.models.masks.paste_sparse`, the same
        pixel-centre geometry as detectron2's paste).
        """
        from cellpipe.images import input_size

        inputs = []
        for image in images:
            h, w = image.shape[-2:]
            size = input_size(h, w, self.min_size, self.max_size)
            x = (
                image
                if size == (h, w)
                else F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
            )
            inputs.append({"image": x, "height": h, "width": w})
        outs = []
        for r, image in zip(self.net.inference(inputs, do_postprocess=False), images):
            h, w = image.shape[-2:]
            boxes = r.pred_boxes.clone()
            boxes.scale(w / r.image_size[1], h / r.image_size[0])
            boxes.clip((h, w))
            keep = boxes.nonempty()
            outs.append(
                {
                    "boxes": boxes.tensor[keep],
                    "scores": r.scores[keep],
                    "labels": r.pred_classes[keep] + 1,
                    "masks": r.pred_masks[keep].float(),
                }
            )
        return outs


@contextmanager
def _quiet_fvcore():
    import logging

    names = ("fvcore.common.checkpoint", "detectron2.checkpoint.c2_model_loading", "d2.checkpoint.c2_model_loading")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load_detectron2_checkpoint(model: Detectron2MaskRCNN, path: str | Path) -> str:
    """Initialise from a detectron2 checkpoint (``.pth`` or model-zoo/LIVECell ``.pkl``).

    Class-specific heads whose shape differs (another class count) keep their random
    initialisation; any other mismatch means another architecture and is an error that
    names the config to use.
    """
    from detectron2.checkpoint import DetectionCheckpointer

    class Checkpointer(DetectionCheckpointer):
        """Keeps the incompatible keys for checking instead of logging them."""

        incompatible = None

        def _load_model(self, checkpoint):
            if not isinstance(checkpoint, dict) or "model" not in checkpoint:
                raise CellpipeError("not a detectron2 checkpoint (no 'model' state)", where=str(path))
            self.incompatible = super()._load_model(checkpoint)
            return self.incompatible

        def _log_incompatible_keys(self, incompatible) -> None:
            pass

        def _load_file(self, filename):
            """detectron2's own reader, minus its code-running unpickling (see cellpipe.checkpoints)."""
            if filename.endswith(".pkl"):
                data = checkpoints.load_pickle(filename)
                if not isinstance(data, dict):
                    raise CellpipeError("not a detectron2 checkpoint (not a dict)", where=str(path))
                if "model" in data and "__author__" in data:  # detectron2 model-zoo format
                    return data
                data = data.get("blobs", data)  # Caffe2 / Detectron1 model zoo
                data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
                return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
            loaded = checkpoints.load(filename)
            if "model" not in loaded:
                loaded = {"model": loaded}
            loaded["matching_heuristics"] = True
            return loaded

    path = Path(path)
    if not path.is_file():
        raise CellpipeError("checkpoint is missing", where=str(path))
    checkpointer = Checkpointer(model.net)
    try:
        with _quiet_fvcore():
            checkpointer.load(str(path), checkpointables=[])
    except CellpipeError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle errors, ...
        raise CellpipeError(f"checkpoint is unreadable or truncated ({exc.__class__.__name__})", where=str(path)) from None
    incompatible = checkpointer.incompatible
    heads = tuple(p[len("net.") :] for p in model.class_specific)
    wrong = [k for k, *_ in incompatible.incorrect_shapes if not k.startswith(heads)]
    missing = [k for k in incompatible.missing_keys if not k.startswith(heads)]
    if wrong or missing:
        key = (wrong or missing)[0]
        raise CellpipeError(
            f"{key} {'has another shape' if wrong else 'is missing'} in the checkpoint: it was "
            f"trained with another architecture (set model.d2_config to its config)",
            where=str(path),
        )
    reinit = [k for k, *_ in incompatible.incorrect_shapes]
    if reinit:
        return f"{path} (detectron2; class-specific heads re-initialised: {len(reinit)} tensors)"
    return f"{path} (detectron2)"


class Detectron2Family(RCNNFamily):
    name = "detectron2 Mask R-CNN"
    class_specific = Detectron2MaskRCNN.class_specific

    def require(self) -> None:
        require()

    def build(self, cfg: Model, num_classes: int) -> nn.Module:
        return Detectron2MaskRCNN(cfg, num_classes)

    def initialise(self, model: nn.Module, init: str) -> str:
        if init in ("imagenet", "coco"):
            raise CellpipeError(
                f"init {init!r} downloads torchvision weights; with model.backend detectron2 give a "
                f"detectron2 checkpoint path (.pth/.pkl) instead"
            )
        if str(init).endswith(".pkl"):  # model-zoo / LIVECell pickles
            return load_detectron2_checkpoint(model, init)
        if init not in ("none", "") and "model_config" not in load_checkpoint(init):  # a detectron2 .pth
            return load_detectron2_checkpoint(model, init)
        return super().initialise(model, init)

    def _limits_holder(self, model: nn.Module) -> Detectron2MaskRCNN:
        return model

    def _inference_proposals(self, model: nn.Module) -> tuple[dict, object]:
        return model.net.proposal_generator.post_nms_topk, False  # keyed by "training"


def register_coco(name: str, coco_json: str | Path) -> int:
    """Register one of cellpipe's COCO files (``coco``/``livecell`` stage outputs) in detectron2's catalog.

    cellpipe's engine reads the COCO files itself; this is for detectron2's own tools
    (``DatasetCatalog.get``, ``Visualizer``, ``COCOEvaluator``, a ``DefaultTrainer``) on
    exactly the same split. Returns the number of images registered.
    """
    import json

    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    coco_json = Path(coco_json)
    data = json.loads(coco_json.read_text())
    from cellpipe.coco import image_paths

    roots = {str(p.parent) for p in image_paths(data, coco_json).values()}
    if len(roots) != 1:
        raise CellpipeError(f"expected the images of one folder, found {len(roots)} folders", where=str(coco_json))
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(coco_json), roots.pop())
    return len(data["images"])
