"""Every knob of the pipeline: one typed definition, its default, its bounds, its help text.

The schema only: pydantic v2 models (unknown keys forbidden, strict types, ``Literal``
choices, ``Field`` bounds), one per params section, which the library receives.
Reading ``params.yaml`` into them, the one-line messages for bad values and the
documented ``params.yaml`` rendered from them are :mod:`cellpipe.params_file`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CELL_TYPES: tuple[str, ...] = ("shsy5y", "astro", "cort")
CellType = Literal["shsy5y", "astro", "cort"]
Growth = Annotated[int, Field(ge=0, le=32)]  # pixels a final cell grows into the free pixels around it


class Section(BaseModel):
    """A params section: strict, closed, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def _path(default: str, option: str, help: str) -> Any:
    return Field(default, alias=option, min_length=1, description=help)


# --------------------------------------------------------------------------- data


class KaggleData(Section):
    kaggle_dir: str = _path("data/raw/kaggle", "kaggle-dir", "folder in the Kaggle layout (train.csv, train/, test/)")


class LivecellData(Section):
    livecell_json: str = _path(
        "data/raw/livecell/annotations/LIVECell/livecell_coco_train.json", "livecell-json", "LIVECell COCO JSON"
    )
    livecell_images: str = _path("data/raw/livecell/images/livecell_train_val_images", "livecell-images", "folder of its images")


class Data(Section):
    """Where the Kaggle-layout folder and the LIVECell COCO + images are (defaults: the synth outputs).
    Each group maps command-line options to paths: dvc.yaml hands a group to a stage as ${data.kaggle},
    which DVC expands with shell quoting (a path with spaces or quotes stays one argument)."""

    kaggle: KaggleData = Field(KaggleData(), description="the competition data (decode, predict, submit, visualize)")
    livecell: LivecellData = Field(LivecellData(), description="the pretraining data (livecell)")


# --------------------------------------------------------------------------- data stages


class Synth(Section):
    """The embedded synthetic data, in the real Kaggle and LIVECell layouts."""

    seed: int = Field(0, ge=0, description="random seed")
    images_per_type: dict[CellType, int] = Field(
        default_factory=lambda: {"shsy5y": 8, "astro": 8, "cort": 8}, description="training images per cell type"
    )
    images_per_sample: int = Field(2, gt=0, description="frames per sample_id (a well over time)")
    cells_scale: float = Field(0.35, gt=0, description="× the real mean cells per image (shsy5y 337, astro 80, cort 34)")
    test_images: int = Field(3, ge=0, description="test images")
    livecell_images: int = Field(8, ge=0, description="LIVECell-style images")
    livecell_cells_scale: float = Field(0.3, gt=0, description="× LIVECell's cells per image")

    @field_validator("images_per_type")
    @classmethod
    def _counts(cls, v: dict[str, int]) -> dict[str, int]:
        for k, n in v.items():
            if n < 0:
                raise ValueError(f"count for {k} must be ≥ 0")
        return v


class Decode(Section):
    """train.csv → Parquet."""

    duplicates: Literal["error", "drop"] = Field(
        "error", description="rows repeating an image's mask: error | drop (the real train.csv has 15)"
    )


class CV(Section):
    """Cross-validation: K folds and a lockbox, whole sample_id groups, stratified by cell type.
    K = the length of `folds` (DVC's matrix stages iterate over this list): -S 'cv.folds=[0,1,2]'."""

    folds: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="fold numbers 0..K-1 (K=1: one train/val split)"
    )
    lockbox_fraction: float = Field(
        0.15, ge=0, lt=1, description="share of each cell type's images no model, early stop or threshold ever sees"
    )
    val_fraction: float = Field(0.2, gt=0, lt=1, description="K=1 only: share of each cell type's other images in val")
    seed: int = Field(0, ge=0, description="random seed of the assignment")

    @field_validator("folds")
    @classmethod
    def _range(cls, v: list[int]) -> list[int]:
        if v != list(range(len(v))):
            raise ValueError(f"must be 0..K-1 in order, e.g. {list(range(min(len(v), 5)))}{'…' if len(v) > 5 else ''}")
        return v


# --------------------------------------------------------------------------- model


