"""Model families behind one small interface, picked by ``model.arch`` and ``model.backend``.

A :class:`Family` (abstract) builds a network from the ``model`` params, initialises it
(from a checkpoint, re-initialising only the class-specific heads when the class count
differs), makes its training samples, runs one training step (inputs → a dict of
losses), predicts one image (→ scored instance masks) and reads and sets its inference
limits (score threshold, detections per image). The training engine, prediction,
thresholds and scoring only talk to this interface, so a third family is one module
and one line in :data:`FAMILIES`. The two Mask R-CNN backends share their dataset and
single-image prediction (:mod:`cellpipe.models.rcnn`).

Families:

- ``(maskrcnn, torchvision)`` — :mod:`cellpipe.models.torchvision_maskrcnn` (default);
- ``(maskrcnn, detectron2)`` — :mod:`cellpipe.models.detectron2_maskrcnn`, detectron2's
  Mask R-CNN behind torchvision's calling convention; imported only when chosen;
- ``(cellpose, *)`` — :mod:`cellpipe.models.cellpose_flow`, a cellpose-style flow U-Net.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cellpipe import checkpoints
from cellpipe.config import Model
from cellpipe.errors import CellpipeError
from cellpipe.params_file import checkpoint_model

if TYPE_CHECKING:  # only the annotations need these here
    import numpy as np

    from cellpipe.instances import Instances


@dataclass(frozen=True)
class Limits:
    """What bounds a model's inference: the lowest score it reports and how many detections per image."""

    score_thresh: float
    detections_per_img: int
    nms_thresh: float | None = None  # the per-class box NMS IoU (None: the family has none)
    proposals: int | None = None  # the RPN's proposals kept per image after its NMS (None: the family has no RPN)
    flow_threshold: float | None = None  # the flow family's flow-error limit on recovered masks (None: not a flow family)
    maskness: float | None = None  # scores × maskness to this power (None: the family has no mask probabilities)
    cell_scores: bool | None = None  # one detection per proposal scored 1 − P(background) (None: the family cannot)


