"""The real-data path of the README through ``dvc repro``: the shared 6-image real fixture, two folds."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import SAMPLE, SHARED, requires_shared
from tests.helpers import dvc, ran_stages, repo_from_applied_workspace, shrink_params


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    return repo_from_applied_workspace(tmp_path)


@pytest.mark.slow
@requires_shared()
def test_real_sample_profile_runs_the_whole_dag_with_two_folds(repo_copy):
    """The README's real-data path on the shared real samples (6 Kaggle + 5 LIVECell images), K = 2:
    the matrix stages run once per fold, a second repro is a no-op, a fine-tune change reruns every fold.

    With the `real` profile's family, Mask R-CNN (tiny): even after 4 iterations it predicts cells, so
    thresholds, score, submit and visualize run on real detections of real images. The flow family's
    stage commands are test_cellpose.py's (``test_the_flow_family_trains_and_predicts_through_the_stage_commands``)."""
    # the data sit in a folder whose name is shell syntax: it must stay one argument, never run
    weird = repo_copy.parent / "my data's; touch PWNED"
    shutil.copytree(SAMPLE, weird / "kaggle")
    shutil.copytree(SHARED / "livecell", weird / "live cell")
    shrink_params(
        repo_copy / "params.yaml",
        {
            "data": {
                "kaggle": {"kaggle-dir": str(weird / "kaggle")},
                "livecell": {
                    "livecell-json": str(weird / "live cell" / "livecell_coco_val_subset5img.json"),
                    "livecell-images": str(weird / "live cell" / "images"),
                },
            },
            "decode": {"duplicates": "drop"},
            "cv": {"folds": [0, 1]},
            "pretrain": {"iters": 4, "eval_every": 4, "crop_size": 128},
            "finetune": {"iters": 4, "eval_every": 4, "crop_size": 128},
        },
    )
    subprocess.run(
        ["git", "commit", "-qam", "real data"],
        cwd=repo_copy,
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    )
    first = ran_stages(dvc(repo_copy, "repro").stdout)
    assert {"pretrain", "finetune@0", "finetune@1", "predict@0", "predict@1", "ensemble", "thresholds", "score"} <= set(first)
    assert {"submit", "visualize"} <= set(first)
    assert ran_stages(dvc(repo_copy, "repro").stdout) == []
    assert not list(repo_copy.rglob("PWNED")) and not list(repo_copy.parent.glob("PWNED"))
    decode_cmd = yaml.safe_load((repo_copy / "dvc.lock").read_text())["stages"]["decode"]["cmd"]
    assert str(weird / "kaggle") in shlex.split(decode_cmd)  # one argument, as recorded
    test_ids = {p.stem for p in (SAMPLE / "test").glob("*.png")}
    sub = (repo_copy / "data/submission/submission.csv").read_text().splitlines()
    assert sub[0] == "id,predicted" and {line.split(",")[0] for line in sub[1:]} == test_ids
    overlays = {p.name for p in (repo_copy / "plots/overlays").iterdir()}
    assert {f"test_{i}.png" for i in test_ids} <= overlays
    assert len([o for o in overlays if o.startswith("val_")]) >= 1
    folds = json.loads((repo_copy / "data/coco/folds.json").read_text())["images"]
    metrics = json.loads((repo_copy / "metrics/oof.json").read_text())
    assert metrics["images"] == len(folds) == 3 and set(metrics["per_fold"]) == {"0", "1"}
    assert not metrics["thresholds_in_sample"] and metrics["thresholds"].startswith("cross-fitted")
    assert 0.0 <= metrics["map_iou"] <= 1.0 and "cell_type_vote_accuracy" in metrics
    for k in (0, 1):  # each fold's own model
        ckpt = torch.load(repo_copy / f"models/finetune/fold{k}/best.pt", weights_only=True)
        assert ckpt["model_config"]["arch"] == "maskrcnn"
    predicted = {name: pd.read_parquet(repo_copy / f"data/predictions/{name}.parquet") for name in ("oof", "lockbox", "test")}
    assert all(len(p) for p in predicted.values()), {name: len(p) for name, p in predicted.items()}
    assert set(predicted["test"]["image_id"]) <= test_ids and any(line.split(",")[1] for line in sub[1:])
    assert json.loads((repo_copy / "metrics/oof_in_sample.json").read_text())["thresholds_in_sample"]
    assert json.loads((repo_copy / "metrics/lockbox.json").read_text())["images"] == 3
    # a fine-tune knob makes every fold stale and nothing upstream (a dry run lists the stages
    # whose own inputs changed; that what follows reruns, and that `dvc exp run` runs what
    # `dvc repro` would, is test_an_experiment_reruns_only_what_it_affects's)
    shrink_params(repo_copy / "params.yaml", {"finetune": {"lr": 0.01}})
    assert set(ran_stages(dvc(repo_copy, "repro", "--dry").stdout)) == {"finetune@0", "finetune@1"}
