"""Each cell type with its own box-NMS IoU, minimum size and growth, chosen out of fold beside its threshold."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from cellpipe import postprocess, thresholds
from cellpipe.config import CELL_TYPES, PostProcess
from tests.helpers import score_on_truth, thresholds_on_truth


def rect_masks(rects, shape=(40, 60)) -> sp.csr_matrix:
    rows = []
    for y0, y1, x0, x1 in rects:
        m = np.zeros(shape, bool)
        m[y0:y1, x0:x1] = True
        rows.append(m.ravel())
    return sp.csr_matrix(np.array(rows, dtype=np.float32))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(1, 10), st.integers(0, 50), st.integers(1, 10)), min_size=1, max_size=8)
)
def test_mask_boxes_enclose_each_mask(rects):
    rects = [(y, y + h, x, x + w) for y, h, x, w in rects]
    boxes = postprocess.mask_boxes(rect_masks(rects), 60)
    assert boxes.tolist() == [[x0, y0, min(x1, 60), min(y1, 40)] for y0, y1, x0, x1 in rects]


def test_box_nms_drops_a_box_overlapping_a_better_one_above_the_iou():
    masks = rect_masks([(0, 10, 0, 10), (0, 10, 2, 12), (20, 30, 20, 30)])  # boxes 0 and 1: IoU 8·10 / 12·10 = 0.67
    scores = np.array([0.9, 0.8, 0.7])
    for iou, kept in ((0.5, 2), (0.7, 3), (1.0, 3)):
        final = postprocess.final(masks, scores, 0.0, PostProcess(box_nms_iou=iou, max_lost=1.0), width=60)
        assert final.shape[0] == kept, iou


def test_the_choice_is_made_per_class():
    """Planted: astro scores best with box NMS at 0.5, min size 10 and grown by 2 px, cort with none of them."""
    rows = []
    for cls, best in (("astro", (0.5, 10, 2)), ("cort", (1.0, 0, 0))):
        for u, m, g, t in itertools.product((0.5, 1.0), (0, 10), (0, 2), (0.3, 0.6)):
            score = 0.8 if (u, m, g) == best and t == 0.6 else 0.4
            rows.append({"image_id": f"{cls}1", "cell_type": cls, "threshold": t, "box_nms_iou": u, "min_size": m,
                         "grow": g, "score": score, "tp": 0, "fp": 0, "fn": 0})  # fmt: skip
    choice = thresholds.choose(thresholds.aggregate(pd.DataFrame(rows)), list(CELL_TYPES), 0.5, PostProcess())
    assert choice.threshold("astro") == 0.6 and choice.post_for("astro").box_nms_iou == 0.5
    assert choice.post_for("astro").min_size == 10 and choice.post_for("astro").grow == 2
    assert choice.post_for("cort").box_nms_iou == 1.0 and choice.post_for("cort").grow == 0
    assert choice.threshold("shsy5y") == 0.5 and choice.post_for("shsy5y") == PostProcess()  # no images: defaults


def test_thresholds_choose_a_class_nms_and_score_applies_it(tmp_path, tiny_kaggle):
    """Through the CLI: predictions holding each true cell twice (a shifted copy, boxes at IoU ≈ 0.7, masks
    apart by overlap removal) score best with box NMS at 0.5, which the stage chooses and score applies."""

    def twice(truth: sp.csr_matrix, h: int, w: int) -> tuple[sp.csr_matrix, np.ndarray]:
        shifted = []
        for k in range(truth.shape[0]):
            y, x = np.divmod(truth[k].indices, w)
            dx = max(1, (x.max() - x.min() + 1) // 6)
            keep = x + dx < w
            cols = y[keep] * w + x[keep] + dx
            shifted.append(sp.csr_matrix((np.ones(len(cols), np.float32), (np.zeros(len(cols), int), cols)), shape=(1, h * w)))
        n = truth.shape[0]
        return sp.vstack([truth, *shifted]).tocsr(), np.r_[np.full(n, 0.9), np.full(n, 0.8)]

    chosen = thresholds_on_truth(tmp_path, tiny_kaggle, twice, "{grid: [0.5], box_nms_ious: [0.5, 1.0]}")
    assert {v["box_nms_iou"] for v in chosen["postprocess_per_class"].values()} == {0.5}
    assert score_on_truth(tmp_path, tiny_kaggle, chosen) > 0.9  # the copies are gone: the truth is left
