"""Random gamma of the training windows (``pretrain/finetune.gamma``): the pixels as read, raised to a power
before the per-image normalisation; cells, windows and flips stay as they were."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from cellpipe import models
from cellpipe.config import Params, Train
from cellpipe.models.rcnn import CocoInstances, gamma_adjusted, normalise_image
from tests.conftest import tiny_model
from tests.helpers import one_cell_coco, same_draws, train_one_step

H, W = 30, 60


@pytest.fixture
def scene(tmp_path):
    """One H×W image of random pixels with one cell."""
    grey = np.random.default_rng(1).integers(0, 256, (H, W), dtype=np.uint8)
    cell = np.zeros((H, W), np.uint8)
    cell[9:21, 10:22] = 1
    return one_cell_coco(tmp_path, grey, cell, 1, ["shsy5y"])


@given(st.floats(0.3, 3.0))
def test_gamma_keeps_black_white_and_the_order_of_the_pixels(gamma):
    p = np.arange(256, dtype=np.uint8)
    out = gamma_adjusted(p, gamma)
    assert out.dtype == np.float32 and out[0] == 0 and out[255] == pytest.approx(255)
    assert (np.diff(out) >= 0).all()
    assert out[128] == pytest.approx(255 * (128 / 255) ** gamma, rel=1e-6)


def test_gamma_one_is_the_identity_and_above_one_darkens_the_midtones():
    p = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(gamma_adjusted(p, 1.0), p.astype(np.float32))
    assert (gamma_adjusted(p, 1.5)[1:-1] < p[1:-1]).all() and (gamma_adjusted(p, 1 / 1.5)[1:-1] > p[1:-1]).all()


def test_windows_keep_their_cells_and_take_a_gamma_in_range(scene):
    """The same window and cells as without it (the gamma is drawn after the window); the image is the
    normalised gamma-adjusted pixels for one gamma in [1/(1+j), 1+j], and not the plain one."""
    j = 0.5
    plain, jittered = CocoInstances(scene, H, W), CocoInstances(scene, H, W, gamma=j)
    grey = np.asarray(Image.open(scene["images"][0]["path"]))
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        ia, ta = plain[0]
        torch.manual_seed(seed)
        ib, tb = jittered[0]
        assert torch.equal(ta["masks"], tb["masks"]) and torch.equal(ta["boxes"], tb["boxes"])
        assert torch.equal(ia, normalise_image(grey)) and not torch.allclose(ia, ib)
        # recover the gamma: the one whose adjusted, normalised pixels give this image
        grid = np.exp(np.linspace(-math.log1p(j), math.log1p(j), 401))
        err = [float((normalise_image(gamma_adjusted(grey, g)) - ib).abs().max()) for g in grid]
        best = int(np.argmin(err))
        assert err[best] < 0.02
        seen.add(best > 200)
    assert seen == {True, False}  # both darker and lighter draws


def test_no_gamma_draws_nothing_from_the_random_stream(scene):
    plain = CocoInstances(scene, H, W, hflip=True, vflip=True, crop_size=24)
    off = CocoInstances(scene, H, W, hflip=True, vflip=True, crop_size=24, gamma=0.0)
    same_draws(plain, off, 1)


def test_the_mask_rcnn_family_takes_it_and_the_flow_family_refuses_it(tiny_coco):
    cfg = tiny_model()
    family = models.family(cfg)
    ds = family.dataset(tiny_coco, cfg, Train(crop_size=64, gamma=0.3, copy_paste=1.0))
    assert ds.gamma == 0.3 and family.dataset(tiny_coco, cfg, Train(crop_size=64)).gamma == 0.0
    train_one_step(cfg, ds)
    assert Params.model_validate({"finetune": {"gamma": 0.3}})
    with pytest.raises(ValueError, match=r"finetune\.gamma is for model\.arch maskrcnn"):
        Params.model_validate({"model": {"arch": "cellpose"}, "finetune": {"gamma": 0.3}})
    with pytest.raises(ValueError, match="less than 1"):
        Train(gamma=1.0)
