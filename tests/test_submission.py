import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellpipe import postprocess, rle, submission
from cellpipe.errors import CellpipeError


def inst(*boxes, shape=(6, 8)):
    m = np.zeros((len(boxes), *shape), bool)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        m[k, y0:y1, x0:x1] = True
    return sp.csr_matrix(m.reshape(len(boxes), shape[0] * shape[1]).astype(np.float32))


def test_higher_score_keeps_contested_pixels_and_small_leftovers_drop():
    a = inst((0, 4, 0, 4), (0, 4, 2, 6), (0, 4, 3, 5))
    clean, kept = postprocess.resolve_overlaps(a, np.array([0.5, 0.9, 0.1]), min_size=3)
    assert kept.tolist() == [1, 0]  # the 0.1 instance lies under the 0.9 one entirely
    dense = clean.toarray()
    assert dense.sum(axis=0).max() == 1
    assert dense[0].sum() == 16 and dense[1].sum() == 8


def test_build_orders_rows_and_keeps_empty_images(tmp_path):
    shape = (6, 8)
    preds = [("b", inst((0, 2, 0, 2), (1, 3, 1, 3)), np.array([0.9, 0.8])), ("a", inst(), np.zeros(0))]
    df = submission.build(preds, ["a", "b"])
    assert df["id"].tolist() == ["a", "b", "b"]
    assert df["predicted"].iloc[0] == ""
    path = tmp_path / "submission.csv"
    df.to_csv(path, index=False)
    assert submission.validate(path, ["a", "b"], {"a": shape, "b": shape}) == {"rows": 3, "images": 2, "cells": 2}
    for s in df["predicted"].iloc[1:]:
        assert rle.decode(s, shape).sum() > 0


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("a", "1 4"), ("a", "3 2")], "overlap"),
        ([("a", "1 4 2 1")], "unsorted or overlap"),
        ([("a", "1 x")], "not an integer"),
        ([("c", "1 4")], "not a test image"),
        ([("a", "1 2")], "image b has no row"),
    ],
)
def test_validator_catches_bad_submissions(tmp_path, rows, message):
    path = tmp_path / "s.csv"
    pd.DataFrame(rows + ([("b", "")] if "no row" not in message else []), columns=["id", "predicted"]).to_csv(path, index=False)
    with pytest.raises(CellpipeError, match=message):
        submission.validate(path, ["a", "b"], {"a": (6, 8), "b": (6, 8)})


def test_missing_predictions_for_a_test_image():
    with pytest.raises(CellpipeError, match="no predictions for test image z"):
        submission.build([], ["z"])


def test_validator_checks_runs_against_each_image_own_size(tmp_path):
    """Two images of other sizes: a run that fits the larger one is past the end of the smaller one."""
    path = tmp_path / "s.csv"
    pd.DataFrame([("big", "700 10"), ("small", "1 4")], columns=["id", "predicted"]).to_csv(path, index=False)
    sizes = {"big": (30, 40), "small": (10, 12)}
    assert submission.validate(path, ["big", "small"], sizes)["cells"] == 2
    pd.DataFrame([("big", "1 4"), ("small", "115 10")], columns=["id", "predicted"]).to_csv(path, index=False)
    with pytest.raises(CellpipeError, match="past the image"):
        submission.validate(path, ["big", "small"], sizes)
    with pytest.raises(CellpipeError, match="image small: its size is unknown"):
        submission.validate(path, ["big", "small"], {"big": (30, 40)})
