"""Mask geometry (targets → paste round trip) and anchor fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes
from torchvision.transforms.v2 import functional as TF

from cellpipe import anchors, models
from cellpipe.models import masks
from cellpipe.models.rcnn import _boxes, input_size
from tests.conftest import TINY_MODEL, decode_and_split, run_cli, tiny_model, write_params


def ellipses(n: int, seed: int = 0, shape=(160, 200)) -> torch.Tensor:
    """``n`` random ellipses of 100–2000 px, aspect 1–3, any orientation, as (n, H, W) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = []
    for _ in range(n):
        area, ratio, th = rng.uniform(100, 2000), rng.uniform(1, 3), rng.uniform(0, np.pi)
        a = np.sqrt(area * ratio / np.pi)
        b = area / (np.pi * a)
        cy, cx = rng.uniform(50, shape[0] - 50), rng.uniform(50, shape[1] - 50)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        out.append((u / a) ** 2 + (v / b) ** 2 <= 1)
    return torch.from_numpy(np.stack(out).astype(np.uint8))


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.bool(), b.bool()
    return (a & b).sum((1, 2)).float() / (a | b).sum((1, 2)).float()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 6), st.integers(1, 12), st.floats(0.05, 0.95), st.integers(0, 2**31 - 1))
def test_maskness_is_the_mean_probability_over_the_mask(n, size, threshold, seed):
    """``masks.maskness``: in (threshold, 1] for a mask with a pixel above the threshold, 0 without one,
    1 for a sure (binary) mask, and only the pixels above the threshold count."""
    probs = torch.from_numpy(np.random.default_rng(seed).random((n, 1, size, size), dtype=np.float32))
    got = masks.maskness(probs, threshold)
    assert got.shape == (n,)
    for k in range(n):
        above = probs[k][probs[k] > threshold]
        want = float(above.mean()) if above.numel() else 0.0
        assert float(got[k]) == pytest.approx(want, abs=1e-5)
        assert (threshold < float(got[k]) <= 1.0) if above.numel() else float(got[k]) == 0.0
    sure = (probs > threshold).float()
    assert torch.equal(masks.maskness(sure, threshold), (sure.flatten(1).sum(1) > 0).float())


@pytest.mark.parametrize("size, mean_iou, min_iou", [(28, 0.98, 0.95), (56, 0.995, 0.985)])
def test_perfect_masks_survive_targets_and_paste(size, mean_iou, min_iou):
    """Perfect boxes and perfect predictions give back the true masks (cells of 100–2000 px)."""
    gt = ellipses(200)
    boxes, idx = _boxes(gt), torch.arange(len(gt))
    targets = masks.mask_targets(gt.float(), boxes, idx, size)
    assert set(targets.unique().tolist()) <= {0.0, 1.0}
    back = masks.paste_masks(targets[:, None], boxes, gt.shape[-2:])[:, 0] >= 0.5
    got = iou(back, gt)
    assert got.mean() >= mean_iou and got.min() >= min_iou, (got.mean(), got.min())


def test_torchvision_stock_geometry_loses_about_a_twentieth():
    """The defect being fixed: stock targets + paste give masks a few percent too large."""
    gt = ellipses(200)
    boxes, idx = _boxes(gt), torch.arange(len(gt))
    soft = project_masks_on_boxes(gt, boxes, idx, 28)
    back = paste_masks_in_image(soft[:, None], boxes, gt.shape[-2:], padding=1)[:, 0] > 0.5
    assert iou(back, gt).mean() < 0.95
    assert (back.sum((1, 2)).float() / gt.sum((1, 2)).float()).mean() > 1.03


def sample_batch():
    gt = ellipses(6, seed=1, shape=(128, 160))
    image = torch.randn(3, 128, 160)
    return [image], [{"boxes": _boxes(gt), "labels": torch.ones(6, dtype=torch.int64), "masks": gt}]


