"""Bad COCO JSON, checkpoints and submissions through the real CLI: one line, exit 1, no output.

The data-file classes (train.csv, images, params) are covered through the CLI in
``test_stages_data.py``; these are the remaining classes of ``docs/reliability.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cellpipe import models
from tests.conftest import TINY_MODEL, cellpipe_checkpoint, run_cli, write_params
from tests.helpers import ann, finetune_on, livecell_folder, one_line_error, run_livecell

# ---------------------------------------------------------------- COCO JSON (LIVECell's and ours)


@pytest.mark.parametrize(
    "name, annotation, message",
    [
        ("polygon_2_points", ann(segmentation=[[1, 1, 2, 2]]), "annotation 5: polygon with fewer than 3 points"),
        ("out_of_bounds", ann(segmentation=[[1, 1, 80, 2, 3, 9]]), "annotation 5"),
        ("unknown_category", ann(category_id=9), "category_id 9"),
        ("unknown_image", ann(image_id=2), "image_id 2"),
        ("zero_area", ann(segmentation=[[1, 1, 1, 1, 1, 1]]), "zero area"),
    ],
)
def test_bad_coco_annotations_through_the_cli(tmp_path, name, annotation, message):
    folder = livecell_folder(tmp_path, [annotation])
    proc = run_livecell(folder, tmp_path)
    one_line_error(proc, "x.json", message)
    assert not (tmp_path / "out" / "lc.json").exists()


def test_coco_dict_annotations_are_accepted(tmp_path):
    folder = livecell_folder(tmp_path, {"5": ann()})
    proc = run_livecell(folder, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((tmp_path / "out" / "lc.json").read_text())["annotations"]) == 1


def test_coco_image_without_file_through_the_cli(tmp_path):
    folder = livecell_folder(tmp_path, [ann()], write_files=False)
    one_line_error(run_livecell(folder, tmp_path), "a.tif", "missing")
    assert not (tmp_path / "out" / "lc.json").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"images": []}', "'categories'"),
        ('{"images": [], "categories": []}', "annotations"),
    ],
)
def test_broken_coco_files_through_the_cli(tmp_path, text, message):
    folder = livecell_folder(tmp_path, [ann()])
    (folder / "x.json").write_text(text)
    one_line_error(run_livecell(folder, tmp_path), "x.json", message)


def test_our_coco_files_are_checked_by_the_training_stages(tmp_path):
    (tmp_path / "train.json").write_text('{"images": [], "annotations": [], "categories": []}')
    write_params(tmp_path / "p.yaml")
    proc = run_cli(
        "finetune",
        "--train",
        str(tmp_path / "train.json"),
        "--val",
        str(tmp_path / "train.json"),
        "--out",
        str(tmp_path / "ft"),
        "--params",
        str(tmp_path / "p.yaml"),
    )
    one_line_error(proc, "train.json")
    assert not (tmp_path / "ft").exists() or not any((tmp_path / "ft").glob("*.pt"))


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "checkpoint is missing"),
        ("truncated", "unreadable or truncated"),
        ("not_cellpipe", "not a cellpipe checkpoint"),
        ("other_architecture", "architecture"),
        ("other_class_count", "architecture"),
    ],
)
def test_bad_checkpoints_through_predict(tmp_path, damage, message):
    ckpt = tmp_path / "best.pt"
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((52, 70), 90, np.uint8)).save(images / "a.png")
    if damage == "truncated":
        cellpipe_checkpoint(ckpt, TINY_MODEL, ["shsy5y", "astro", "cort"])
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    elif damage == "not_cellpipe":
        torch.save({"weights": 1}, ckpt)
    elif damage in ("other_architecture", "other_class_count"):
        cellpipe_checkpoint(ckpt, TINY_MODEL, ["shsy5y", "astro", "cort"])
        state = torch.load(ckpt, weights_only=True)
        if damage == "other_architecture":
            state["model_config"]["fpn_channels"] = 32  # claims a wider FPN than its weights
        else:
            state["classes"] = ["cell"]  # claims one class, weights have three
        torch.save(state, ckpt)
    (tmp_path / "p.yaml").write_text("predict: {tta: false, tta_iou: 0.5, detections_per_img: 0}\n")
    proc = run_cli(
        "predict",
        "--checkpoint",
        str(ckpt),
        "--skip-val",
        "--test-dir",
        str(images),
        "--test-out",
        str(tmp_path / "out" / "t.parquet"),
        "--params",
        str(tmp_path / "p.yaml"),
    )
    one_line_error(proc, "best.pt", message)
    assert not (tmp_path / "out").exists()


def test_bad_init_checkpoint_through_finetune(tmp_path, tiny_kaggle):
    """``--init-checkpoint`` (``finetune.init: checkpoint``): a truncated file fails before any training, naming it."""
    (tmp_path / "init.pt").write_bytes(b"PK\x03\x04garbage")
    proc = finetune_on(tiny_kaggle, tmp_path, None, "--init-checkpoint", str(tmp_path / "init.pt"))
    one_line_error(proc, "init.pt", "unreadable or truncated")
    assert not list((tmp_path / "ft").glob("*.pt")) if (tmp_path / "ft").exists() else True


def test_diverging_training_stops_with_a_clear_error(tmp_path, tiny_kaggle):
    """An absurd learning rate: the loss becomes non-finite and training stops naming the cure."""

    def edit(p):
        p["finetune"].update(init="none", lr=1.0e12, iters=20)

    proc = finetune_on(tiny_kaggle, tmp_path, edit)
    one_line_error(proc, "loss became non-finite at iteration", "lower the lr")
    assert not (tmp_path / "ft" / "summary.json").exists()


def test_out_of_memory_names_the_knobs(monkeypatch, tmp_path):
    from cellpipe import coco, synth, tables
    from cellpipe.config import Train
    from cellpipe.errors import CellpipeError
    from cellpipe.models.rcnn import CocoInstances
    from cellpipe.training import engine

    synth.write_kaggle(tmp_path / "k", {"shsy5y": 1, "astro": 0, "cort": 1}, 0, 0.05, seed=2, images_per_sample=1)
    ann, images = tables.build_tables(tables.read_train_csv(tmp_path / "k/train.csv"), tmp_path / "k/train")
    data = coco.build(images, ann)
    model = models.build(TINY_MODEL, 3)

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(model, "forward", oom)
    ds = CocoInstances(data, TINY_MODEL.min_size, TINY_MODEL.max_size)
    with pytest.raises(CellpipeError, match="out of memory at iteration 1 .* lower batch_size or crop_size"):
        engine.train(
            models.family(TINY_MODEL),
            model,
            ds,
            engine.val_images(data),
            Train(iters=2),
            TINY_MODEL,
            tmp_path / "o",
            classes=["shsy5y", "astro", "cort"],
            init="none",
        )


# ---------------------------------------------------------------- submissions


def sample_submission(tmp_path: Path, ids=("a", "b"), size=(520, 704)) -> Path:
    """A Kaggle-layout sample submission with its test/ images (of ``size``)."""
    path = tmp_path / "sample_submission.csv"
    path.write_text("id,predicted\n" + "".join(f"{i},\n" for i in ids))
    (tmp_path / "test").mkdir(exist_ok=True)
    for i in ids:
        Image.new("L", (size[1], size[0])).save(tmp_path / "test" / f"{i}.png")
    return path


@pytest.mark.parametrize(
    "name, body, message",
    [
        ("overlap", "a,1 4\na,3 2\nb,\n", "overlap"),
        ("bad_rle", "a,1 x\nb,\n", "not an integer"),
        ("odd_rle", "a,1 4 9\nb,\n", "odd number"),
        ("past_image", "a,366080 5\nb,\n", "past the image"),
        ("unknown_id", "a,1 4\nb,\nc,1 4\n", "not a test image"),
        ("missing_image", "a,1 4\n", "image b has no row"),
        ("missing_column", "a\nb\n", "predicted"),
    ],
)
def test_bad_submissions_through_check_submission(tmp_path, name, body, message):
    sub = tmp_path / "submission.csv"
    sub.write_text("id,predicted\n" + body if name != "missing_column" else "id\n" + body)
    proc = run_cli("check-submission", str(sub), "--sample-submission", str(sample_submission(tmp_path)))
    one_line_error(proc, "submission.csv", message)


def test_good_submission_passes_check_submission(tmp_path):
    sub = tmp_path / "submission.csv"
    sub.write_text("id,predicted\na,1 4\na,10 2\nb,\n")
    proc = run_cli("check-submission", str(sub), "--sample-submission", str(sample_submission(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stderr + proc.stdout