class CellposeParams(Section):
    """The flow U-Net (model.arch: cellpose)."""

    nbase: list[int] = Field(default_factory=lambda: [32, 64, 128, 256], min_length=2,
                             description="U-Net widths, coarsest last (cellpose's own: 32 64 128 256)")  # fmt: skip
    diameter: float = Field(30.0, gt=0, description="cells are rescaled to this diameter (px)")
    class_diameters: dict[CellType, Annotated[float, Field(ge=1, le=1000)]] = Field(
        default_factory=dict,
        description="a cell type's own diameter instead (px, 1–1000, per_class scale only), e.g. {astro: 30}: its thin processes",
    )
    scale: Literal["per_class", "fixed"] = Field("per_class", description="per_class: each class's cells to "
                                                 "the diameter (measured on the training data); fixed: one scale")  # fmt: skip
    fixed_scale: float = Field(1.0, gt=0, description="the one scale of scale: fixed")
    cellprob_threshold: float = Field(0.0, description="cell-probability logit above which a pixel is in a cell")
    flow_threshold: float = Field(0.4, ge=0, description="drop masks whose flows disagree more than this")
    niter: int = Field(200, gt=0, description="flow-following steps")
    min_size: int = Field(15, ge=0, description="drop masks smaller than this (px) and fill holes")
    image_type: Literal["head", "features"] = Field(
        "head",
        description="what names an image's cell type (its scale and thresholds): head (the U-Net's type head) | "
        "features (a logistic regression on whole-image statistics, fitted on the training images)",
    )
    type_l2: float = Field(1e-4, ge=0, description="image_type: features — L2 penalty of the logistic regression")

    @model_validator(mode="after")
    def _own_diameters_need_per_class(self) -> CellposeParams:
        if self.class_diameters and self.scale != "per_class":
            raise ValueError("class_diameters needs scale: per_class (scale: fixed rescales every image by fixed_scale)")
        return self

    def diameter_of(self, name: str) -> float:
        """The nominal diameter cells of type ``name`` are rescaled to (``class_diameters`` or ``diameter``)."""
        return float(self.class_diameters.get(name, self.diameter))


