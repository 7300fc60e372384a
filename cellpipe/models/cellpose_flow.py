"""A cellpose-style flow U-Net, trained from scratch in cellpipe's engine (``model.arch: cellpose``).

The network predicts, per pixel, a flow toward the centre of the cell it belongs to
and a cell probability; masks are recovered by following the flows (cellpose's
``dynamics``), so there is no detection cap and touching cells separate cleanly. The
cellpose library (``cellpose>=3.1,<4``) provides what it does well: the flow targets
(``dynamics.masks_to_flows``), mask recovery (``dynamics.resize_and_compute_masks``)
and the U-Net (``resnet_torch.CPnet``); nothing is downloaded. On top of it:

- **cell type**: a linear head on the U-Net's style vector predicts the image's cell
  type (every cell of a competition image has one), trained with cross-entropy; it
  labels the image's cells and so picks the per-class thresholds downstream. With
  ``image_type: features`` a classifier of its own names the type instead
  (:mod:`cellpipe.image_types`: a logistic regression on whole-image statistics, fitted
  on the training images before training and kept in the model's buffers), and the
  image is predicted once, at that type's scale: the head, trained on crops at each
  type's scale, sees the image at the mean scale when it classifies it;
- **cell size**: images are rescaled so cells have ``model.cellpose.diameter`` pixels
  (a type named in ``class_diameters``: its own, e.g. astro larger, whose thin processes
  a 17-px rescale loses: perfect flows of real astro cells come back at mean IoU 0.85 at
  17 px, 0.92 at 30); each class's median diameter is measured on the training data and kept in the model
  (``per_class``: predict once at the mean scale, classify, predict again at the
  predicted class's scale when it differs; ``fixed``: one scale for all);
- **scores**: each cell scores the mean cell probability inside its mask, so the
  thresholds stage tunes cuts exactly as for Mask R-CNN.

Flow targets are computed once per image (they cost ≈ 0.5 s each on a CPU) and kept for
the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import nn
from torch.utils.data import Dataset

from cellpipe import coco
from cellpipe.config import CellposeParams, Model
from cellpipe.console import log
from cellpipe.errors import CellpipeError
from cellpipe.image_types import N_FEATURES, TypeClassifier, image_features
from cellpipe.images import read_grey
from cellpipe.instances import Instances
from cellpipe.models import Family, Limits
from cellpipe.repeat_factors import image_categories
from cellpipe.samples import SampleCache

INSTALL_HINT = "pip install 'cellpose>=3.1,<4'"


@contextlib.contextmanager
def _numba_cache() -> Iterator[None]:
    """While importing cellpose: its numba kernels compiled with ``cache=True``.

    cellpose compiles its kernels eagerly at import and without numba's cache, ≈ 7 s of
    every process that makes flow targets or recovers masks (each training, predict and
    test command). Cached, they are compiled once and loaded after (numba writes them
    beside cellpose's source or under ``NUMBA_CACHE_DIR``, and compiles again when that
    source changes); the kernels are the same.
    """
    import numba

    plain = numba.njit

    def cached(*args, **kwargs):
        kwargs.setdefault("cache", True)
        return plain(*args, **kwargs)

    numba.njit = cached
    try:
        yield
    finally:
        numba.njit = plain


def _cellpose():
    try:
        try:
            with _numba_cache():
                from cellpose import dynamics, resnet_torch
        except RuntimeError:  # numba found nowhere it may write a cache: compiled at each import, as cellpose does
            from cellpose import dynamics, resnet_torch
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable"
        raise CellpipeError(f"model.arch is cellpose but the cellpose library cannot be imported "
                            f"({exc.__class__.__name__}: {exc}); install it with: {INSTALL_HINT}") from None  # fmt: skip
    return dynamics, resnet_torch


def normalise(grey: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) → float (1, H, W), zero mean and unit std per image (as the Mask R-CNN input)."""
    x = torch.from_numpy(grey.astype(np.float32))
    return ((x - x.mean()) / x.std().clamp_min(1.0))[None]


def equivalent_diameter(area: float) -> float:
    return 2.0 * math.sqrt(max(area, 1.0) / math.pi)


TYPE_FIELDS = tuple(f.name for f in dataclasses.fields(TypeClassifier))  # kept as buffers "type_<field>"
TYPE_BUFFERS = tuple(f"type_{name}" for name in TYPE_FIELDS)


