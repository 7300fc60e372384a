"""Scale jitter for Mask R-CNN (``pretrain/finetune.scale_jitter``): each training window rescaled by
1 ± the jitter, its cells with it, boxes refitted to the rescaled masks."""

from __future__ import annotations

import numpy as np
import torch

from cellpipe import models
from cellpipe.config import Train
from cellpipe.models.rcnn import CocoInstances, _boxes
from tests.conftest import tiny_model
from tests.helpers import ring_coco, train_one_step


def test_a_whole_image_and_its_cell_are_rescaled_together(tmp_path):
    data, ring, _ = ring_coco(tmp_path)  # a 40×50 image, one ring cell of radius 12 at (20, 25)
    ds = CocoInstances(data, 40, 50, scale_jitter=0.25)
    torch.manual_seed(0)
    factors = []
    for _ in range(30):
        image, target = ds[0]
        h, w = image.shape[-2:]
        f = w / 50
        factors.append(f)
        assert 30 <= h <= 50 and 37 <= w <= 63 and abs(h - 40 * f) <= 1
        (mask,) = target["masks"]
        assert abs(mask.sum().item() / (ring * f * f) - 1) < 0.12  # the cell's area goes with f²
        x0, y0, x1, y1 = target["boxes"][0].tolist()
        assert abs((x1 - x0) - 24 * f) <= 2 and abs((y1 - y0) - 24 * f) <= 2
        assert torch.equal(target["boxes"], _boxes(target["masks"]))
    assert min(factors) < 0.85 and max(factors) > 1.15  # the draws cover the range, not one scale


def test_windows_keep_the_crop_size_and_their_cells(tiny_coco):
    cfg = Train(crop_size=64, scale_jitter=0.25)
    family = models.family(tiny_model())
    ds = family.dataset(tiny_coco, tiny_model(), cfg)
    assert ds.scale_jitter == 0.25
    torch.manual_seed(1)
    cells = 0
    for _ in range(3):
        for k in range(len(ds)):
            image, target = ds[k]
            assert image.shape[0] == 3 and all(abs(s - 64) <= 1 for s in image.shape[-2:])
            n = len(target["labels"])
            assert target["masks"].shape == (n, *image.shape[-2:]) and target["boxes"].shape == (n, 4)
            if n:
                assert (target["masks"].flatten(1).sum(1) >= 4).all()  # no slivers, no empty masks
                b = target["boxes"]
                assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
            cells += n
    assert cells > 0


def test_no_jitter_draws_nothing_more_from_the_random_stream(tmp_path):
    """Without jitter a step draws its window and nothing else, so runs without it keep their crops."""
    data, _, _ = ring_coco(tmp_path)
    plain = CocoInstances(data, 40, 50, crop_size=24)
    s = plain.load(0)
    full = np.zeros(s.size, bool)
    (y, x), crop = s.corners[0], s.masks[0]
    full[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
    torch.manual_seed(3)
    windows = [plain.window(s) for _ in range(6)]
    assert len({w[:2] for w in windows}) > 1
    torch.manual_seed(3)
    for top, left, ch, cw in windows:
        image, target = plain[0]
        assert image.shape[-2:] == (24, 24)
        assert target["masks"].sum().item() == full[top : top + ch, left : left + cw].sum()


def test_a_tiny_model_trains_on_jittered_windows(tiny_coco):
    cfg = tiny_model()
    train_one_step(cfg, models.family(cfg).dataset(tiny_coco, cfg, Train(crop_size=64, scale_jitter=0.25)))