class Model(Section):
    """The network. CPU default: a narrow ResNet-18 FPN Mask R-CNN with light heads; the GPU recipe
    (profiles/gpu.yaml) is resnet50 / fpn_channels 256 / box_head_dim 1024 / mask head 256 × 4."""

    arch: Literal["maskrcnn", "cellpose"] = Field("maskrcnn", description="model family: maskrcnn | cellpose "
                                                  "(a flow U-Net, knobs under model.cellpose)")  # fmt: skip
    backend: Literal["torchvision", "detectron2"] = Field(
        "torchvision", description="torchvision | detectron2 (optional install: README)"
    )
    d2_config: str = Field("", description="detectron2 only: model-zoo config or YAML path; '' = the knobs below")
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = Field("resnet18", description="ResNet depth")
    norm: Literal["group", "batch", "frozen"] = Field(
        "batch", description="backbone norm (frozen: only with pretrained weights, refused without)"
    )
    head_norm: Literal["group", "none"] = Field("group", description="GroupNorm in FPN and heads (helps training from scratch)")
    box_head_convs: int = Field(0, ge=0, description="conv layers before the box head's FC layer")
    fpn_channels: int = Field(64, gt=0, description="FPN width")
    box_head_dim: int = Field(256, gt=0, description="box head FC width")
    mask_head_channels: int = Field(64, gt=0, description="mask head width")
    mask_head_layers: int = Field(2, gt=0, description="mask head conv layers")
    anchor_sizes: list[int | list[int]] = Field(
        default_factory=lambda: [8, 16, 32, 64, 128],
        description="per FPN level P2..P6: a size or a list of sizes (px at the model's input size); "
        "`cellpipe anchors` reports how well they fit",
    )
    aspect_ratios: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0], min_length=1, description="anchor aspect ratios")
    rpn_fg_iou: float = Field(0.7, gt=0, lt=1, description="anchors at IoU ≥ this with a cell are RPN positives")
    rpn_bg_iou: float = Field(0.3, gt=0, lt=1, description="... below this negatives")
    mask_geometry: Literal["exact", "torchvision"] = Field(
        "exact", description="exact: pixel-centre mask targets and paste (detectron2's) | torchvision: its stock ones"
    )
    mask_resolution: Literal[28, 56] = Field(28, description="predicted mask side")
    mask_box_scale: float = Field(
        1.0,
        ge=1.0,
        le=3.0,
        description="mask head sees and predicts a box × this around each detection (torchvision, exact geometry): "
        "room for what lies outside the box, astro's processes",
    )
    mask_dice_weight: float = Field(
        0.0,
        ge=0,
        le=10,
        description="mask loss = BCE + this × Dice loss per RoI (torchvision, exact geometry): an overlap term, "
        "as the metric's IoU, that small masks' pixel-averaged BCE underweights; 0 = BCE alone",
    )
    roi_align: Literal["torchvision", "aligned"] = Field(
        "torchvision",
        description="RoI features of both heads: torchvision's half-cell offset | aligned (detectron2's ROIAlignV2)",
    )
    head_init: Literal["torchvision", "detectron2"] = Field(
        "torchvision",
        description="box/mask head initialisation: PyTorch's defaults | detectron2's",
    )
    box_loss_beta: float = Field(
        1 / 9, ge=0, description="smooth-L1 β of the RPN and RoI box losses (torchvision 1/9; 0 = L1, detectron2)"
    )
    min_size: int = Field(520, gt=0, le=8192, description="input short side (520 = full size) ...")
    max_size: int = Field(704, gt=0, le=8192, description="... and long side at most; training crops come from this scale")
    class_scales: dict[CellType, Annotated[float, Field(ge=0.1, le=8)]] = Field(
        default_factory=dict,
        description="Mask R-CNN: a type's images at × this (0.1–8) in training and in a second predict pass, e.g. {astro: 0.667}",
    )
    class_scale_base_share: float = Field(
        0.5, ge=0, lt=1, description="... share of a rescaled type's training samples drawn at ×1, so the first pass knows it"
    )
    class_scale_vote: float = Field(
        0.5, ge=0, le=1, description="... the first pass's detections voting the type score at least this"
    )
    detections_per_img: int = Field(1000, gt=0, description="LIVECell images hold 2000+ cells, shsy5y up to 790")
    rpn_batch_per_image: int = Field(256, gt=0, description="RPN anchors sampled per image")
    roi_batch_per_image: int = Field(128, gt=0, description="RoIs sampled per image")
    roi_positive_fraction: float = Field(
        0.25,
        gt=0,
        le=1,
        description="... at most this share of them cells (the rest background): the RoIs the mask head "
        "learns from — 32 of 128 at 0.25, however many cells a crowded shsy5y crop holds",
    )
    rpn_pre_nms_train: int = Field(2000, gt=0, description="RPN proposals before NMS, training")
    rpn_post_nms_train: int = Field(2000, gt=0, description="... after NMS, training")
    rpn_pre_nms_test: int = Field(3000, gt=0, description="RPN proposals before NMS, inference")
    rpn_post_nms_test: int = Field(3000, gt=0, description="... after NMS, inference")
    box_nms_thresh: float = Field(0.5, ge=0, le=1, description="per-class box NMS IoU")
    box_score_thresh: float = Field(0.05, ge=0, le=1, description="lowest score kept by predict (thresholds tunes above it)")
    mask_threshold: float = Field(0.5, gt=0, lt=1, description="mask probability → pixel")
    cellpose: CellposeParams = Field(CellposeParams(), description="model.arch: cellpose only")

    @field_validator("anchor_sizes")
    @classmethod
    def _levels(cls, v: list) -> list:
        levels = [x if isinstance(x, list) else [x] for x in v]
        if len(levels) != 5 or any(not lv or min(lv) <= 0 for lv in levels) or len({len(lv) for lv in levels}) != 1:
            raise ValueError(
                "must list 5 FPN levels, each a positive integer size or a list of them, with the same number of sizes per level"
            )
        return v

    @model_validator(mode="after")
    def _mask_box_scale(self) -> Model:
        exact_torchvision = (self.arch, self.backend, self.mask_geometry) == ("maskrcnn", "torchvision", "exact")
        for name, off in (("mask_box_scale", 1.0), ("mask_dice_weight", 0.0)):  # both live in masks.mask_loss
            if getattr(self, name) != off and not exact_torchvision:
                raise ValueError(
                    f"{name} is built for model.arch maskrcnn with backend torchvision and mask_geometry exact "
                    f"(got {self.arch}, {self.backend}, {self.mask_geometry}); leave it at {off} otherwise"
                )
        return self

    @model_validator(mode="after")
    def _scaled_sizes(self) -> Model:
        if self.class_scales and self.arch != "maskrcnn":
            raise ValueError("class_scales is for model.arch maskrcnn (the flow U-Net scales each class to "
                             "model.cellpose.diameter already)")  # fmt: skip
        top = max(self.class_scales.values(), default=1.0)
        if top * max(self.min_size, self.max_size) > 8192:
            raise ValueError(f"class_scales up to ×{top} takes min_size/max_size {self.min_size}/{self.max_size} over 8192 px")
        return self

    def scale_of(self, name: str) -> float:
        """The input scale factor of images of cell type ``name`` (1 unless ``class_scales`` names it)."""
        return float(self.class_scales.get(name, 1.0))

    @field_validator("aspect_ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        if any(r <= 0 for r in v):
            raise ValueError("must be positive numbers")
        return v

    def level_sizes(self) -> tuple[tuple[int, ...], ...]:
        """Anchor sizes per FPN level, each a tuple."""
        return tuple(tuple(s) if isinstance(s, list) else (s,) for s in self.anchor_sizes)


# --------------------------------------------------------------------------- training


class Train(Section):
    """Optimisation knobs shared by pretrain and finetune."""

    iters: int = Field(500, gt=0, description="iterations")
    batch_size: int = Field(2, gt=0, description="images per iteration")
    lr: float = Field(0.02, gt=0, description="SGD learning rate")
    momentum: float = Field(0.9, ge=0, le=1, description="SGD momentum")
    weight_decay: float = Field(0.0001, ge=0, description="SGD weight decay")
    weight_decay_norm: float | None = Field(
        None, ge=0, description="weight decay of the norm layers' scale and shift (detectron2: 0); null = weight_decay"
    )
    warmup_iters: int = Field(30, ge=0, description="linear warm-up iterations (then cosine decay to 0)")
    warmup_factor: float = Field(0.001, ge=0, le=1, description="lr factor at iteration 0")
    clip_grad: float = Field(10.0, gt=0, description="gradient norm clip")
    nproc: int = Field(
        1, ge=1, description="training processes on this machine (torchrun, DDP; batch_size is the global batch, split over them)"
    )
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="mixed precision: auto (fp16 + grad scaler on GPUs, off on CPUs) | off | bf16 | fp16 (GPUs only)"
    )
    channels_last: bool = Field(False, description="channels-last memory format (faster convolutions on recent GPUs)")
    eval_every: int = Field(100, gt=0, description="evaluate on val every this many iterations (keeps the best)")
    eval_score_threshold: float = Field(0.3, ge=0, le=1, description="score threshold of those evaluations")
    seed: int = Field(0, ge=0, description="random seed (batches, crops, flips)")
    hflip: bool = Field(True, description="random horizontal flips")
    vflip: bool = Field(True, description="random vertical flips")
    crop_size: int = Field(256, ge=0, description="random training window (px at the model's scale); 0 = whole image")
    fill_holes: list[str] = Field(
        default_factory=list, description="classes whose training masks get their holes filled (astro truth is filled contours)"
    )
    rotate: bool = Field(False, description="random rotations by any angle (model.arch cellpose, as cellpose trains)")
    transpose: bool = Field(
        False, description="random transposes of each window: with both flips, all 8 right-angle turns and mirrorings (exact)"
    )
    scale_jitter: float = Field(
        0.0, ge=0, lt=1, description="random rescaling of each training window by 1 ± this (cellpose trains with 0.25)"
    )
    copy_paste: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of training windows that get the cells of a window of another image of the same type pasted"
        " onto their background (copy-paste; model.arch maskrcnn)",
    )
    copy_paste_types: list[str] = Field(
        default_factory=list,
        description="... only windows of images of these types (their majority class) take pasted cells; empty: every type",
    )
    gamma: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="random gamma of each training window: its pixels p as 255·(p/255)^g, g log-uniform in"
        " [1/(1+this), 1+this] (model.arch maskrcnn); 0: off",
    )
    ema: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="decay of an exponential moving average of the weights, evaluated and kept instead of them (0: off)",
    )
    repeat_threshold: float = Field(
        0.0,
        ge=0,
        le=1,
        description="class-balanced image draws (LVIS repeat factors): images of a class"
        " found in a share f < this of the training images are drawn sqrt(this/f) times as often; 0: uniform",
    )
    workers: int = Field(0, ge=0, description="DataLoader worker processes building batches (0: in the main process)")
    cache_gb: float = Field(
        4.0,
        gt=0,
        description="decoded training images kept in memory (GB, per process); beyond it the least recently used are rebuilt",
    )

    @model_validator(mode="after")
    def _batch_splits(self) -> Train:
        # refused here, before torchrun starts nproc processes that would each find it (the engine still checks
        # a world size that came from outside: a torchrun of the user's own)
        if self.batch_size % self.nproc:
            raise ValueError(f"batch_size {self.batch_size} does not split over {self.nproc} processes (nproc)")
        return self