def flow_scale(cfg: CellposeParams, nominal: float, measured: float) -> float:
    """Resize factor that brings cells of median diameter ``measured`` to the ``nominal`` one (or the fixed
    scale): one formula for the training crops and for prediction, so both see a type at the same scale."""
    if cfg.scale == "fixed":
        return float(cfg.fixed_scale)
    return float(nominal) / float(measured)


class FlowNet(nn.Module):
    """CPnet (1 input channel; outputs dy, dx, cell-probability logit) and a cell-type head on its style."""

    def __init__(self, cfg: Model, num_classes: int) -> None:
        super().__init__()
        _, resnet_torch = _cellpose()
        c = cfg.cellpose
        self.unet = resnet_torch.CPnet([1, *c.nbase], nout=3, sz=3, diam_mean=c.diameter)
        self.classify = nn.Linear(c.nbase[-1], num_classes)
        self.register_buffer("diameters", torch.full((num_classes,), float(c.diameter)))
        # the image-type classifier (image_type: features), fitted by CellposeFlow.fit_data; all zero = not fitted
        unfitted = TypeClassifier(mean=np.zeros(N_FEATURES), std=np.ones(N_FEATURES),
                                  coef=np.zeros((num_classes, N_FEATURES)), bias=np.zeros(num_classes))  # fmt: skip
        for name in TYPE_FIELDS:
            self.register_buffer(f"type_{name}", torch.from_numpy(getattr(unfitted, name)))
        # each class's nominal diameter: the config's (set_classes), kept off the state dict like
        # Mask R-CNN's class scales, so checkpoints stay loadable whatever it says
        self.nominal = [float(c.diameter)] * num_classes
        self.cfg = c
        self.score_thresh = cfg.box_score_thresh  # the inference limits every family exposes
        self.detections_per_img = cfg.detections_per_img

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) with H, W multiples of 16 → (B, 3, H, W) maps and (B, classes) type logits."""
        maps, style, _ = self.unet(x)
        return maps, self.classify(style)

    def scale_of(self, cls: int) -> float:
        """Resize factor that brings class ``cls``'s cells to its nominal diameter."""
        return flow_scale(self.cfg, self.nominal[cls], self.diameters[cls])

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # checkpoints from before the type classifier: its buffers as built (not fitted), the rest strict
        for name in TYPE_BUFFERS:
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def uses_type_classifier(self) -> bool:
        """``image_type: features`` with more than one class (with one there is nothing to tell apart)."""
        return self.cfg.image_type == "features" and len(self.type_bias) > 1

    def type_classifier(self) -> TypeClassifier | None:
        """The fitted image-type classifier, or None when the model does not use one."""
        if not self.uses_type_classifier:
            return None
        if not bool(self.type_coef.any()):
            raise CellpipeError("model.cellpose.image_type is features but the model's type classifier was never "
                                "fitted (a checkpoint from before it was trained?)")  # fmt: skip
        return TypeClassifier(**{name: getattr(self, f"type_{name}").detach().cpu().numpy() for name in TYPE_FIELDS})


def label_image(anns: list[dict], height: int, width: int, fill: bool = False) -> np.ndarray:
    """int32 (H, W) labels 1..n of an image's annotations (a later cell wins a shared pixel); ``fill``:
    each mask's holes filled first."""
    masks = coco.instances(anns, height, width)
    labels = np.zeros(height * width, np.int32)
    for k in range(masks.shape[0]):
        pix = masks.indices[masks.indptr[k] : masks.indptr[k + 1]]
        if fill and len(pix):
            ys, xs = np.divmod(pix, width)
            box = np.zeros((ys.max() - ys.min() + 1, xs.max() - xs.min() + 1), bool)
            box[ys - ys.min(), xs - xs.min()] = True
            fy, fx = np.nonzero(ndi.binary_fill_holes(box))
            pix = (fy + ys.min()) * width + fx + xs.min()
        labels[pix] = k + 1
    return labels.reshape(height, width)


