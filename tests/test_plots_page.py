"""The offline plots page template, and applying a model outside any repository.

(The page as ``dvc plots show`` writes it after the tiny DAG, and its rendering in a
headless browser, are tested in ``test_dvc.py``.)
"""

from __future__ import annotations

import configparser
import hashlib
import json
import re

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from cellpipe import rle
from cellpipe.config import Predict
from tests.conftest import REPO, TINY_MODEL, cellpipe_checkpoint, params_text, run_cli

PAGE = REPO / "docs" / "plots" / "offline.html"


def test_dvc_uses_the_offline_template():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert (REPO / ".dvc" / config["plots"]["html_template"]).resolve() == PAGE.resolve()


def test_the_template_inlines_the_pinned_libraries_and_loads_nothing():
    html = PAGE.read_text()
    assert "{plot_divs}" in html and "{scripts}" not in html  # DVC's CDN <script> tags have nowhere to go
    assert not re.findall(r"<(?:script|link)\b[^>]*\b(?:src|href)\s*=", html, flags=re.I)
    inlined = re.findall(r"<script>/\* (\S+) (\S+) \*/\n(.*?)\n    </script>", html, flags=re.S)
    recorded = {line.split()[0]: line.split() for line in (PAGE.parent / "VERSIONS").read_text().splitlines()}
    assert {name for name, _, _ in inlined} == {"vega", "vega-lite", "vega-embed"} == set(recorded)
    for name, version, code in inlined:
        assert recorded[name][1] == version
        assert recorded[name][3] == "sha256:" + hashlib.sha256(code.encode()).hexdigest(), name
        assert (PAGE.parent / f"LICENSE.{name}").read_text().strip()


def test_builtin_predict_params_are_the_committed_ones():
    assert yaml.safe_load(params_text())["predict"] == Predict().model_dump()


def test_a_model_applies_outside_a_repository_without_params(tmp_path):
    """predict --skip-val, score, submit and check-submission in a folder with no params.yaml or metrics."""
    work = tmp_path / "elsewhere"
    (work / "test").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for name in ("a", "b"):
        grey = rng.normal(120, 10, (104, 140)).clip(0, 255).astype(np.uint8)
        Image.fromarray(grey).save(work / "test" / f"{name}.png")
        mask = np.zeros((104, 140), bool)
        mask[20:40, 30:60] = True
        rows.append(
            {
                "id": name,
                "annotation": rle.encode(mask),
                "width": 140,
                "height": 104,
                "cell_type": "cort",
                "plate_time": "",
                "sample_date": "",
                "sample_id": name,
                "elapsed_timedelta": "",
            }
        )
    pd.DataFrame(rows).to_csv(work / "truth.csv", index=False)
    (work / "sample_submission.csv").write_text("id,predicted\na,\nb,\n")
    cellpipe_checkpoint(tmp_path / "model.pt", TINY_MODEL, ["shsy5y", "astro", "cort"])
    proc = run_cli(
        "predict",
        "--skip-val",
        "--checkpoint",
        str(tmp_path / "model.pt"),
        "--test-dir",
        "test",
        "--test-out",
        "preds.parquet",
        "--submission-out",
        "direct.csv",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    err = " ".join(proc.stderr.split())
    assert f"no params.yaml here: built-in params {{'predict': {Predict().model_dump()}}}" in err
    assert "metrics/thresholds.json not found: score threshold 0.5 for every class" in err
    proc = run_cli(
        "score",
        "--predictions",
        "preds.parquet",
        "--truth",
        "truth.csv",
        "--all-truth-images",
        "--out",
        "s.json",
        "--per-image-out",
        "pi.csv",
        "--per-iou-out",
        "piou.csv",
        cwd=work,
    )
    assert proc.returncode == 0 and "score threshold 0.5" in proc.stderr, proc.stderr
    assert json.loads((work / "s.json").read_text())["images"] == 2
    proc = run_cli(
        "submit",
        "--predictions",
        "preds.parquet",
        "--sample-submission",
        "sample_submission.csv",
        "--out",
        "submission.csv",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("check-submission", "submission.csv", "--sample-submission", "sample_submission.csv", cwd=work)
    assert proc.returncode == 0 and "is valid" in proc.stderr, proc.stderr
    assert not (work / "params.yaml").exists()
