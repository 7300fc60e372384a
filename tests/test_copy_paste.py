"""Copy-paste for cells (``pretrain/finetune.copy_paste``): a window takes the cells of another image's window
of the same type where they land on its background, with their halo, and nothing else changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from cellpipe import models
from cellpipe.config import Params, Train
from cellpipe.errors import CellpipeError
from cellpipe.models.rcnn import PASTE_HALO, CocoInstances, normalise_image
from tests.conftest import tiny_model
from tests.helpers import same_draws, train_one_step

H, W = 30, 60


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _coco(tmp_path, images: list[tuple[np.ndarray, list[np.ndarray], int]]) -> dict:
    """A COCO dict of H×W images, each (pixels, cell masks, category id of its cells)."""
    data: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "shsy5y"}, {"id": 2, "name": "astro"}]}
    for i, (grey, cells, category) in enumerate(images, 1):
        Image.fromarray(grey).save(tmp_path / f"{i}.png")
        data["images"].append({"id": i, "file_name": f"{i}.png", "height": H, "width": W, "path": str(tmp_path / f"{i}.png")})
        for cell in cells:
            rle = mask_util.encode(np.asfortranarray(cell))
            rle["counts"] = rle["counts"].decode()
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": i, "category_id": category,
                                        "segmentation": rle, "area": int(cell.sum()), "iscrowd": 0,
                                        "bbox": [int(v) for v in mask_util.toBbox(rle)]})  # fmt: skip
    return data


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W), dtype=np.uint8)


@pytest.fixture
def scene(tmp_path):
    """Image 1 (a cell on the left), image 2 of the same type (a cell on top of image 1's and one on the right,
    on image 1's background), image 3 of another type (a cell in the middle, on image 1's background)."""
    left, over, right, middle = _box(10, 20, 5, 15), _box(12, 22, 8, 18), _box(8, 18, 42, 54), _box(10, 20, 26, 34)
    data = _coco(tmp_path, [(_pixels(1), [left], 1), (_pixels(2), [over, right], 1), (_pixels(3), [middle], 2)])
    return data, left, right


def test_cells_are_pasted_on_the_background_only_and_from_the_same_type(scene):
    data, left, right = scene
    ds = CocoInstances(data, H, W, copy_paste=1.0)
    own = normalise_image(_pixels(1))[:1]
    other = normalise_image(_pixels(2))[:1]
    halo = torch.zeros(H, W, dtype=torch.bool)
    halo[8 - PASTE_HALO : 18 + PASTE_HALO, 42 - PASTE_HALO : 54 + PASTE_HALO] = True
    pasted = 0
    torch.manual_seed(0)
    for _ in range(30):
        image, target = ds[0]
        masks = target["masks"]
        assert torch.equal(masks[0], torch.from_numpy(left))  # the window's own cell, untouched
        assert target["labels"].tolist() in ([1], [1, 1])  # never image 3's cell (astro)
        if len(masks) == 2:  # image 2 was drawn: its right cell fits, the one over the left cell does not
            pasted += 1
            assert torch.equal(masks[1], torch.from_numpy(right))
            assert target["boxes"].tolist() == [[5.0, 10.0, 15.0, 20.0], [42.0, 8.0, 54.0, 18.0]]
            assert torch.equal(image[0][halo], other[0][halo])  # the cell comes with its halo
            assert torch.equal(image[0][~halo], own[0][~halo])  # and nothing else of image 2
        else:  # image 1 drew itself: its one cell lands on itself, so nothing fits
            assert torch.equal(image[0], own[0])
    assert 5 <= pasted <= 25  # two images of the type: about half of the draws


def test_no_copy_paste_draws_nothing_from_the_random_stream(scene):
    """Without it a step draws what it drew before, so runs without it keep their windows and flips."""
    data, _, _ = scene
    plain = CocoInstances(data, H, W, hflip=True, vflip=True, crop_size=24)
    off = CocoInstances(data, H, W, hflip=True, vflip=True, crop_size=24, copy_paste=0.0)
    same_draws(plain, off, 3)


def test_an_image_whose_type_has_no_other_image_pastes_from_another_window_of_itself(tmp_path):
    cells = [_box(2, 8, 2, 8), _box(20, 28, 45, 55)]
    data = _coco(tmp_path, [(_pixels(4), cells, 2)])
    plain = CocoInstances(data, H, W, crop_size=20)
    ds = CocoInstances(data, H, W, crop_size=20, copy_paste=1.0)
    grew = 0
    for seed in range(60):
        torch.manual_seed(seed)
        _, own = plain[0]
        torch.manual_seed(seed)  # the same window; the paste draws after it
        image, target = ds[0]
        n, k = len(target["labels"]), len(own["labels"])
        assert image.shape[-2:] == (20, 20) and target["masks"].shape == (n, 20, 20) and target["boxes"].shape == (n, 4)
        assert n >= k and torch.equal(target["masks"][:k], own["masks"])  # the window's own cells, untouched
        assert (target["masks"].sum(0) <= 1).all()  # pasted cells never overlap them
        grew += n > k
    assert 5 <= grew <= 55  # some windows got a cell of another window, not all (windows without room)


def test_copy_paste_types_fill_only_windows_of_the_named_types(tmp_path):
    """Image 3 (astro) is alone of its type and pastes from itself; with only astro named, the shsy5y windows
    (images 1 and 2) never change and draw from the random stream as without copy-paste."""
    cells = [_box(2, 8, 2, 8), _box(20, 28, 45, 55)]
    data = _coco(
        tmp_path, [(_pixels(1), [_box(10, 20, 5, 15)], 1), (_pixels(2), [_box(8, 18, 42, 54)], 1), (_pixels(4), cells, 2)]
    )
    plain = CocoInstances(data, H, W, crop_size=20)
    astro = CocoInstances(data, H, W, crop_size=20, copy_paste=1.0, copy_paste_types=("astro",))
    every = CocoInstances(data, H, W, crop_size=20, copy_paste=1.0)
    assert [astro.takes_paste(k) for k in range(3)] == [False, False, True]
    assert all(every.takes_paste(k) for k in range(3))
    grew = {0: 0, 1: 0, 2: 0}
    for seed in range(40):
        for k in range(3):
            torch.manual_seed(seed)
            image0, own = plain[k]
            after0 = torch.rand(())
            torch.manual_seed(seed)
            image, target = astro[k]
            if k < 2:  # untouched, and the stream after it is the same
                assert torch.equal(image, image0) and torch.equal(target["masks"], own["masks"])
                assert torch.equal(torch.rand(()), after0)
            grew[k] += len(target["labels"]) > len(own["labels"])
    assert grew[0] == grew[1] == 0 and grew[2] >= 5


def test_copy_paste_types_name_categories_of_the_data_and_need_copy_paste(scene):
    data, _, _ = scene
    with pytest.raises(CellpipeError, match="copy_paste_types names 'astra', which is no category"):
        CocoInstances(data, H, W, copy_paste=1.0, copy_paste_types=("astra",))
    assert Params.model_validate({"finetune": {"copy_paste": 1.0, "copy_paste_types": ["astro"]}})
    with pytest.raises(
        ValueError, match=r"finetune\.copy_paste_types picks the windows copy-paste fills, and finetune\.copy_paste is 0"
    ):
        Params.model_validate({"finetune": {"copy_paste_types": ["astro"]}})


def test_the_mask_rcnn_family_takes_the_switch_and_trains_on_pasted_windows(tiny_coco):
    cfg = tiny_model()
    family = models.family(cfg)
    ds = family.dataset(tiny_coco, cfg, Train(crop_size=64, copy_paste=1.0, transpose=True, scale_jitter=0.25))
    assert ds.copy_paste == 1.0
    assert family.dataset(tiny_coco, cfg, Train(crop_size=64)).copy_paste == 0.0
    named = family.dataset(tiny_coco, cfg, Train(crop_size=64, copy_paste=1.0, copy_paste_types=["astro"]))
    assert named.paste_ids == {c["id"] for c in tiny_coco["categories"] if c["name"] == "astro"}
    train_one_step(cfg, ds)


def test_the_flow_family_refuses_it():
    assert Params.model_validate({"finetune": {"copy_paste": 0.5}, "pretrain": {"copy_paste": 1.0}})
    with pytest.raises(ValueError, match=r"finetune\.copy_paste is for model\.arch maskrcnn"):
        Params.model_validate({"model": {"arch": "cellpose"}, "finetune": {"copy_paste": 0.5}})
    with pytest.raises(ValueError, match="less than or equal to 1"):
        Train(copy_paste=1.5)
