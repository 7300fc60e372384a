"""Each cell type at its own input scale (``model.class_scales``, Mask R-CNN): training data, two-pass
inference, checkpoints, the anchors report, and the params refusing what cannot work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from cellpipe import models
from cellpipe.config import Model, Params
from cellpipe.models.rcnn import CocoInstances, input_scale, predict_at_class_scale
from tests.conftest import CLASSES, cellpipe_checkpoint, tiny_model
from tests.helpers import ring_coco


def test_training_images_of_a_rescaled_type_come_at_its_scale(tmp_path):
    data, ring, _ = ring_coco(tmp_path)  # one image whose one cell is astro
    base = CocoInstances(data, 40, 50).load(0)
    half = CocoInstances(data, 40, 50, class_scales={"astro": 0.5}).load(0)
    other = CocoInstances(data, 40, 50, class_scales={"cort": 0.5}).load(0)
    assert base.size == other.size == (40, 50)
    assert half.size == (20, 25)
    assert 0.2 * ring < half.masks[0].sum() < 0.3 * ring  # the cell shrank with its image


def test_the_input_scale_holds_inside_and_comes_back_after_an_error():
    model = models.build(tiny_model(), 3)
    t = model.transform
    before = (t.min_size, t.max_size)
    with input_scale(model, 0.5):
        assert (t.min_size, t.max_size) == ((65,), 88)
    with pytest.raises(RuntimeError), input_scale(model, 2.0):
        assert (t.min_size, t.max_size) == ((260,), 352)
        raise RuntimeError("boom")
    assert (t.min_size, t.max_size) == before


def _seen_sizes(model) -> list[tuple[int, int]]:
    """Record the size of every input the backbone sees."""
    seen: list[tuple[int, int]] = []
    model.backbone.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    return seen


def test_an_image_of_a_rescaled_type_is_predicted_again_at_its_scale():
    torch.manual_seed(0)
    model = models.build(tiny_model(box_score_thresh=0.0), 3).eval()
    seen = _seen_sizes(model)
    grey = np.random.default_rng(0).integers(0, 255, (104, 140), dtype=np.uint8)
    one = predict_at_class_scale(model, grey, device="cpu", mask_threshold=0.5, scales={}, vote_min_score=0.0)
    assert len(one.labels) and len(seen) == 1
    every = dict.fromkeys(range(1, 4), 0.5)  # whatever type the untrained model votes, it has scale ×0.5
    two = predict_at_class_scale(model, grey, device="cpu", mask_threshold=0.5, scales=every, vote_min_score=0.0)
    assert len(seen) == 3 and seen[2][0] < seen[1][0]  # a second pass, on a smaller input
    assert two.shape == grey.shape == one.shape  # ... mapped back to the image
    assert model.transform.min_size == (130,)


def test_checkpoints_carry_the_scales_to_prediction_and_old_ones_still_load(tmp_path):
    cfg = tiny_model(class_scales={"astro": 0.667})
    cellpipe_checkpoint(tmp_path / "m.pt", cfg, CLASSES)
    fam, model, back, _ = models.from_checkpoint(tmp_path / "m.pt")
    assert model.class_scales == {2: pytest.approx(0.667)} and back.class_scales == {"astro": 0.667}
    cellpipe_checkpoint(tmp_path / "old.pt", tiny_model(), CLASSES)
    _, plain, _, _ = models.from_checkpoint(tmp_path / "old.pt")
    assert plain.class_scales == {}
    assert fam.input_pixels(model, cfg, 520, 704) == fam.input_pixels(plain, tiny_model(), 520, 704)
    bigger = tiny_model(class_scales={"astro": 2.0})
    assert fam.input_pixels(model, bigger, 520, 704) == 4 * fam.input_pixels(plain, tiny_model(), 520, 704)


def test_the_anchors_report_sees_each_type_at_its_scale(tiny_coco):
    from stages.anchors import model_scale_boxes

    base, labels = model_scale_boxes(tiny_coco, tiny_model())
    scaled, _ = model_scale_boxes(tiny_coco, tiny_model(class_scales={"astro": 0.5}))
    astro = labels == "astro"
    assert astro.any() and (~astro).any()
    np.testing.assert_allclose(scaled[~astro], base[~astro])
    np.testing.assert_allclose(scaled[astro], base[astro] * 0.5, atol=0.02 * base[astro].max())


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ({"class_scales": {"astro": 0.0}}, "greater than or equal to 0.1"),
        ({"class_scales": {"astro": 9}}, "less than or equal to 8"),
        ({"class_scales": {"astra": 2.0}}, "'shsy5y', 'astro' or 'cort'"),
        ({"class_scales": {"astro": 8}, "min_size": 2000, "max_size": 2000}, "over 8192"),
        ({"class_scales": {"astro": 0.667}, "arch": "cellpose"}, "model.cellpose.diameter"),
    ],
)
def test_scales_that_cannot_work_are_refused_by_name(model, words):
    with pytest.raises(ValidationError, match="class_scales") as err:
        Params(model=Model(**model))
    assert words in str(err.value)


def test_a_rescaled_type_is_drawn_at_x1_a_share_of_the_time_so_the_first_pass_knows_it(tmp_path):
    data, _, _ = ring_coco(tmp_path)
    mixed = CocoInstances(data, 40, 50, class_scales={"astro": 0.5}, base_share=0.5)
    torch.manual_seed(0)
    sizes = [tuple(mixed[0][0].shape[-2:]) for _ in range(40)]
    assert set(sizes) == {(20, 25), (40, 50)} and 8 < sizes.count((40, 50)) < 32
    only = CocoInstances(data, 40, 50, class_scales={"astro": 0.5})
    assert {tuple(only[0][0].shape[-2:]) for _ in range(10)} == {(20, 25)}
    assert len(mixed.cache.entries) == 2  # one decoded sample per scale, not per draw
