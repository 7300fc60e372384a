"""Random transposes of training windows (``pretrain/finetune.transpose``): with both flips every
window comes in any of its 8 right-angle orientations, exactly (no resampling), in both families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellpipe import models
from cellpipe.config import Params, Train
from cellpipe.models.rcnn import CocoInstances
from tests.conftest import TINY_CP, tiny_model
from tests.helpers import flow_targets, one_cell_coco, two_cells


def _bar_coco(tmp_path) -> tuple[dict, np.ndarray, np.ndarray]:
    """One 30×40 image of random pixels holding one cell, a bar far from its own transpose."""
    grey = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    cell = np.zeros((30, 40), np.uint8)
    cell[4:9, 3:33] = 1
    return one_cell_coco(tmp_path, grey, cell, 1, ["shsy5y"]), grey, cell


def test_a_transposed_window_carries_its_cells_and_boxes_with_it(tmp_path):
    data, _, cell = _bar_coco(tmp_path)
    plain = CocoInstances(data, 30, 40)
    image0, target0 = plain[0]
    assert image0.shape[-2:] == (30, 40) and torch.equal(target0["masks"][0], torch.from_numpy(cell))
    ds = CocoInstances(data, 30, 40, transpose=True)
    torch.manual_seed(0)
    turned = 0
    for _ in range(40):
        image, target = ds[0]
        if image.shape[-2:] == (40, 30):
            turned += 1
            assert torch.equal(image, image0.transpose(-2, -1))
            assert torch.equal(target["masks"][0], torch.from_numpy(cell.T.copy()))
            assert target["boxes"].tolist() == [[4.0, 3.0, 9.0, 33.0]]  # x0 y0 x1 y1 of the bar turned upright
        else:
            assert torch.equal(image, image0) and torch.equal(target["boxes"], target0["boxes"])
        assert target["masks"].is_contiguous()
    assert 10 <= turned <= 30  # about half of the draws


def test_transposes_with_flips_give_all_eight_orientations(tmp_path):
    data, _, cell = _bar_coco(tmp_path)
    ds = CocoInstances(data, 30, 40, hflip=True, vflip=True, transpose=True)
    torch.manual_seed(1)

    def key(m: torch.Tensor) -> tuple:
        return (*m.shape, *m.flatten().tolist())

    seen = {key(ds[0][1]["masks"][0]) for _ in range(200)}
    c = torch.from_numpy(cell)
    d4 = {key(torch.rot90(m, k)) for m in (c, c.T) for k in range(4)}
    assert len(d4) == 8 and seen == d4  # the bar sits off-centre: 8 distinct placements, each one drawn


def test_the_families_datasets_take_the_switch(tiny_coco):
    cfg = tiny_model()
    ds = models.family(cfg).dataset(tiny_coco, cfg, Train(crop_size=64, transpose=True))
    assert ds.transpose
    torch.manual_seed(0)
    for k in range(len(ds)):
        image, target = ds[k]
        n = len(target["labels"])
        assert image.shape[-2:] == (64, 64) and target["masks"].shape == (n, 64, 64) and target["boxes"].shape == (n, 4)
    assert not models.family(cfg).dataset(tiny_coco, cfg, Train(crop_size=64)).transpose
    assert Params.model_validate({"finetune": {"transpose": True}, "pretrain": {"transpose": True}})
    assert Params.model_validate({"model": {"arch": "cellpose"}, "finetune": {"transpose": True}})


def test_transposed_flows_are_the_flows_of_the_transposed_cells():
    """The flow components swap with the axes: a slip would point them across the cells, not at their centres."""
    pytest.importorskip("cellpose", reason="the cellpose library is not installed")
    from cellpipe.models.cellpose_flow import transpose

    labels = two_cells()
    image = torch.arange(60 * 80, dtype=torch.float32).reshape(1, 60, 80)
    image_t, turned = transpose(image, flow_targets(labels))
    direct = flow_targets(np.ascontiguousarray(labels.T))
    assert torch.equal(image_t, image.transpose(-2, -1)) and torch.equal(turned[0], direct[0])
    inside = direct[0] > 0
    cosine = (turned[1:] * direct[1:]).sum(0)[inside]
    assert cosine.mean() > 0.99 and (cosine > 0.9).float().mean() > 0.98, cosine.mean()


def test_cellpose_windows_are_transposed_about_half_the_time(tiny_coco):
    pytest.importorskip("cellpose", reason="the cellpose library is not installed")
    from cellpipe import models

    family = models.family(TINY_CP)
    ds = family.dataset(tiny_coco, TINY_CP, Train(crop_size=96, hflip=False, vflip=False, transpose=True))
    plain = family.dataset(tiny_coco, TINY_CP, Train(crop_size=96, hflip=False, vflip=False))
    assert ds.transpose and not plain.transpose
    turned = 0
    for seed in range(12):
        torch.manual_seed(seed)
        image0, target0 = plain[0]
        torch.manual_seed(seed)
        image, target = ds[0]
        if not torch.equal(image, image0):
            turned += 1
            assert torch.equal(image, image0.transpose(-2, -1))
            assert torch.equal(target["flows"], target0["flows"].transpose(-2, -1)[[0, 2, 1]])
    assert 2 <= turned <= 10
