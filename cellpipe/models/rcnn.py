"""The pieces both Mask R-CNN backends share: their training data and single-image prediction.

Training data: COCO JSON → tensors in torchvision's Mask R-CNN convention (detectron2's
backend takes the same).

Images are normalised per image (the real images sit near grey 128 with a small,
image-dependent spread; a fixed mean/std would leave some nearly flat), replicated to
three channels, and resized to the model's input size; instances are kept as
box-sized crops, so an image with hundreds of cells costs kilobytes, not a full mask
per cell, and decoding COCO masks happens once, not every step. A random window and
flips (torchvision transforms v2) are drawn per step, with ``transpose`` a random transpose
(with both flips, the window comes in any of its 8 right-angle orientations), and with
``scale_jitter`` a random rescaling of the window (multi-scale training, as detectron2's
ResizeShortestEdge), with ``gamma`` a random gamma of the pixels (:func:`gamma_adjusted`), and
with ``copy_paste`` the cells of another image's window pasted onto the background of this one
(:meth:`CocoInstances.paste`).

What stays in memory per image is its 8-bit pixels and those crops (≈ 0.5 MB for a
704×520 LIVECell image with 340 cells): normalising and resizing again each step
costs a few milliseconds against a training step's hundreds, and keeps LIVECell's
5,000 images at ≈ 2.5 GB where float images at the input size would take ≈ 10 GB.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_util
from scipy import ndimage as ndi
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from cellpipe.coco import named_category_ids, segmentation_rle
from cellpipe.config import Model
from cellpipe.images import input_size, read_grey
from cellpipe.instances import Instances
from cellpipe.models import Family, Limits
from cellpipe.models.masks import maskness, paste_sparse
from cellpipe.postprocess import image_class
from cellpipe.repeat_factors import image_categories
from cellpipe.samples import SampleCache

MIN_TRAINING_PIXELS = 4
"""A cell with fewer pixels in a training window (a sliver at the window's edge, or a cell rescaled
below it) is no training target: it teaches nothing and its box is degenerate."""

PASTE_HALO = 2
"""Pixels of its surroundings a pasted cell brings along: phase contrast draws a bright halo around
each cell, and a cell cut out along its mask alone would be a shape no real image shows."""


def normalise_image(grey: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) → float (3, H, W) with zero mean and unit std per image."""
    x = torch.from_numpy(grey.astype(np.float32))
    x = (x - x.mean()) / x.std().clamp_min(1.0)
    return x.expand(3, *x.shape).contiguous()


def gamma_adjusted(grey: np.ndarray, gamma: float) -> np.ndarray:
    """uint8 pixels p → 255·(p/255)^gamma (float32), through a 256-entry table.

    A photometric augmentation that survives the per-image normalisation: a change of brightness
    or contrast is a linear map that :func:`normalise_image` undoes, a gamma is not — it stretches
    the dark end of the histogram and squeezes the bright end (or the reverse), as exposure and
    the phase-contrast halo's strength vary between acquisitions."""
    table = (255.0 * (np.arange(256, dtype=np.float64) / 255.0) ** gamma).astype(np.float32)
    return table[grey]


@dataclass
class Sample:
    """An image's 8-bit pixels, its size at training scale and its instances (at that scale) as box-cropped masks."""

    grey: np.ndarray  # (h, w) uint8, as read
    size: tuple[int, int]  # (H, W) at the model's input scale
    corners: np.ndarray  # (n, 2) top-left (y, x) of each instance's crop
    masks: list[np.ndarray]  # boolean crops
    labels: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.grey.nbytes + self.corners.nbytes + self.labels.nbytes + sum(m.nbytes + 112 for m in self.masks)