class FlowSamples(Dataset):
    """Training crops: image, flow targets (cell probability, dy, dx) and the image's class index.

    Each image is rescaled so its cells have the nominal diameter (its class's median
    diameter on the training data), its flows computed once, and every step draws a
    random ``crop_size`` window and flips from torch's RNG (seeded per iteration by the
    engine) — with ``rotate`` / ``scale_jitter``, a window turned by any angle and rescaled
    by 1 ± ``scale_jitter`` (:func:`warp`); with ``transpose``, a random transpose as well.
    """

    def __init__(self, data: dict, cfg: Model, *, crop_size: int, hflip: bool, vflip: bool,
                 image_ids: list[int] | None = None, diameters: np.ndarray | None = None,
                 cache_gb: float = 4.0, fill_holes: tuple[str, ...] = (), rotate: bool = False,
                 scale_jitter: float = 0.0, transpose: bool = False) -> None:  # fmt: skip
        self.cfg = cfg.cellpose
        self.fill_ids = coco.named_category_ids(data.get("categories", []), fill_holes, what="fill_holes")
        self.crop = crop_size or 256
        self.hflip, self.vflip = hflip, vflip
        self.rotate, self.scale_jitter, self.transpose = rotate, scale_jitter, transpose
        wanted = None if image_ids is None else set(image_ids)
        self.images = [im for im in data["images"] if wanted is None or im["id"] in wanted]
        self.by_image: dict[int, list[dict]] = {}
        for a in data["annotations"]:
            self.by_image.setdefault(a["image_id"], []).append(a)
        self.diameters = diameters if diameters is not None else class_diameters(data)
        names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
        self.nominal = np.asarray([self.cfg.diameter_of(n) for n in names], np.float32)
        self.cache = SampleCache(cache_gb * 1e9, lambda e: e[0].nbytes + e[1].nbytes)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.images)

    def image_categories(self) -> list[frozenset[int]]:
        """Each training image's category ids (what repeat-factor sampling weighs images by)."""
        return image_categories(self.images, self.by_image)

    def image_class(self, im: dict) -> int:
        anns = self.by_image.get(im["id"], [])
        if not anns:
            return 0
        return int(np.bincount([a["category_id"] - 1 for a in anns]).argmax())

    def type_features(self) -> tuple[np.ndarray, np.ndarray]:
        """Whole-image features (N, F) and class indices (N,) of the training images that hold cells."""
        rows = [(image_features(read_grey(im["path"], (int(im["height"]), int(im["width"])))), self.image_class(im))
                for im in self.images if self.by_image.get(im["id"])]  # fmt: skip
        if not rows:
            return np.zeros((0, N_FEATURES)), np.zeros(0, np.int64)
        return np.stack([r[0] for r in rows]), np.asarray([r[1] for r in rows], np.int64)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        cached = self.cache.get(index)
        if cached is not None:
            return cached
        dynamics, _ = _cellpose()
        im = self.images[index]
        h, w = int(im["height"]), int(im["width"])
        cls = self.image_class(im)
        scale = flow_scale(self.cfg, self.nominal[cls], self.diameters[cls])
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = F.interpolate(normalise(read_grey(im["path"], (h, w)))[None], size=size, mode="bilinear",
                              align_corners=False, antialias=scale < 1)[0]  # fmt: skip
        labels = label_image(self.by_image.get(im["id"], []), h, w, fill=cls + 1 in self.fill_ids)
        labels = resize_labels(labels, size)
        if labels.max() > 0:
            flows = dynamics.masks_to_flows(labels, device=torch.device("cpu"))  # (2, h, w): dy, dx
        else:
            flows = np.zeros((2, *size), np.float32)
        target = torch.from_numpy(np.concatenate([(labels > 0)[None], flows]).astype(np.float32))
        self.cache.put(index, (image, target, cls))
        return image, target, cls

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target, cls = self.load(index)
        h, w = image.shape[-2:]
        c = self.crop
        if h < c or w < c:  # pad small images to one crop (zero image, no cells, no flow)
            pad = (0, max(0, c - w), 0, max(0, c - h))
            image, target = F.pad(image, pad), F.pad(target, pad)
            h, w = image.shape[-2:]
        if self.rotate or self.scale_jitter:
            angle = float(torch.rand(()) * 2 * math.pi) if self.rotate else 0.0
            scale = 1.0 + float(torch.rand(()) * 2 - 1) * self.scale_jitter
            half = c / (2 * scale)  # the window's half side in the image's pixels
            cy = float(half + torch.rand(()) * max(0.0, h - 2 * half)) if h > 2 * half else h / 2
            cx = float(half + torch.rand(()) * max(0.0, w - 2 * half)) if w > 2 * half else w / 2
            image, target = warp(image, target, angle=angle, scale=scale, centre=(cy, cx), size=c)
        else:
            top = int(torch.randint(0, h - c + 1, ()).item())
            left = int(torch.randint(0, w - c + 1, ()).item())
            image = image[:, top : top + c, left : left + c]
            target = target[:, top : top + c, left : left + c].clone()
        if self.hflip and torch.rand(()) < 0.5:
            image, target = flip(image, target, -1)
        if self.vflip and torch.rand(()) < 0.5:
            image, target = flip(image, target, -2)
        if self.transpose and torch.rand(()) < 0.5:
            image, target = transpose(image, target)
        return image.contiguous(), {"flows": target.contiguous(), "label": torch.tensor(cls)}