def test_exact_model_uses_the_exact_loss_only_inside_its_forward(monkeypatch):
    calls = []
    monkeypatch.setattr(
        masks,
        "mask_loss",
        lambda *a: calls.append(1) or masks.F.binary_cross_entropy_with_logits(a[0].sum() * 0, torch.zeros(())),
    )
    original = tv_roi_heads.maskrcnn_loss
    torch.manual_seed(0)
    model = models.build(TINY_MODEL, 1).train()
    images, targets = sample_batch()
    losses = model(images, targets)
    assert calls and "loss_mask" in losses
    assert tv_roi_heads.maskrcnn_loss is original  # put back


def test_torchvision_geometry_keeps_the_stock_heads():
    model = models.build(tiny_model(mask_geometry="torchvision"), 1)
    assert not model.roi_heads.exact_masks  # torchvision's own mask loss: nothing swapped in its forward
    exact = models.build(TINY_MODEL, 1)
    assert exact.roi_heads.exact_masks and isinstance(exact.transform, masks.ExactTransform)
    logits = exact.roi_heads.mask_predictor.mask_fcn_logits
    assert float(logits.weight.detach().std()) < 0.01 and float(logits.bias.detach().abs().max()) == 0.0


def test_mask_resolution_56_predicts_56_pixel_masks():
    model = models.build(tiny_model(mask_resolution=56, box_score_thresh=0.0), 1)
    model.eval()
    feats = {"0": torch.randn(1, 16, 32, 40)}
    pooled = model.roi_heads.mask_roi_pool(feats, [torch.tensor([[0.0, 0.0, 30.0, 30.0]])], [(128, 160)])
    assert model.roi_heads.mask_predictor(model.roi_heads.mask_head(pooled)).shape[-1] == 56


def test_grown_boxes_round_trip_perfect_masks_and_reach_past_a_short_box():
    """``model.mask_box_scale``: targets and paste over the same grown boxes give the masks back (a little
    coarser: 28 cells over 1.5× the box), and a box drawn short of its cell (astro: the body without its
    processes) loses the rest of the cell at ×1 but not at ×1.5."""
    gt = ellipses(200)
    boxes, idx = _boxes(gt), torch.arange(len(gt))

    def round_trip(b: torch.Tensor, factor: float) -> torch.Tensor:
        grown = masks.scale_boxes(b, factor)
        targets = masks.mask_targets(gt.float(), grown, idx, 28)
        return iou(masks.paste_masks(targets[:, None], grown, gt.shape[-2:])[:, 0] >= 0.5, gt)

    assert round_trip(boxes, 1.5).mean() >= 0.95  # 0.956 (0.983 at ×1)
    short = masks.scale_boxes(boxes, 0.7)
    assert round_trip(short, 1.0).mean() < 0.7  # 0.65
    assert round_trip(short, 1.5).mean() > 0.9
    assert torch.equal(masks.scale_boxes(boxes, 1.0), boxes)


def test_mask_box_scale_grows_the_mask_rois_in_training_and_in_the_paste(monkeypatch):
    seen = []
    original = masks.mask_targets
    monkeypatch.setattr(masks, "mask_targets", lambda m, b, i, size: seen.append(b.clone()) or original(m, b, i, size))
    torch.manual_seed(0)
    grown = models.build(tiny_model(mask_box_scale=1.5, box_score_thresh=0.0), 1)
    plain = models.build(TINY_MODEL, 1)
    assert grown.state_dict().keys() == plain.state_dict().keys()  # no state of its own: checkpoints unchanged
    pooled = []
    monkeypatch.setattr(grown.roi_heads.mask_roi_pool.pool, "forward", lambda x, b, s: pooled.append(b) or
                        original_pool(x, b, s))  # fmt: skip
    original_pool = type(grown.roi_heads.mask_roi_pool.pool).forward.__get__(grown.roi_heads.mask_roi_pool.pool)
    images, targets = sample_batch()
    losses = grown.train()(images, targets)
    assert torch.isfinite(losses["loss_mask"]) and seen and pooled
    # the mask head pooled and learned over the same grown boxes
    assert torch.allclose(pooled[0][0], seen[0])
    out = grown.eval()(images)[0]
    assert len(out["boxes"]) and torch.allclose(out["mask_rois"], masks.scale_boxes(out["boxes"], 1.5))
    widths = out["mask_rois"][:, 2] - out["mask_rois"][:, 0]
    assert torch.allclose(widths, 1.5 * (out["boxes"][:, 2] - out["boxes"][:, 0]), rtol=1e-4)
    assert "mask_rois" not in plain.eval()(images)[0]