class Pretrain(Train):
    """On the LIVECell COCO (one class 'cell'); its last images are held out for evaluation."""

    init: Literal["none", "imagenet", "coco"] = Field(
        "none", description="none | imagenet | coco (torchvision weights: need a download)"
    )
    iters: int = Field(300, gt=0, description="iterations")
    val_images: int = Field(2, gt=0, description="last LIVECell images held out for evaluation")


class InitCheckpoint(Section):
    init_checkpoint: str = _path(
        "models/livecell/best.pt", "init-checkpoint", "the pretrain output; or your own checkpoint (.pt, detectron2 .pth/.pkl)"
    )


class Finetune(Train):
    """Model k of each fold in cv.folds: trains on the other folds of data/coco/folds.json, early-stops on fold k."""

    init: Literal["checkpoint", "none", "imagenet", "coco"] = Field(
        "checkpoint", description="checkpoint (the file below) | none | imagenet | coco"
    )
    init_checkpoint: InitCheckpoint = Field(
        InitCheckpoint(), description="a DVC dependency, passed as --init-checkpoint (quoted, like data.*)"
    )


# --------------------------------------------------------------------------- after the model


class Predict(Section):
    """Applying the model to val and test images."""

    tta: bool = Field(False, description="flip test-time augmentation (3× slower)")
    tta_iou: float = Field(0.5, gt=0, lt=1, description="mask IoU matching detections across the flips")
    detections_per_img: int = Field(0, ge=0, description="cap at predict time; 0 = the checkpoint's model.detections_per_img")
    tile_size: list[int] = Field(
        default_factory=lambda: [520, 704],
        min_length=2,
        max_length=2,
        description="height, width: larger images are predicted in overlapping windows of this size (the training images')",
    )
    tile_overlap: int = Field(128, ge=0, description="pixels shared by neighbouring windows (more than the largest cell)")
    max_image_pixels: int = Field(100_000_000, gt=0, description="an image with more pixels is refused by name, undecoded")
    box_nms_thresh: float = Field(
        0.0, ge=0, le=1, description="the model's box NMS IoU at predict time; 0 = the checkpoint's model.box_nms_thresh"
    )
    rpn_proposals: int = Field(
        0, ge=0, description="Mask R-CNN's RPN proposals per image after NMS at predict; 0 = the checkpoint's rpn_post_nms_test"
    )
    flow_threshold: float | None = Field(
        None,
        ge=0,
        description="the flow family's flow-error limit at predict time (0 = no check); null = the checkpoint's "
        "model.cellpose.flow_threshold",
    )
    maskness: float = Field(
        0.0,
        ge=0,
        le=8,
        description="Mask R-CNN: each score × its mask's maskness (mean mask probability over the mask's pixels, "
        "SOLOv2) to this power; 0 = off",
    )
    scores: Literal["class", "cell"] = Field(
        "class",
        description="Mask R-CNN (torchvision): class = one detection per type a proposal passes, scored by that type's "
        "probability; cell = one per proposal, scored 1 − P(background), labelled with its likeliest type",
    )

    @model_validator(mode="after")
    def _tiles(self) -> Predict:
        if min(self.tile_size) < 32:
            raise ValueError("predict.tile_size must be at least 32 × 32")
        if self.tile_overlap >= min(self.tile_size):
            raise ValueError(f"predict.tile_overlap must be smaller than the tile ({min(self.tile_size)})")
        return self