class CocoInstances(Dataset):
    """Instances of a COCO JSON (cellpipe's or normalised LIVECell) as model inputs.

    Each step sees a random ``crop_size`` window of the (resized) image, or the whole
    image when ``crop_size`` is 0. Crops at full resolution keep small cells large
    enough for the 7×7/14×14 RoI features while costing less than whole images. With
    ``scale_jitter`` j, a window of ``crop_size / f`` pixels is rescaled by f drawn from
    1 ± j: cells come at sizes around the input scale, a step costs the same.
    """

    def __init__(
        self,
        coco: dict,
        min_size: int,
        max_size: int,
        *,
        hflip: bool = False,
        vflip: bool = False,
        image_ids: list[int] | None = None,
        crop_size: int = 0,
        cache_gb: float = 4.0,
        fill_holes: tuple[str, ...] = (),
        class_scales: dict[str, float] | None = None,
        base_share: float = 0.0,
        scale_jitter: float = 0.0,
        transpose: bool = False,
        copy_paste: float = 0.0,
        copy_paste_types: tuple[str, ...] = (),
        gamma: float = 0.0,
    ) -> None:
        self.coco = coco
        self.fill_ids = named_category_ids(coco.get("categories", []), fill_holes, what="fill_holes")
        scales = class_scales or {}
        self.scale_of_id = {int(c["id"]): float(scales[c["name"]]) for c in coco.get("categories", []) if c.get("name") in scales}
        self.min_size, self.max_size = min_size, max_size
        self.crop_size = crop_size
        self.scale_jitter = scale_jitter
        self.transpose = transpose
        self.copy_paste = copy_paste
        self.gamma = gamma
        # the types whose windows take pasted cells (none named: every type)
        self.paste_ids = named_category_ids(coco.get("categories", []), copy_paste_types, what="copy_paste_types")
        wanted = None if image_ids is None else set(image_ids)
        self.images = [im for im in coco["images"] if wanted is None or im["id"] in wanted]
        self.by_image: dict[int, list[dict]] = {}
        for a in coco["annotations"]:
            self.by_image.setdefault(a["image_id"], []).append(a)
        flips = []
        if hflip:
            flips.append(T.RandomHorizontalFlip(0.5))
        if vflip:
            flips.append(T.RandomVerticalFlip(0.5))
        self.augment = T.Compose(flips) if flips else None
        # each image's type (the category most of its cells have): its input scale, and the images
        # copy-paste draws cells from, as no real image mixes types
        types = [majority_category(self.by_image.get(im["id"], [])) for im in self.images]
        self.type_of = types
        self.same_type = {t: [k for k, u in enumerate(types) if u == t] for t in set(types)}
        # each image's own input scale (its type's); a rescaled image is drawn at ×1 instead a
        # ``base_share`` of the time, so that inference's first pass (at ×1) knows its type
        self.scales = [self.type_scale(t) for t in types]
        self.base_share = base_share
        self.cache = SampleCache(cache_gb * 1e9, lambda s: s.nbytes)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.images)

    def image_categories(self) -> list[frozenset[int]]:
        """Each training image's category ids (what repeat-factor sampling weighs images by)."""
        return image_categories(self.images, self.by_image)

    def load(self, index: int, own_scale: bool = True) -> Sample:
        """An image's pixels and its instances at its input scale, or at ×1 (cached)."""
        f = self.scales[index] if own_scale else 1.0
        key = index if f == self.scales[index] else (index, f)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        info = self.images[index]
        h, w = int(info["height"]), int(info["width"])
        grey = read_grey(Path(info["path"]), (h, w))
        anns = self.by_image.get(info["id"], [])
        size = input_size(h, w, max(1, round(self.min_size * f)), max(1, round(self.max_size * f)))
        corners, crops, labels = [], [], []
        for a in anns:
            rle_ = segmentation_rle(a["segmentation"], h, w)
            x, y, bw, bh = (int(v) for v in mask_util.toBbox(rle_))
            full = mask_util.decode(rle_)
            if size != (h, w):
                m = F.resize(torch.from_numpy(full)[None].float(), list(size), antialias=False)[0].numpy() >= 0.5
                ys, xs = np.nonzero(m)
                if len(ys) == 0:
                    self.dropped += 1  # a cell too small to survive the resize
                    continue
                y, x, bh, bw = ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            else:
                m = full.astype(bool)
            crop = m[y : y + bh, x : x + bw]
            if int(a["category_id"]) in self.fill_ids:
                crop = ndi.binary_fill_holes(crop)
            corners.append((y, x))
            crops.append(np.ascontiguousarray(crop))
            labels.append(int(a["category_id"]))
        sample = Sample(grey, size, np.asarray(corners, dtype=np.int64).reshape(-1, 2), crops, np.asarray(labels, dtype=np.int64))
        self.cache.put(key, sample)
        return sample

    def type_scale(self, category: int | None) -> float:
        """The input scale factor of an image of this type (its majority category); 1 without a scale
        for it or without cells."""
        if category is None:
            return 1.0
        return self.scale_of_id.get(category, 1.0)

    def image(self, s: Sample, gamma: float = 1.0) -> torch.Tensor:
        """The normalised image (1×H×W) at the input scale, its pixels first raised to ``gamma``
        (:func:`gamma_adjusted`)."""
        image = normalise_image(s.grey if gamma == 1.0 else gamma_adjusted(s.grey, gamma))[:1]
        if s.size != tuple(s.grey.shape):
            image = F.resize(image, list(s.size), antialias=True)
        return image

    def window(self, s: Sample, factor: float = 1.0) -> tuple[int, int, int, int]:
        """A random crop window (top, left, height, width), drawn from torch's RNG: ``crop_size / factor``
        pixels of the sample, so that rescaled by ``factor`` it is ``crop_size`` again."""
        H, W = s.size
        if not self.crop_size:
            return 0, 0, H, W
        side = max(1, round(self.crop_size / factor))
        ch, cw = min(side, H), min(side, W)
        top = int(torch.randint(0, H - ch + 1, ()).item())
        left = int(torch.randint(0, W - cw + 1, ()).item())
        return top, left, ch, cw

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        at_base = self.scales[index] != 1.0 and self.base_share > 0 and float(torch.rand(())) < self.base_share
        s = self.load(index, own_scale=not at_base)
        # scale jitter: a window of crop/f pixels rescaled by f (a step costs the same), drawn only when
        # asked so that runs without it keep their random stream
        f = 1.0 + (float(torch.rand(())) * 2 - 1) * self.scale_jitter if self.scale_jitter else 1.0
        top, left, ch, cw = self.window(s, f)
        masks, labels = window_cells(s, top, left, ch, cw)
        # drawn only when asked, so that runs without it keep their random stream
        g = math.exp((float(torch.rand(())) * 2 - 1) * math.log1p(self.gamma)) if self.gamma else 1.0
        image = self.image(s, g)[:, top : top + ch, left : left + cw]
        # drawn only when asked, so that runs without it keep their random stream
        if self.copy_paste and self.takes_paste(index) and float(torch.rand(())) < self.copy_paste:
            image, masks, labels = self.paste(index, not at_base, image, masks, labels, g)
        mask_t = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, ch, cw), dtype=torch.uint8)
        if f != 1.0:
            image, mask_t, labels = _rescale(image, mask_t, labels, f)
        image = tv_tensors.Image(image.expand(3, -1, -1))
        target = {"masks": tv_tensors.Mask(mask_t), "labels": torch.as_tensor(labels, dtype=torch.int64)}
        if self.augment is not None:
            image, target = self.augment(image, target)
        m = target["masks"]
        # drawn only when asked, so that runs without it keep their random stream
        if self.transpose and float(torch.rand(())) < 0.5:
            image, m = image.transpose(-2, -1), m.transpose(-2, -1).contiguous()
        return image.as_subclass(torch.Tensor).contiguous(), {
            "boxes": _boxes(m),
            "labels": target["labels"],
            "masks": m.as_subclass(torch.Tensor),
        }

    def takes_paste(self, index: int) -> bool:
        """Whether copy-paste may fill this image's windows: its type is one of ``copy_paste_types`` (any
        type when none is named). Per type because pasting helps one type and costs the others: at the
        full budget, pasting into every window moved astro up 0.010 and cort and shsy5y down 0.009–0.010;
        into astro windows only, astro up 0.005, cort kept, shsy5y down 0.007 (docs/experiments.md)."""
        return not self.paste_ids or self.type_of[index] in self.paste_ids

    def paste(self, index: int, own_scale: bool, image: torch.Tensor, masks: list[np.ndarray], labels: list[int],
              gamma: float = 1.0) -> tuple[torch.Tensor, list[np.ndarray], list[int]]:  # fmt: skip
        """Copy-paste (Ghiasi et al., 2021) for cells: a random window of the same size from a random image
        of the same type (this one included), whose cells land on this window wherever they and their
        :data:`PASTE_HALO` touch none of its cells. Cells of a monolayer lie side by side, not on top of
        each other: pasting over a cell would cut its mask to a shape no real image shows, so only the
        background takes new cells — most where the window is sparse, few where it is crowded (on the real
        training images, cells per 256-px window at ×1.5: cort 3.6 → 7.1, astro 11.3 → 17.3, shsy5y 30.6 → 43.3)."""
        pool = self.same_type[self.type_of[index]]
        src = self.load(pool[int(torch.randint(0, len(pool), ()).item())], own_scale)
        ch, cw = image.shape[-2:]
        sh, sw = src.size
        if sh < ch or sw < cw:
            return image, masks, labels  # a smaller source holds no window of this size
        top = int(torch.randint(0, sh - ch + 1, ()).item())
        left = int(torch.randint(0, sw - cw + 1, ()).item())
        new, new_labels = window_cells(src, top, left, ch, cw)
        if not new:
            return image, masks, labels
        cells = np.stack(new).astype(bool)
        # a cell's halo misses the window's cells exactly when the cell misses their halo (the 3×3 square is
        # symmetric): two dilations of the window instead of one per cell
        square = np.ones((3, 3), bool)
        taken = np.logical_or.reduce(masks).astype(bool) if masks else np.zeros((ch, cw), bool)
        near = ndi.binary_dilation(taken, structure=square, iterations=PASTE_HALO)
        fits = ~(cells & near).any(axis=(1, 2))
        if not fits.any():
            return image, masks, labels
        region = torch.from_numpy(ndi.binary_dilation(cells[fits].any(axis=0), structure=square, iterations=PASTE_HALO))
        image = torch.where(region, self.image(src, gamma)[:, top : top + ch, left : left + cw], image)
        kept = np.flatnonzero(fits)
        return image, masks + [new[k] for k in kept], labels + [new_labels[k] for k in kept]