class Family(ABC):
    """What the pipeline needs of a model family.

    A new family is one module with a subclass of this and one line in :data:`FAMILIES`:
    the engine, prediction, thresholds and scoring only talk to this interface.
    """

    name = "model"
    class_specific: tuple[str, ...] = ()  # state-dict prefixes whose shape depends on the class count
    own_tta = False  # True: predict(tta=True) does the family's own flip test-time augmentation

    def require(self) -> None:
        """Fail early, with a clear message, when the family cannot run here (optional installs)."""
        return None  # a family without optional installs can always run

    @abstractmethod
    def build(self, cfg: Model, num_classes: int) -> nn.Module:
        """The network of ``cfg`` with ``num_classes`` foreground classes, randomly initialised."""

    def initialise(self, model: nn.Module, init: str) -> str:
        """Load ``init`` ('none' or a cellpipe checkpoint path); returns what was loaded, in words."""
        if init in ("none", ""):
            return "random initialisation"
        if init in ("imagenet", "coco"):
            raise CellpipeError(f"init {init!r} (torchvision weights) is not available for {self.name}")
        return load_weights(model, load_checkpoint(init)["model"], self.class_specific, where=str(init))

    @abstractmethod
    def dataset(self, data: dict, cfg: Model, train_cfg: Any, image_ids: list[int] | None = None) -> Any:
        """Training samples of a normalised COCO dict (images and targets as ``train_step`` takes them)."""

    def set_classes(self, model: nn.Module, cfg: Model, classes: list[str]) -> None:
        """Give a built model what its config says per class name (Mask R-CNN: each type's input scale)."""
        return None  # most families need nothing per class beyond their weights

    def fit_data(self, model: nn.Module, dataset: Any) -> None:
        """Set what the model learns from the training data before training (cellpose: cell sizes)."""
        return None  # most families learn everything by gradient descent

    @abstractmethod
    def train_step(self, model: nn.Module, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """The losses of one batch (the model in training mode)."""

    @abstractmethod
    def predict(self, model: nn.Module, grey: np.ndarray, *, device: Any, mask_threshold: float) -> Instances:
        """Scored instances of one grey image (uint8 H×W) at its own size: one pass, no augmentation."""

    def predict_tta(self, model: nn.Module, grey: np.ndarray, *, device: Any, mask_threshold: float) -> Instances:
        """The family's own flip test-time augmentation (``own_tta``); others are flipped and merged by
        :mod:`cellpipe.inference`."""
        raise NotImplementedError(f"{self.name} has no test-time augmentation of its own")

    @abstractmethod
    def limits(self, model: nn.Module) -> Limits:
        """The model's inference limits now."""

    @abstractmethod
    def set_limits(self, model: nn.Module, limits: Limits) -> None:
        """Set the model's inference limits (a predict-time detection cap, evaluation's score threshold)."""

    @abstractmethod
    def input_pixels(self, model: nn.Module, cfg: Model, height: int, width: int) -> int:
        """How many pixels the network works on for an image of ``height × width`` (its input after resizing)."""


def default_device() -> torch.device:
    """``cuda`` when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _torchvision_maskrcnn() -> Family:
    from cellpipe.models.torchvision_maskrcnn import TorchvisionMaskRCNN

    return TorchvisionMaskRCNN()


def _detectron2_maskrcnn() -> Family:
    from cellpipe.models.detectron2_maskrcnn import Detectron2Family

    return Detectron2Family()


def _cellpose_flow() -> Family:
    from cellpipe.models.cellpose_flow import CellposeFlow

    return CellposeFlow()


# (model.arch, model.backend) → the family; each imported on first use (detectron2 only when asked
# for). Plain imports inside functions, not importlib strings: dvc.yaml's deps are computed from them.
FAMILIES: dict[tuple[str, str], Callable[[], Family]] = {
    ("maskrcnn", "torchvision"): _torchvision_maskrcnn,
    ("maskrcnn", "detectron2"): _detectron2_maskrcnn,
    ("cellpose", "*"): _cellpose_flow,  # model.backend does not apply
}


def family(cfg: Model) -> Family:
    """The family of ``cfg``."""
    key = (cfg.arch, cfg.backend) if (cfg.arch, cfg.backend) in FAMILIES else (cfg.arch, "*")
    if key not in FAMILIES:
        raise CellpipeError(
            f"no model family for model.arch {cfg.arch!r} with model.backend {cfg.backend!r}; "
            f"known: {', '.join('/'.join(k) for k in FAMILIES)}"
        )
    return FAMILIES[key]()


def build(cfg: Model, num_classes: int) -> nn.Module:
    """Build ``cfg``'s network with ``num_classes`` foreground classes, randomly initialised."""
    fam = family(cfg)
    fam.require()
    return fam.build(cfg, num_classes)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load a cellpipe checkpoint as data (never code), with a one-line error when unusable."""
    ckpt = checkpoints.load(path, map_location)
    if "model" not in ckpt:
        raise CellpipeError("not a cellpipe checkpoint (no 'model' state)", where=str(path))
    return ckpt


def load_weights(model: nn.Module, state: dict[str, Any], class_specific: tuple[str, ...], *, where: str) -> str:
    """Load ``state`` into ``model``: every tensor must fit, except class-specific heads of another class count
    (or missing: a head the checkpoint's trainer did not have), which stay as built."""
    own = model.state_dict()
    skipped = []
    for key, value in own.items():
        if key not in state and key.startswith(class_specific):  # a head its trainer did not have
            skipped.append(key)
            continue
        if key not in state:
            raise CellpipeError(
                f"checkpoint lacks {key}: it was trained with another architecture (compare the model params)", where=where
            )
        if state[key].shape != value.shape:
            if key.startswith(class_specific):
                skipped.append(key)
                continue
            raise CellpipeError(
                f"{key} has shape {tuple(state[key].shape)} in the checkpoint but "
                f"{tuple(value.shape)} in the model: another architecture",
                where=where,
            )
    model.load_state_dict({k: v for k, v in state.items() if k in own and k not in skipped}, strict=False)
    if skipped:
        return f"{where} (class-specific heads re-initialised: {len(skipped)} tensors)"
    return where


def from_checkpoint(path: str | Path, device: Any = "cpu") -> tuple[Family, nn.Module, Model, list[str]]:
    """(family, model in eval mode on ``device``, its config, class names) of a cellpipe checkpoint."""
    ckpt = load_checkpoint(path)
    for key in ("model_config", "classes"):
        if key not in ckpt:
            raise CellpipeError(f"checkpoint lacks '{key}': not written by cellpipe's training", where=str(path))
    cfg = checkpoint_model(ckpt["model_config"], where=str(path))
    classes = ckpt["classes"]
    if not isinstance(classes, list | tuple) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise CellpipeError("its 'classes' must be a non-empty list of class names", where=str(path))
    if len(set(classes)) < len(classes):
        repeated = sorted({c for c in classes if list(classes).count(c) > 1})
        raise CellpipeError(
            f"its 'classes' name {', '.join(repeated[:3])} more than once ({len(classes)} classes, {len(set(classes))} "
            "distinct): predictions would carry ambiguous labels",
            where=str(path),
        )
    fam = family(cfg)
    fam.require()
    model = fam.build(cfg, len(ckpt["classes"]))
    fam.set_classes(model, cfg, list(classes))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CellpipeError(
            f"weights do not fit the architecture they claim ({str(exc).splitlines()[0]})", where=str(path)
        ) from None
    return fam, model.to(device).eval(), cfg, list(ckpt["classes"])
