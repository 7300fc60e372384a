"""Training data: COCO JSON → tensors for torchvision's Mask R-CNN.

Images are normalised per image (the real images sit near grey 128 with a small,
image-dependent spread; a fixed mean/std would leave some nearly flat), replicated to
three channels, and resized once to the model's input size together with their masks
(torchvision transforms v2), then kept in memory: decoding hundreds of COCO masks per
image every step would dominate a CPU step. Flips are applied per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_util
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from cellpipe.images import read_grey


def normalise_image(grey: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) → float (3, H, W) with zero mean and unit std per image."""
    x = torch.from_numpy(grey.astype(np.float32))
    x = (x - x.mean()) / x.std().clamp_min(1.0)
    return x.expand(3, *x.shape).contiguous()


def input_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The size torchvision's GeneralizedRCNNTransform resizes an image to."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)


@dataclass
class Sample:
    image: torch.Tensor
    target: dict


class CocoInstances(Dataset):
    """Instances of a COCO JSON (cellpipe's or normalised LIVECell) as model inputs."""

    def __init__(self, coco: dict, min_size: int, max_size: int, *, hflip: bool = False, vflip: bool = False,
                 class_agnostic: bool = False, image_ids: list[int] | None = None) -> None:
        self.coco = coco
        self.min_size, self.max_size = min_size, max_size
        self.class_agnostic = class_agnostic
        self.images = [im for im in coco["images"] if image_ids is None or im["id"] in set(image_ids)]
        self.by_image: dict[int, list[dict]] = {}
        for a in coco["annotations"]:
            self.by_image.setdefault(a["image_id"], []).append(a)
        flips = []
        if hflip:
            flips.append(T.RandomHorizontalFlip(0.5))
        if vflip:
            flips.append(T.RandomVerticalFlip(0.5))
        self.augment = T.Compose(flips) if flips else None
        self._cache: dict[int, Sample] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Sample:
        """Normalised, resized image and targets (cached)."""
        if index in self._cache:
            return self._cache[index]
        info = self.images[index]
        h, w = int(info["height"]), int(info["width"])
        image = normalise_image(read_grey(Path(info["path"]), (h, w)))
        anns = self.by_image.get(info["id"], [])
        size = input_size(h, w, self.min_size, self.max_size)
        image = F.resize(image, list(size), antialias=True)
        if anns:
            rles = []
            for a in anns:
                seg = a["segmentation"]
                if isinstance(seg, list):
                    rles.append(mask_util.merge(mask_util.frPyObjects(seg, h, w)))
                elif isinstance(seg["counts"], list):
                    rles.append(mask_util.frPyObjects(seg, h, w))
                else:
                    rles.append(seg)
            masks = torch.from_numpy(mask_util.decode(rles)).permute(2, 0, 1)
            masks = F.resize(masks[:, None].float(), list(size), antialias=False)[:, 0] >= 0.5
            labels = torch.tensor([1 if self.class_agnostic else int(a["category_id"]) for a in anns])
            keep = masks.flatten(1).any(1)
            self.dropped += int((~keep).sum())  # cells too small to survive the resize
            masks, labels = masks[keep].to(torch.uint8), labels[keep]
        else:
            masks = torch.zeros((0, *size), dtype=torch.uint8)
            labels = torch.zeros(0, dtype=torch.int64)
        sample = Sample(image, {"masks": masks, "labels": labels})
        self._cache[index] = sample
        return sample

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        s = self.load(index)
        image = tv_tensors.Image(s.image)
        masks = tv_tensors.Mask(s.target["masks"])
        target = {"masks": masks, "labels": s.target["labels"]}
        if self.augment is not None:
            image, target = self.augment(image, target)
        m = target["masks"]
        boxes = _boxes(m)
        return image.as_subclass(torch.Tensor), {
            "boxes": boxes, "labels": target["labels"], "masks": m.as_subclass(torch.Tensor)}


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


def collate(batch):
    return tuple(zip(*batch))