@pytest.mark.parametrize("other", [dict(mask_geometry="torchvision"), dict(backend="detectron2"), dict(arch="cellpose")])
@pytest.mark.parametrize("knob", [dict(mask_box_scale=1.5), dict(mask_dice_weight=1.0)])
def test_mask_loss_knobs_are_refused_where_they_are_not_built(other, knob):
    with pytest.raises(ValueError, match=f"{next(iter(knob))} is built for"):
        tiny_model(**knob, **other)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(2, 10), st.floats(0.0, 0.5), st.integers(0, 2**31 - 1))
def test_dice_loss_is_one_minus_the_soft_overlap_of_each_roi(n, size, empty_share, seed):
    """``masks.dice_loss``: the mean over RoIs of 1 − (2Σpt + 1)/(Σp + Σt + 1); ≈ 0 for sure, right masks
    (empty ones included), ≈ 1 for sure masks that miss a large target, and in [0, 1] always."""
    rng = np.random.default_rng(seed)
    targets = torch.from_numpy((rng.random((n, size, size)) > empty_share).astype(np.float32))
    logits = torch.from_numpy(rng.normal(0, 3, (n, size, size)).astype(np.float32))
    p, t = logits.sigmoid().flatten(1).double(), targets.flatten(1).double()
    want = (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()
    assert float(masks.dice_loss(logits, targets)) == pytest.approx(float(want), abs=1e-5)
    assert 0.0 <= float(masks.dice_loss(logits, targets)) <= 1.0
    sure_right = (targets * 2 - 1) * 50
    assert float(masks.dice_loss(sure_right, targets)) < 1e-4
    assert float(masks.dice_loss(torch.full_like(targets, -50.0), torch.zeros_like(targets))) < 1e-6
    full = torch.ones(n, size, size)
    assert float(masks.dice_loss(-full * 50, full)) > 1 - 1 / (size * size)


def test_the_dice_weight_adds_its_term_to_the_mask_loss_in_training(monkeypatch):
    """``model.mask_dice_weight``: the mask loss the model trains on is BCE + weight × Dice of the same logits and
    targets; no state of its own (checkpoints unchanged), and the model at 0 keeps BCE alone."""
    seen = []
    original = masks.dice_loss
    monkeypatch.setattr(masks, "dice_loss", lambda lg, t: seen.append((lg.detach(), t)) or original(lg, t))
    images, targets = sample_batch()
    plain = models.build(TINY_MODEL, 1).state_dict().keys()
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        model = models.build(tiny_model(mask_dice_weight=weight), 1).train()
        assert model.state_dict().keys() == plain
        losses = model(images, targets)
        assert torch.isfinite(losses["loss_mask"])
        if weight == 0.0:
            assert not seen
        else:
            ((logits, t),) = seen
            want = torch.nn.functional.binary_cross_entropy_with_logits(logits, t) + weight * original(logits, t)
            assert 0 < float(original(logits, t)) <= 1
            assert float(losses["loss_mask"].detach()) == pytest.approx(float(want), rel=1e-5)
    assert tv_roi_heads.maskrcnn_loss.__name__ == "maskrcnn_loss"  # torchvision's, put back after the forward


def test_inference_resizes_like_the_training_data():
    """A downscaled test image is antialiased exactly as cellpipe.data resizes training images."""
    model = models.build(tiny_model(min_size=64, max_size=80), 1).eval()
    image = torch.rand(3, 130, 170)
    resized, _ = model.transform.resize(image)
    size = input_size(130, 170, 64, 80)
    assert resized.shape[-2:] == size
    assert torch.allclose(resized, TF.resize(image, list(size), antialias=True), atol=1e-5)


# ---------------------------------------------------------------- anchors


def test_base_anchors_are_torchvision_s():
    gen = AnchorGenerator(((16, 24),), ((0.5, 1.0, 2.0),))
    ref = gen.generate_anchors((16, 24), (0.5, 1.0, 2.0)).numpy()
    assert np.array_equal(anchors.base_anchors((16, 24), (0.5, 1.0, 2.0)), ref)


def test_a_box_equal_to_an_anchor_has_iou_one_and_an_off_grid_one_less():
    on_grid = np.array([[32 - 8, 32 - 8, 32 + 8, 32 + 8]], dtype=float)  # centre (32, 32), 16×16
    off_grid = on_grid + 2.0
    sizes = [[16], [32], [64], [128], [256]]
    assert anchors.best_iou(on_grid, sizes, [1.0])[0] == pytest.approx(1.0)
    assert anchors.best_iou(off_grid, sizes, [1.0])[0] < 1.0


def test_suggested_anchors_cover_more_cells():
    rng = np.random.default_rng(0)
    side = np.exp(rng.normal(np.log(18), 0.4, 2000))  # cells like shsy5y/cort: median 18 px
    cx, cy = rng.uniform(50, 650, 2000), rng.uniform(50, 470, 2000)
    aspect = np.exp(rng.normal(0, 0.3, 2000))
    w, h = side * aspect, side / aspect
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    default = [[8], [16], [32], [64], [128]]
    suggested = anchors.suggest(boxes, (0.5, 1.0, 2.0), per_level=2)
    before = anchors.report(boxes, default, (0.5, 1.0, 2.0))["share_iou_0.7"]
    after = anchors.report(boxes, suggested, (0.5, 1.0, 2.0))["share_iou_0.7"]
    assert after > before + 0.2, (before, after, suggested)
    flat = [s for level in suggested for s in level]
    assert flat == sorted(flat) and all(len(level) == 2 for level in suggested)


def test_anchors_stage_reports_current_and_suggested(tmp_path, tiny_kaggle):
    p = write_params(tmp_path / "p.yaml")
    decode_and_split(tiny_kaggle, tmp_path, p)
    run_cli(
        "anchors",
        "--train",
        str(tmp_path / "train.json"),
        "--out",
        str(tmp_path / "anchors.json"),
        "--params",
        str(p),
        check=True,
    )
    report = json.loads((tmp_path / "anchors.json").read_text())
    n = len(json.loads((tmp_path / "train.json").read_text())["annotations"])
    assert report["current"]["boxes"] == report["suggested"]["boxes"] == n
    assert report["suggested"]["share_iou_0.7"] >= report["current"]["share_iou_0.7"]
    assert set(report["per_class"]) <= {"shsy5y", "astro", "cort"}


@pytest.mark.parametrize("fraction, most", [(0.25, 2), (0.75, 6)])
def test_the_roi_positive_fraction_caps_the_cells_the_mask_head_learns_from(monkeypatch, fraction, most):
    """``model.roi_positive_fraction``: of ``roi_batch_per_image`` sampled RoIs at most this share are cells — the
    RoIs the mask head trains on (6 cells here, ground-truth boxes among the proposals: enough for either cap)."""
    counted = []
    original = masks.mask_targets
    monkeypatch.setattr(masks, "mask_targets", lambda m, b, i, size: counted.append(len(b)) or original(m, b, i, size))
    torch.manual_seed(0)
    model = models.build(tiny_model(roi_batch_per_image=8, roi_positive_fraction=fraction), 1).train()
    assert model.roi_heads.fg_bg_sampler.positive_fraction == fraction
    images, targets = sample_batch()
    model(images, targets)
    assert counted == [most]