class Ensemble(Section):
    """The K fold models' detections on lockbox and test images → one set (instances matched
    across folds by mask IoU; mask = pixel majority, score = mean over all K folds, a fold that
    missed the cell counting 0)."""

    iou: float = Field(0.5, gt=0, lt=1, description="mask IoU matching detections of different folds")
    min_agreement: float = Field(0.0, ge=0, le=1, description="keep a cell only when at least this share of the folds found it")


class PostProcess(Section):
    """Raw detections → final cells; the same steps select the best checkpoint in training, tune the
    thresholds and make the score and the submission."""

    min_size: int = Field(0, ge=0, description="drop cells left smaller than this after overlap removal (pixels)")
    max_lost: float = Field(
        1.0, ge=0, le=1, description="drop cells that lost more than this share of their pixels to better ones (1 = keep)"
    )
    mask_nms_iou: float = Field(1.0, ge=0, le=1, description="class-agnostic mask NMS above this IoU (1 = off)")
    box_nms_iou: float = Field(
        1.0, gt=0, le=1, description="class-agnostic NMS of the masks' boxes above this IoU (1 = off; chosen per class)"
    )
    vote_min_score: float = Field(
        0.0, ge=0, le=1, description="detections at least this confident vote for the image's cell type"
    )
    grow: Growth = Field(
        0, description="grow each final cell into the free pixels within this distance (pixels; 0 = off; chosen per class)"
    )