def majority_category(anns: list[dict]) -> int | None:
    """The category most of an image's cells have (its cell type); None for an image without cells."""
    if not anns:
        return None
    ids, counts = np.unique([int(a["category_id"]) for a in anns], return_counts=True)
    return int(ids[counts.argmax()])


def window_cells(s: Sample, top: int, left: int, ch: int, cw: int) -> tuple[list[np.ndarray], list[int]]:
    """A sample's cells inside a window: (ch×cw uint8 masks, labels); slivers under
    :data:`MIN_TRAINING_PIXELS` at the window's edge are left out (they teach nothing)."""
    masks, labels = [], []
    for (y, x), crop, label in zip(s.corners, s.masks, s.labels):
        y0, x0 = max(y, top), max(x, left)
        y1, x1 = min(y + crop.shape[0], top + ch), min(x + crop.shape[1], left + cw)
        if y1 <= y0 or x1 <= x0:
            continue
        part = crop[y0 - y : y1 - y, x0 - x : x1 - x]
        if part.sum() < MIN_TRAINING_PIXELS:
            continue
        m = np.zeros((ch, cw), dtype=np.uint8)
        m[y0 - top : y1 - top, x0 - left : x1 - left] = part
        masks.append(m)
        labels.append(int(label))
    return masks, labels


