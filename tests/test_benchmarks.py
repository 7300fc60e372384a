"""Each benchmark case on tiny data: cellpipe's results equal the reference's."""

import numpy as np
import pandas as pd
import pytest

from benchmarks import cases
from cellpipe import synth


@pytest.fixture(scope="module")
def df(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    synth.write_kaggle(out, {"shsy5y": 1, "astro": 1, "cort": 1}, 0, 0.15, seed=4)
    d = pd.read_csv(out / "train.csv", dtype=str, keep_default_na=False)
    d["width"] = d["width"].astype(np.int64)
    d["height"] = d["height"].astype(np.int64)
    return d


def test_decode_cases_identical(df):
    assert cases.decode_coco(df).identical
    assert cases.plain_decode(df).identical


def test_encode_identical(df):
    assert cases.encode(cases.label_images(df)).identical


def test_metric_and_submission_identical(df):
    preds = cases.perturbed_predictions(df)
    assert cases.metric_case(df, preds, list(df["id"].unique())).identical
    assert cases.submission_case(preds).identical