class Thresholds(Section):
    """Per-class score thresholds, chosen on out-of-fold predictions (for fold k's images: on the other folds')."""

    grid: list[float] = Field(
        default_factory=lambda: [round(0.05 * k, 2) for k in range(1, 20)], min_length=1, description="score thresholds tried"
    )
    fallback: float = Field(0.5, ge=0, le=1, description="threshold for a class without out-of-fold images")
    box_nms_ious: list[float] = Field(
        default_factory=lambda: [1.0],
        min_length=1,
        description="box-NMS IoUs tried per class with the thresholds (above the model's own: predict.box_nms_thresh)",
    )
    min_sizes: list[int] = Field(
        default_factory=list, description="minimum cell sizes tried per class (empty: postprocess.min_size only)"
    )
    grows: list[Growth] = Field(
        default_factory=list, description="growth distances tried per class (pixels; empty: postprocess.grow only)"
    )

    @field_validator("grid", "box_nms_ious")
    @classmethod
    def _unit(cls, v: list[float]) -> list[float]:
        if any(not 0 <= x <= 1 for x in v):
            raise ValueError("must be numbers in [0, 1]")
        return v


class Params(Section):
    data: Data = Data()
    synth: Synth = Synth()
    decode: Decode = Decode()
    cv: CV = CV()
    model: Model = Model()
    pretrain: Pretrain = Pretrain()
    finetune: Finetune = Finetune()
    predict: Predict = Predict()
    ensemble: Ensemble = Ensemble()
    postprocess: PostProcess = PostProcess()
    thresholds: Thresholds = Thresholds()

    @model_validator(mode="after")
    def _rpn(self) -> Params:
        if self.model.rpn_bg_iou > self.model.rpn_fg_iou:
            raise ValueError("model.rpn_bg_iou must be ≤ model.rpn_fg_iou")
        return self

    @model_validator(mode="after")
    def _rotations_need_flows(self) -> Params:
        # Mask R-CNN's boxes come from its masks, so rescaling them is exact; rotating by any angle would
        # resample every mask and stretch its box, and is not built for it (scale_jitter is, for both)
        for name in ("pretrain", "finetune"):
            section = getattr(self, name)
            if self.model.arch != "cellpose" and section.rotate:
                raise ValueError(f"{name}.rotate is for model.arch cellpose (flows turn with the image; Mask "
                                 f"R-CNN's training windows are flipped, not turned): set it to false")  # fmt: skip
            if self.model.arch == "cellpose" and section.copy_paste:
                raise ValueError(f"{name}.copy_paste is for model.arch maskrcnn (the flow family's windows take no "
                                 f"pasted cells): set it to 0")  # fmt: skip
            if self.model.arch == "cellpose" and section.gamma:
                raise ValueError(f"{name}.gamma is for model.arch maskrcnn (the flow family keeps its windows "
                                 f"normalised, not as read): set it to 0")  # fmt: skip
            if section.copy_paste_types and not section.copy_paste:
                raise ValueError(f"{name}.copy_paste_types picks the windows copy-paste fills, and {name}.copy_paste "
                                 f"is 0: set copy_paste above 0 or copy_paste_types to []")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _frozen_needs_weights(self) -> Params:
        # FrozenBatchNorm keeps a pretrained network's batch statistics: from random weights it normalises nothing
        frozen = self.model.arch == "maskrcnn" and self.model.norm == "frozen"
        if frozen and "none" in (self.pretrain.init, self.finetune.init):
            raise ValueError(
                "model.norm frozen keeps pretrained batch statistics fixed and needs pretrained weights: set "
                "pretrain.init to imagenet or coco (and finetune.init to checkpoint), or train from scratch with "
                "model.norm group (profiles/gpu-offline.yaml)"
            )
        return self


SECTIONS: tuple[str, ...] = tuple(Params.model_fields)
