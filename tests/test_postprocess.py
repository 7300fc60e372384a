"""Post-processing: fragments, class-agnostic mask NMS, the class vote, flip-TTA merging."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellpipe import prediction_table, rle
from cellpipe.config import PostProcess
from cellpipe.ensemble import merge as merge_passes
from cellpipe.instances import Instances
from cellpipe.postprocess import final, image_class, mask_nms
from tests.conftest import score_cli

SHAPE = (20, 20)


def box(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[y0:y1, x0:x1] = True
    return m.ravel()


def csr(*rows) -> sp.csr_matrix:
    return sp.csr_matrix(np.stack(rows).astype(np.float32))


def test_fragments_that_lost_most_of_their_pixels_are_dropped():
    a, b = box(0, 10, 0, 10), box(0, 10, 3, 13)  # b loses 70 of its 100 pixels to a
    masks, scores = csr(a, b), np.array([0.9, 0.8])
    assert final(masks, scores, 0.5, PostProcess()).shape[0] == 2
    assert final(masks, scores, 0.5, PostProcess(max_lost=0.5)).shape[0] == 1
    assert final(masks, scores, 0.5, PostProcess(max_lost=0.8)).shape[0] == 2
    assert final(masks, scores, 0.5, PostProcess(min_size=31)).shape[0] == 1
    assert final(masks, scores, 0.85, PostProcess()).shape[0] == 1


def test_class_agnostic_mask_nms_keeps_one_of_a_duplicated_cell():
    a, a2, c = box(0, 10, 0, 10), box(0, 10, 1, 11), box(12, 18, 12, 18)
    masks, scores = csr(a, a2, c), np.array([0.7, 0.9, 0.8])
    assert mask_nms(masks, scores, 0.5).tolist() == [1, 2]  # a (IoU 0.82 with a2) goes
    assert mask_nms(masks, scores, 0.9).tolist() == [1, 2, 0]
    assert final(masks, scores, 0.0, PostProcess(mask_nms_iou=0.5)).shape[0] == 2


def test_the_class_vote_can_ignore_unconfident_detections():
    labels = np.array(["shsy5y"] * 30 + ["astro"] * 3)
    scores = np.array([0.1] * 30 + [0.9] * 3)
    assert image_class(labels, scores, "cort") == "shsy5y"
    assert image_class(labels, scores, "cort", min_score=0.5) == "astro"
    assert image_class(labels, scores, "cort", min_score=0.95) == "shsy5y"  # nobody confident: all vote
    assert image_class(np.array([]), np.array([]), "cort") == "cort"


def test_flip_passes_merge_matched_masks_and_average_scores_over_passes():
    a, a_shift, b = box(0, 10, 0, 10), box(0, 10, 1, 11), box(12, 18, 12, 18)
    p1 = Instances(csr(a, b), np.array([0.9, 0.6], np.float32), np.array([1, 1]), SHAPE)
    p2 = Instances(csr(a_shift), np.array([0.8], np.float32), np.array([1]), SHAPE)
    p3 = Instances(csr(a), np.array([0.7], np.float32), np.array([1]), SHAPE)
    merged = merge_passes([p1, p2, p3], 0.5)
    assert merged.scores.tolist() == pytest.approx([0.8, 0.2])  # (0.9 + 0.8 + 0.7) / 3; 0.6 / 3 (seen once)
    assert np.array_equal(merged.masks[0].toarray().ravel() > 0, a)  # 2 of 3 passes agree on a's pixels
    assert np.array_equal(merged.masks[1].toarray().ravel() > 0, b)


def test_score_applies_the_post_processing_of_the_thresholds_file(tmp_path, tiny_kaggle):
    """Perfect cells plus a low-score fragment of each: a false positive unless max_lost drops it."""
    df = pd.read_csv(tiny_kaggle / "train.csv", dtype=str, keep_default_na=False)
    image = df["id"].iloc[0]
    df = df[df["id"] == image]
    h, w = int(df["height"].iloc[0]), int(df["width"].iloc[0])
    truth = rle.to_csr(rle.parse_many(df["annotation"].tolist(), h * w), h * w)
    shifted = sp.csr_matrix((truth.data, (truth.indices + 1) % (h * w), truth.indptr), shape=truth.shape)
    masks = sp.vstack([truth, shifted]).tocsr()
    strings = rle.to_strings(rle.from_csr(masks))
    n = truth.shape[0]
    rows = pd.DataFrame(
        {
            "image_id": image,
            "label": df["cell_type"].iloc[0],
            "score": np.float32([0.9] * n + [0.6] * n),
            "height": h,
            "width": w,
            "rle": strings,
        }
    )
    prediction_table.write(prediction_table.Predictions(rows, {image: (h, w)}, "<test>"), tmp_path / "p.parquet")
    df.to_csv(tmp_path / "truth.csv", index=False)
    scores = {}
    for max_lost in (1.0, 0.5):
        proc = score_cli(
            tmp_path,
            str(tmp_path / "p.parquet"),
            str(tmp_path / "truth.csv"),
            thresholds={"score_threshold": {}, "postprocess": {"max_lost": max_lost}},
        )
        assert proc.returncode == 0, proc.stderr
        scores[max_lost] = json.loads((tmp_path / "s.json").read_text())
    assert scores[0.5]["map_iou"] == 1.0 and scores[1.0]["map_iou"] < 1.0
    assert scores[0.5]["cell_type_vote_accuracy"] == 1.0
