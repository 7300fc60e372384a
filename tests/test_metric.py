import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellpipe import metric


def masks(*boxes, shape=(10, 10)):
    out = np.zeros((len(boxes), *shape), bool)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        out[k, y0:y1, x0:x1] = True
    return out


def test_perfect_is_one():
    t = masks((0, 3, 0, 3), (5, 9, 5, 9))
    assert metric.score_image(t, t).score == 1.0


def test_one_false_positive_and_one_false_negative():
    t = masks((0, 3, 0, 3), (5, 9, 5, 9))
    p_fp = masks((0, 3, 0, 3), (5, 9, 5, 9), (0, 2, 6, 8))
    assert metric.score_image(t, p_fp).score == pytest.approx(2 / 3)
    p_fn = masks((0, 3, 0, 3))
    assert metric.score_image(t, p_fn).score == pytest.approx(1 / 2)


def test_iou_exactly_at_a_threshold_is_not_a_hit():
    # truth 4x5 = 20 px, prediction 4x3 inside it: IoU = 12/20 = 0.6 exactly
    t = masks((0, 4, 0, 5))
    p = masks((0, 4, 0, 3))
    s = metric.score_image(t, p)
    assert metric.score_iou(np.array([[0.6]])).tp.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert s.tp.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    # hits at 0.50 and 0.55 only; misses count as one FP and one FN
    assert s.score == pytest.approx((1 + 1 + 8 * 0) / 10)


def test_duplicate_cells_match_one_to_one():
    t = masks((0, 3, 0, 3), (0, 3, 0, 3))
    p = masks((0, 3, 0, 3), (0, 3, 0, 3), (0, 3, 0, 3))
    assert metric.score_image(t, p).score == pytest.approx(2 / 3)


def test_empty_cases():
    empty = np.zeros((0, 10, 10), bool)
    one = masks((0, 3, 0, 3))
    assert metric.score_image(empty, empty).score == 1.0
    assert metric.score_image(one, empty).score == 0.0
    assert metric.score_image(empty, one).score == 0.0


def test_label_image_input_and_overlapping_truths():
    t = masks((0, 4, 0, 4), (0, 4, 3, 7))  # truths overlap on one column
    lab = np.zeros((10, 10), int)
    lab[0:4, 0:4] = 7
    lab[0:4, 4:7] = 3
    s = metric.score_image(t, lab)
    iou = metric.iou_matrix(metric.as_instances(t), metric.as_instances(lab))
    # label 3 sorts first: (truth0, pred'7') = 16/16, (truth1, pred'3') = 12/16
    assert iou[0, 1] == pytest.approx(1.0) and iou[1, 0] == pytest.approx(12 / 16)
    assert s.tp.tolist() == [2, 2, 2, 2, 2, 1, 1, 1, 1, 1]


@given(
    st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(1, 5), st.integers(1, 5)), min_size=0, max_size=6),
    st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(1, 5), st.integers(1, 5)), min_size=0, max_size=6),
)
@settings(max_examples=200, deadline=None)
def test_matches_dense_reference(tb, pb):
    t = masks(*[(y, y + h, x, x + w) for y, x, h, w in tb])
    p = masks(*[(y, y + h, x, x + w) for y, x, h, w in pb])
    # dense reference: float matrix product, greedy-free counting at each threshold
    tf = t.reshape(len(t), 100).astype(float)
    pf = p.reshape(len(p), 100).astype(float)
    inter = tf @ pf.T
    union = tf.sum(1)[:, None] + pf.sum(1)[None] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0)
    scores = []
    for th in metric.THRESHOLDS:
        # one-to-one: greedy by descending IoU (pairs above 0.5 are unique unless cells duplicate)
        pairs = sorted(((iou[i, j], i, j) for i in range(len(t)) for j in range(len(p)) if iou[i, j] > th), reverse=True)
        used_t, used_p = set(), set()
        for _, i, j in pairs:
            if i not in used_t and j not in used_p:
                used_t.add(i)
                used_p.add(j)
        tp = len(used_t)
        fp, fn = len(p) - tp, len(t) - tp
        scores.append(1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn))
    assert metric.score_image(t, p).score == pytest.approx(np.mean(scores), abs=1e-12)


def test_report_per_class():
    t = masks((0, 3, 0, 3))
    rep = metric.evaluate(
        [
            ("a", "cort", metric.as_instances(t), metric.as_instances(t)),
            ("b", "astro", metric.as_instances(t), metric.as_instances(t[:0])),
        ]
    )
    assert rep.score == 0.5
    assert rep.per_class() == {"astro": 0.0, "cort": 1.0}
    d = rep.to_dict()
    assert d["counts"]["fn@0.5"] == 1 and d["per_threshold"]["0.50"] == 0.5


def test_heavily_overlapping_cells_match_greedily_by_iou():
    """T1–P1 0.9 is matched first; T2 and P2 then have nothing left above 0.5 (a maximum matching would pair them)."""
    iou = np.array([[0.9, 0.6], [0.6, 0.0]])
    s = metric.score_iou(iou, np.array([0.5]))
    assert (s.tp[0], s.fp[0], s.fn[0]) == (1, 1, 1)
    s = metric.score_iou(iou, np.array([0.65]))  # only one pair above: no conflict
    assert (s.tp[0], s.fp[0], s.fn[0]) == (1, 1, 1)
