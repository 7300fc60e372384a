"""Model-quality levers on tiny data: holes filled in training masks, what the score reports say per type."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cellpipe.config import Model
from cellpipe.errors import CellpipeError
from cellpipe.models.cellpose_flow import FlowSamples, label_image
from cellpipe.models.rcnn import CocoInstances
from tests.conftest import TINY_MODEL, cellpipe_checkpoint, run_cli, score_cli
from tests.helpers import ring_coco


def test_training_masks_of_the_chosen_classes_get_their_holes_filled(tmp_path):
    data, ring, disc = ring_coco(tmp_path)
    plain = CocoInstances(data, 40, 50).load(0)
    filled = CocoInstances(data, 40, 50, fill_holes=("astro",)).load(0)
    other = CocoInstances(data, 40, 50, fill_holes=("cort",)).load(0)
    assert plain.masks[0].sum() == ring == other.masks[0].sum()
    assert filled.masks[0].sum() == disc > ring
    assert (label_image(data["annotations"], 40, 50, fill=True) > 0).sum() == disc
    assert (label_image(data["annotations"], 40, 50) > 0).sum() == ring
    unknown = r"fill_holes names 'astra', which is no category of the training data \(shsy5y, astro, cort\)"
    with pytest.raises(CellpipeError, match=unknown):
        CocoInstances(data, 40, 50, fill_holes=("astra",))  # a misspelt class is an error, not an unfilled run
    with pytest.raises(CellpipeError, match="fill_holes names 'astra'"):
        FlowSamples(data, Model(arch="cellpose"), crop_size=32, hflip=False, vflip=False, fill_holes=("astra",))


def test_the_score_says_which_type_each_image_was_given_and_each_class_at_iou_0_5_and_0_75(tmp_path, tiny_kaggle):
    cellpipe_checkpoint(tmp_path / "m.pt", TINY_MODEL, ["shsy5y", "astro", "cort"])
    (tmp_path / "p.yaml").write_text("predict: {}\n")
    run_cli("predict", "--checkpoint", str(tmp_path / "m.pt"), "--skip-val", "--test-dir", str(tiny_kaggle / "train"),
            "--test-out", str(tmp_path / "pred.parquet"), "--params", str(tmp_path / "p.yaml"), check=True)  # fmt: skip
    proc = score_cli(tmp_path, tmp_path / "pred.parquet", tiny_kaggle / "train.csv",
                     thresholds={"score_threshold": dict.fromkeys(["shsy5y", "astro", "cort"], 0.05)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    per_image = pd.read_csv(tmp_path / "pi.csv")
    assert set(per_image["voted_type"]) <= {"shsy5y", "astro", "cort"} and len(per_image) == 6
    summary = json.loads((tmp_path / "s.json").read_text())
    right = (per_image["voted_type"] == per_image["cell_type"]).groupby(per_image["cell_type"]).mean()
    assert summary["cell_type_vote_accuracy_per_type"] == {k: round(float(v), 6) for k, v in right.items()}
    assert set(summary["per_class_at_iou"]) == {"shsy5y", "astro", "cort"}
    assert set(summary["per_class_at_iou"]["astro"]) == {"0.50", "0.75", "0.90"}
