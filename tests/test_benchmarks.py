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


def test_families_benchmark_runs_on_the_current_api(tiny_kaggle, tmp_path):
    """The family benchmark builds each profile's model and trains it with the engine's step
    (a benchmark nothing runs goes stale when the library moves on)."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "families.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.families", "--kaggle-dir", str(tiny_kaggle), "--steps", "1", "--warmup", "0",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = json.loads(out.read_text())
    assert {"maskrcnn-torchvision", "cellpose"} <= set(run["train"])
    assert all(r["median_s_per_step"] > 0 for r in run["train"].values())