def _rescale(image: torch.Tensor, masks: torch.Tensor, labels: list[int], factor: float
             ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:  # fmt: skip
    """A training window (1×h×w image, n×h×w masks) × ``factor``; cells left under :data:`MIN_TRAINING_PIXELS`
    are dropped (as slivers at a window's edge are). Boxes are taken from the rescaled masks afterwards, so
    they fit."""
    h, w = image.shape[-2:]
    size = [max(1, round(h * factor)), max(1, round(w * factor))]
    image = F.resize(image, size, antialias=True)
    if masks.shape[0] == 0:
        return image, torch.zeros((0, *size), dtype=torch.uint8), labels
    masks = F.resize(masks, size, interpolation=T.InterpolationMode.NEAREST_EXACT)
    keep = masks.flatten(1).sum(1) >= MIN_TRAINING_PIXELS
    return image, masks[keep], [label for label, k in zip(labels, keep.tolist()) if k]


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    """[x0, y0, x1, y1] boxes enclosing each mask (x1/y1 exclusive, as torchvision expects)."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    masks = masks.bool()
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    n = masks.shape[0]
    ys = torch.arange(masks.shape[1]).expand(n, -1)
    xs = torch.arange(masks.shape[2]).expand(n, -1)
    y0 = torch.where(rows, ys, masks.shape[1]).min(1).values
    y1 = torch.where(rows, ys, -1).max(1).values + 1
    x0 = torch.where(cols, xs, masks.shape[2]).min(1).values
    x1 = torch.where(cols, xs, -1).max(1).values + 1
    return torch.stack([x0, y0, x1, y1], 1).float()


# --------------------------------------------------------------------------- single-image prediction


def mask_geometry(model: torch.nn.Module) -> str:
    """How a Mask R-CNN's masks go into the image: its transform's geometry (torchvision) or its own (detectron2)."""
    return getattr(getattr(model, "transform", None), "geometry", None) or getattr(model, "mask_geometry", "exact")


def to_instances(
    out: dict, shape: tuple[int, int], mask_threshold: float, geometry: str, maskness_power: float = 0.0
) -> Instances:
    """A model's raw output (boxes in the image, unpasted ``(N, 1, M, M)`` masks) → sparse instances.

    The masks cover ``mask_rois`` where the model predicted them over grown boxes (``model.mask_box_scale``).
    ``maskness_power`` > 0: each score × its mask's :func:`maskness` to that power (``predict.maskness``)."""
    masks = paste_sparse(out["masks"].float(), out.get("mask_rois", out["boxes"]), shape, mask_threshold, geometry)
    scores = out["scores"].float()
    if maskness_power and len(scores):
        scores = scores * maskness(out["masks"], mask_threshold).to(scores) ** maskness_power
    return Instances(masks, scores.cpu().numpy(), out["labels"].cpu().numpy(), shape)


@torch.no_grad()
def detect(model: torch.nn.Module, grey: np.ndarray, *, device: torch.device | str = "cpu") -> dict:
    """The model's raw output for one grey image (uint8 H×W): boxes, scores, labels, masks not yet pasted."""
    model.eval()
    x = normalise_image(grey).to(device)
    with torch.autocast(device_type="cuda", enabled=str(device).startswith("cuda")):
        return model([x])[0]


def predict_image(
    model: torch.nn.Module, grey: np.ndarray, *, device: torch.device | str = "cpu", mask_threshold: float = 0.5
) -> Instances:
    """Detections of one grey image (uint8 H×W) at full resolution, masks as a sparse matrix."""
    out = detect(model, grey, device=device)
    return to_instances(out, grey.shape, mask_threshold, mask_geometry(model), getattr(model, "maskness", 0.0))


@contextmanager
def input_scale(model: torch.nn.Module, factor: float) -> Iterator[None]:
    """The model's inference input size (min_size/max_size) × ``factor`` while inside.

    torchvision keeps the sizes on its transform (``min_size`` a tuple), the detectron2
    wrapper on itself; both resize each image to them before the backbone and map the
    detections back to the image, so only the scale the network sees changes.
    """
    holder = getattr(model, "transform", model)
    mins, maxs = holder.min_size, holder.max_size
    base = mins[-1] if isinstance(mins, tuple | list) else mins
    new = max(1, round(base * factor))
    holder.min_size = (new,) if isinstance(mins, tuple | list) else new
    holder.max_size = max(1, round(maxs * factor))
    try:
        yield
    finally:
        holder.min_size, holder.max_size = mins, maxs


def predict_at_class_scale(
    model: torch.nn.Module, grey: np.ndarray, *, device, mask_threshold: float, scales: dict[int, float], vote_min_score: float
) -> Instances:
    """Detections at the scale of the image's cell type: two passes when that scale is not ×1.

    The first pass (×1) votes the type (summed scores of the detections scoring at least
    ``vote_min_score``, as the thresholds' vote); when ``scales`` gives that type (label)
    another factor, the image is predicted again at it and that pass is the answer. The
    types are far apart in size (astro ≈ 44 px against ≈ 17 px), so one input scale cannot
    suit all three; costs a second pass only for the images of a rescaled type. The vote
    needs labels and scores only: the first pass's masks are pasted only when they are kept.
    """
    out = detect(model, grey, device=device)
    labels, scores = out["labels"].cpu().numpy(), out["scores"].float().cpu().numpy()
    factor = scales.get(int(image_class(labels, scores, "0", vote_min_score)), 1.0) if len(labels) else 1.0
    if factor != 1.0:
        with input_scale(model, factor):
            out = detect(model, grey, device=device)
    return to_instances(out, grey.shape, mask_threshold, mask_geometry(model), getattr(model, "maskness", 0.0))


class RCNNFamily(Family):
    """What the two Mask R-CNN backends share: torchvision's calling convention (``model(images,
    targets)`` → losses in training, detections in eval), :class:`CocoInstances` as training
    data and :func:`predict_image`. A backend adds how to build its network and where its
    inference limits live."""

    def dataset(self, data: dict, cfg: Model, train_cfg, image_ids: list[int] | None = None) -> CocoInstances:
        return CocoInstances(data, cfg.min_size, cfg.max_size, hflip=train_cfg.hflip, vflip=train_cfg.vflip,
                             image_ids=image_ids, crop_size=train_cfg.crop_size, cache_gb=train_cfg.cache_gb,
                             fill_holes=tuple(train_cfg.fill_holes), class_scales=cfg.class_scales,
                             base_share=cfg.class_scale_base_share, scale_jitter=train_cfg.scale_jitter,
                             transpose=train_cfg.transpose, copy_paste=train_cfg.copy_paste,
                             copy_paste_types=tuple(train_cfg.copy_paste_types), gamma=train_cfg.gamma)  # fmt: skip

    def set_classes(self, model: torch.nn.Module, cfg: Model, classes: list[str]) -> None:
        # label k (1-based, torchvision's convention) → its type's input scale; kept off the state
        # dict: it is the config's, and checkpoints stay loadable whatever it says
        model.class_scales = {k + 1: cfg.scale_of(name) for k, name in enumerate(classes) if cfg.scale_of(name) != 1.0}
        model.class_scale_vote = cfg.class_scale_vote

    def train_step(self, model: torch.nn.Module, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        return model(images, targets)

    def predict(self, model: torch.nn.Module, grey: np.ndarray, *, device, mask_threshold: float) -> Instances:
        scales = getattr(model, "class_scales", None)
        if not scales:
            return predict_image(model, grey, device=device, mask_threshold=mask_threshold)
        return predict_at_class_scale(model, grey, device=device, mask_threshold=mask_threshold, scales=scales,
                                      vote_min_score=model.class_scale_vote)  # fmt: skip

    def input_pixels(self, model: torch.nn.Module, cfg: Model, height: int, width: int) -> int:
        top = max([1.0, *cfg.class_scales.values()])
        h, w = input_size(height, width, round(cfg.min_size * top), round(cfg.max_size * top))
        return h * w

    @abstractmethod
    def _limits_holder(self, model: torch.nn.Module):
        """The object carrying ``score_thresh``, ``detections_per_img`` and ``nms_thresh``."""

    @abstractmethod
    def _inference_proposals(self, model: torch.nn.Module) -> tuple[dict, object]:
        """The RPN's post-NMS proposal counts and the key of the inference one (each backend keys its own way)."""

    def limits(self, model: torch.nn.Module) -> Limits:
        holder = self._limits_holder(model)
        counts, key = self._inference_proposals(model)
        proposals = int(counts[key])
        return Limits(float(holder.score_thresh), int(holder.detections_per_img), float(holder.nms_thresh), proposals,
                      maskness=float(getattr(model, "maskness", 0.0)))  # fmt: skip

    def set_limits(self, model: torch.nn.Module, limits: Limits) -> None:
        holder = self._limits_holder(model)
        holder.score_thresh, holder.detections_per_img = limits.score_thresh, limits.detections_per_img
        if limits.nms_thresh is not None:
            holder.nms_thresh = limits.nms_thresh
        if limits.proposals is not None:
            counts, key = self._inference_proposals(model)
            counts[key] = limits.proposals
        if limits.maskness is not None:
            model.maskness = float(limits.maskness)  # a predict-time setting, never in the state dict