def warp(image: torch.Tensor, target: torch.Tensor, *, angle: float, scale: float, centre: tuple[float, float],
         size: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A ``size``² window of an image and its (cell probability, dy, dx) targets, rotated and rescaled.

    cellpose's own training draws every crop rotated by any angle and rescaled by 0.75–1.25
    (``transforms.random_rotate_and_resize``): cells are seen in every orientation and at
    sizes around the nominal diameter, which the network must tolerate at inference
    since real cells vary in size within a type. The window's centre sits at ``centre``
    (y, x, in the image's pixels); an output pixel ``q`` (from the window's centre) reads
    the image at ``centre + R(-angle) q / scale``, bilinearly, zeros outside. The flows are
    unit vectors toward their cell's centre, so each is turned by ``angle`` like the image
    (their length is kept); the cell probability is re-binarised at 0.5.
    """
    grid = window_grid(tuple(image.shape[-2:]), angle=angle, scale=scale, centre=centre, size=size)
    cos, sin = math.cos(angle), math.sin(angle)
    both = torch.cat([image, target])[None]
    out = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    n = image.shape[0]
    image, prob, dy, dx = out[:n], out[n], out[n + 1], out[n + 2]
    # a vector (dx, dy) in the image becomes R(angle)(dx, dy) in the window, the inverse of the sampling map
    rx, ry = cos * dx - sin * dy, sin * dx + cos * dy
    return image.contiguous(), torch.stack([(prob > 0.5).float(), ry, rx])


def window_grid(shape: tuple[int, int], *, angle: float, scale: float, centre: tuple[float, float],
                size: int) -> torch.Tensor:  # fmt: skip
    """``grid_sample``'s grid (1, size, size, 2) of :func:`warp`'s window in an image of ``shape``."""
    h, w = shape
    cos, sin = math.cos(angle), math.sin(angle)
    r = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) / scale
    qy, qx = torch.meshgrid(r, r, indexing="ij")
    px = centre[1] - 0.5 + cos * qx + sin * qy  # pixel coordinates (pixel centres at integers)
    py = centre[0] - 0.5 - sin * qx + cos * qy
    return torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], dim=-1)[None]


def flip(image: torch.Tensor, target: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror an image and its (cell probability, dy, dx) targets along ``dim`` (-1: x, -2: y).

    The flow component along the mirrored axis changes sign, so flows still point at the
    cells' centres.
    """
    image, target = image.flip(dim), target.flip(dim).clone()
    component = 2 if dim == -1 else 1
    target[component] = -target[component]
    return image, target


def transpose(image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Transpose an image and its (cell probability, dy, dx) targets (y ↔ x).

    The flow's two components swap with the axes, so flows still point at the cells' centres.
    """
    target = target.transpose(-2, -1)[[0, 2, 1]]
    return image.transpose(-2, -1), target


def class_diameters(data: dict) -> np.ndarray:
    """Median equivalent diameter of each category's cells (by category id order)."""
    cats = sorted(c["id"] for c in data["categories"])
    out = []
    for cid in cats:
        areas = [a["area"] for a in data["annotations"] if a["category_id"] == cid]
        out.append(float(np.median([equivalent_diameter(x) for x in areas])) if areas else 30.0)
    return np.asarray(out, np.float32)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label image at ``size``, sampled at pixel centres like the image's bilinear resize.

    ``mode="nearest"`` samples at ``floor(i / scale)``: up to a pixel off the image's
    ``align_corners=False`` grid, which on 17-px cells costs ≈ 0.1 IoU (measured in
    ``tests/test_cellpose.py``).
    """
    if tuple(labels.shape) == tuple(size):
        return labels.astype(np.int32)
    out = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None], size=size, mode="nearest-exact")
    return out[0, 0].numpy().astype(np.int32)


def maps_at(flows: np.ndarray, cellprob: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flows (2, h, w) and cell-probability logits (h, w) resampled (bilinear, pixel centres) to ``size``.

    Masks are then recovered at the image's own size — cellpose's ``resample=True``.
    Recovering them at the network's scale and resizing the label image instead (cellpose's
    ``resize_and_compute_masks``, nearest-neighbour on OpenCV's grid) caps the mean IoU of
    perfect flows near 0.8 on the real cells.
    """
    if tuple(cellprob.shape) == tuple(size):
        return flows, cellprob
    maps = torch.from_numpy(np.concatenate([flows, cellprob[None]]).astype(np.float32))[None]
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[0].numpy()
    return maps[:2], maps[2]


def masks_from_maps(flows: np.ndarray, cellprob: np.ndarray, c: Any) -> np.ndarray:
    """Label image from flows (as the network outputs them: 5 × unit flows) and cell-probability logits."""
    dynamics, _ = _cellpose()
    with warnings.catch_warnings():  # torch's notice about sparse invariant checks, from cellpose's code
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        return dynamics.compute_masks(
            flows, cellprob, niter=c.niter, cellprob_threshold=c.cellprob_threshold,
            flow_threshold=c.flow_threshold, min_size=c.min_size, device=torch.device("cpu"),
        )  # fmt: skip


def _pad16(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    return (F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x), h, w


class CellposeFlow(Family):
    name = "cellpose flow U-Net"
    class_specific = ("classify.", "diameters", "type_")
    own_tta = True  # flow maps of the flipped images averaged (cellpose's own augmentation)

    def require(self) -> None:
        _cellpose()

    def build(self, cfg: Model, num_classes: int) -> nn.Module:
        return FlowNet(cfg, num_classes)

    def dataset(self, data: dict, cfg: Model, train_cfg: Any, image_ids: list[int] | None = None) -> FlowSamples:
        return FlowSamples(data, cfg, crop_size=train_cfg.crop_size, hflip=train_cfg.hflip, vflip=train_cfg.vflip,
                           image_ids=image_ids, cache_gb=train_cfg.cache_gb,
                           fill_holes=tuple(train_cfg.fill_holes), rotate=train_cfg.rotate,
                           scale_jitter=train_cfg.scale_jitter, transpose=train_cfg.transpose)  # fmt: skip

    def set_classes(self, model: nn.Module, cfg: Model, classes: list[str]) -> None:
        model.nominal = [cfg.cellpose.diameter_of(name) for name in classes]

    def fit_data(self, model: nn.Module, dataset: FlowSamples) -> None:
        model.diameters.copy_(torch.from_numpy(dataset.diameters))
        if model.uses_type_classifier:
            features, labels = dataset.type_features()
            if not len(labels):
                raise CellpipeError("image_type: features needs training images that hold cells; none does")
            fit = TypeClassifier.fit(features, labels, len(model.type_bias), model.cfg.type_l2)
            for name in TYPE_FIELDS:
                getattr(model, f"type_{name}").copy_(torch.from_numpy(getattr(fit, name)))
            right = int((fit.probabilities(features).argmax(1) == labels).sum())
            log(f"image-type classifier fitted on {len(labels)} training images ({right} named right in sample)")

    def train_step(self, model: nn.Module, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        x = torch.stack(images)
        t = torch.stack([tg["flows"] for tg in targets])
        labels = torch.stack([tg["label"] for tg in targets])
        maps, logits = model(x)
        return {
            "loss_flow": F.mse_loss(maps[:, :2], 5.0 * t[:, 1:]) / 2.0,  # cellpose's weighting
            "loss_cellprob": F.binary_cross_entropy_with_logits(maps[:, 2], t[:, 0]),
            "loss_type": F.cross_entropy(logits, labels),
        }

    def input_pixels(self, model: nn.Module, cfg: Model, height: int, width: int) -> int:
        c = cfg.cellpose
        s = c.fixed_scale if c.scale == "fixed" else max(model.scale_of(k) for k in range(len(model.diameters)))
        if not np.isfinite(s) or s * max(height, width) > 1e9:  # a checkpoint with a diameter of 0
            return 2**62
        return int(max(16, round(height * s)) * max(16, round(width * s)))

    def limits(self, model: nn.Module) -> Limits:
        return Limits(float(model.score_thresh), int(model.detections_per_img), flow_threshold=float(model.cfg.flow_threshold))

    def set_limits(self, model: nn.Module, limits: Limits) -> None:
        model.score_thresh, model.detections_per_img = limits.score_thresh, limits.detections_per_img
        if limits.flow_threshold is not None:
            model.cfg = model.cfg.model_copy(update={"flow_threshold": float(limits.flow_threshold)})

    @torch.no_grad()
    def run(self, model: FlowNet, x: torch.Tensor, scale: float, device: Any, tta: bool = False
            ) -> tuple[np.ndarray, np.ndarray, int]:  # fmt: skip
        """Flows (2, h, w) and cell-probability logits (h, w) at ``scale``, and the predicted class.

        With ``tta`` the maps of the image and of its horizontal and vertical flips are
        averaged (each flipped back, its flow component negated), as are the type logits.
        """
        h, w = x.shape[-2:]
        size = (max(16, round(h * scale)), max(16, round(w * scale)))
        xs = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        xs, sh, sw = _pad16(xs.to(device))
        maps, logits = model(xs)
        if tta:
            for dim, component in ((-1, 1), (-2, 0)):
                m, lg = model(xs.flip(dim))
                m = m.flip(dim)
                m[:, component] = -m[:, component]
                maps, logits = maps + m, logits + lg
            maps, logits = maps / 3, logits / 3
        maps = maps[..., :sh, :sw].float().cpu()
        return maps[0, :2].numpy(), maps[0, 2].numpy(), int(logits.argmax(1).item())

    def predict(self, model: nn.Module, grey: np.ndarray, *, device: Any, mask_threshold: float = 0.5) -> Instances:
        return self._predict(model, grey, device=device, tta=False)

    def predict_tta(self, model: nn.Module, grey: np.ndarray, *, device: Any, mask_threshold: float = 0.5) -> Instances:
        return self._predict(model, grey, device=device, tta=True)

    @torch.no_grad()
    def _predict(self, model: nn.Module, grey: np.ndarray, *, device: Any, tta: bool) -> Instances:
        model.eval()
        c = model.cfg
        x = normalise(grey)
        classifier = model.type_classifier()
        if classifier is not None:  # the type first, then one pass at its scale
            cls = classifier.predict(grey)
            flows, cellprob, _ = self.run(model, x, model.scale_of(cls), device, tta)
        elif c.scale == "fixed":
            flows, cellprob, cls = self.run(model, x, c.fixed_scale, device, tta)
        else:  # classify at the mean scale, then predict at the predicted class's scale
            mean_scale = float(np.mean([model.scale_of(k) for k in range(len(model.diameters))]))
            flows, cellprob, cls = self.run(model, x, mean_scale, device, tta)
            scale = model.scale_of(cls)
            if abs(scale / mean_scale - 1) > 0.05:
                flows, cellprob, _ = self.run(model, x, scale, device, tta)
        h, w = grey.shape
        flows, cellprob = maps_at(flows, cellprob, (h, w))
        labels = masks_from_maps(flows, cellprob, c)
        prob = (1.0 / (1.0 + np.exp(-cellprob))).ravel()
        flat = labels.ravel().astype(np.int64)
        pix = np.flatnonzero(flat)
        ids, rows = np.unique(flat[pix], return_inverse=True)
        masks = sp.csr_matrix((np.ones(len(pix), np.float32), (rows, pix)), shape=(len(ids), h * w))
        scores = (np.bincount(rows, weights=prob[pix], minlength=len(ids)) /
                  np.maximum(np.bincount(rows, minlength=len(ids)), 1)).astype(np.float32)  # fmt: skip
        keep = np.flatnonzero(scores >= model.score_thresh)
        keep = keep[np.argsort(-scores[keep], kind="stable")][: model.detections_per_img]
        return Instances(masks[keep], scores[keep], np.full(len(keep), cls + 1, np.int64), (h, w))
