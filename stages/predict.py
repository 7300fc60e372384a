"""Stage ``predict``: a fold's best checkpoint → raw detections of its out-of-fold, lockbox and test images.

Under DVC one stage per fold (a ``matrix`` over ``cv.folds``): ``--fold K`` picks the
model (``MODELS_DIR/foldK/best.pt``), its out-of-fold images and where the three tables
go (``OUT_DIR/foldK/{val,lockbox,test}.parquet``); the fold reaches the command as an
option DVC quotes, and every path follows from it here.

Also the way to apply a model to any folder of images (``--checkpoint … --skip-val
--test-dir``), Kaggle layout or a plain folder of PNG/TIFF files of any size: images
larger than ``predict.tile_size`` are predicted in overlapping windows.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import typer

from cellpipe import coco, folds
from cellpipe.atomic import Outputs
from cellpipe.config import Predict
from cellpipe.console import log, progress
from cellpipe.errors import CellpipeError
from cellpipe.images import list_images
from cellpipe.params_file import PARAMS_HELP, load


def fold_images(path: Path, fold: int | None) -> dict:
    """The COCO dict of ``path``, or only its images of fold ``fold`` (out of fold for that model)."""
    data = coco.load_json(path)
    if fold is None:
        return data
    return folds.held_out(data, fold, where=str(path))


def score_kind(p: Predict) -> str:
    """What a table's scores are beyond the model's class score (a table's ``scores``): thresholds chosen on one
    kind are refused on another."""
    kinds = ["cell: 1 − P(background)"] if p.scores == "cell" else []
    kinds += [f"× maskness^{p.maskness:g}"] if p.maskness else []
    return " ".join(kinds)


def run(
    fold: int | None = typer.Option(
        None, help="fold K: model MODELS_DIR/foldK/best.pt on fold K's images of --val, tables into OUT_DIR/foldK/"
    ),
    models_dir: Path = typer.Option(Path("models/finetune"), help="with --fold: the folder of the fold models (foldK/best.pt)"),
    out_dir: Path = typer.Option(Path("data/predictions/folds"), help="with --fold: where foldK/{val,lockbox,test}.parquet go"),
    checkpoint: Path | None = typer.Option(None, help="trained checkpoint [default: MODELS_DIR/foldK/best.pt, K = --fold or 0]"),
    val: Path = typer.Option(
        Path("data/coco/folds.json"), help="COCO JSON whose images to predict (with --fold: that fold's images only)"
    ),
    lockbox: Path | None = typer.Option(None, help="COCO JSON of the lockbox images, predicted into the lockbox table"),
    kaggle_dir: Path = typer.Option(Path("data/raw/kaggle"), help="Kaggle-layout folder whose test/ images to predict"),
    test_dir: Path | None = typer.Option(
        None, help="folder of images to predict instead (any folder of PNG/TIFF) [default: KAGGLE_DIR/test]"
    ),
    val_out: Path | None = typer.Option(None, help="val (out-of-fold) detections [default: OUT_DIR/foldK/val.parquet]"),
    lockbox_out: Path | None = typer.Option(
        None, help="lockbox detections [default: OUT_DIR/foldK/lockbox.parquet; without --fold: data/predictions/lockbox.parquet]"
    ),
    test_out: Path | None = typer.Option(
        None, help="test detections [default: OUT_DIR/foldK/test.parquet; without --fold: data/predictions/test.parquet]"
    ),
    skip_val: bool = typer.Option(False, "--skip-val", help="predict only the image folder (apply a model to new images)"),
    submission_out: Path | None = typer.Option(None, help="also write a submission-format CSV of the folder's images"),
    thresholds_file: Path = typer.Option(
        Path("metrics/thresholds.json"), "--thresholds", help="per-class score thresholds for --submission-out (0.5 if missing)"
    ),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    from cellpipe import models, prediction_table  # import torch: only when predicting
    from cellpipe.inference import predict_images

    p = load(params, "predict", builtin=skip_val).predict
    k = 0 if fold is None else fold
    checkpoint = checkpoint or models_dir / f"fold{k}" / "best.pt"
    # with --fold, the fold's own folder; without, where a model applied by hand has always written
    fold_dir = out_dir / f"fold{k}"
    shared = fold_dir if fold is not None else out_dir.parent
    val_out = val_out or fold_dir / "val.parquet"
    lockbox_out = lockbox_out or shared / "lockbox.parquet"
    test_out = test_out or shared / "test.parquet"
    folder = test_dir or kaggle_dir / "test"
    test_paths = list_images(folder)
    if not test_paths:
        raise CellpipeError("no .png/.tif images in the folder", where=str(folder))
    val_paths = {} if skip_val else coco.image_paths(fold_images(val, fold), val)
    lockbox_paths = coco.image_paths(coco.load_json(lockbox), lockbox) if lockbox is not None and not skip_val else None
    device = models.default_device()
    family, model, mcfg, classes = models.from_checkpoint(checkpoint, device)
    tile = (p.tile_size[0], p.tile_size[1])
    work = family.input_pixels(model, mcfg, *tile)
    if work > p.max_image_pixels:
        raise CellpipeError(
            f"its model would work on {work:,} pixels for a {tile[0]}×{tile[1]} window (model.min_size/max_size "
            f"{mcfg.min_size}/{mcfg.max_size}), over predict.max_image_pixels {p.max_image_pixels:,}",
            where=str(checkpoint),
        )
    # predict-time overrides of the checkpoint's limits, so that trying another does not retrain the model
    limits, changes = family.limits(model), {}
    if p.detections_per_img:
        changes["detections_per_img"] = p.detections_per_img
        log(f"detections per image capped at {p.detections_per_img} (checkpoint: {mcfg.detections_per_img})")
    if p.box_nms_thresh:
        # a looser box NMS than the model's, so that the thresholds stage can choose a class's own below it
        if limits.nms_thresh is None:
            raise CellpipeError(f"predict.box_nms_thresh: {family.name} has no box NMS")
        changes["nms_thresh"] = p.box_nms_thresh
        log(f"box NMS at IoU {p.box_nms_thresh} (checkpoint: {mcfg.box_nms_thresh})")
    if p.rpn_proposals:
        # fewer proposals into the box head cost less per image (docs/experiments.md measures what they cost in score)
        if limits.proposals is None:
            raise CellpipeError(f"predict.rpn_proposals: {family.name} has no RPN")
        changes["proposals"] = p.rpn_proposals
        log(f"{p.rpn_proposals} RPN proposals per image (checkpoint: {mcfg.rpn_post_nms_test})")
    if p.flow_threshold is not None:
        # masks whose flows disagree with the network's by more than this are dropped; cellpose's 0.4 drops most
        # astro cells predicted at ×0.6 and resampled to the image (docs/experiments.md)
        if limits.flow_threshold is None:
            raise CellpipeError(f"predict.flow_threshold: {family.name} follows no flows (model.arch cellpose does)")
        changes["flow_threshold"] = p.flow_threshold
        log(f"flow threshold {p.flow_threshold} (checkpoint: {mcfg.cellpose.flow_threshold})")
    if p.maskness:
        # scores that also know the mask head's confidence (docs/experiments.md measures what it is worth)
        if limits.maskness is None:
            raise CellpipeError(f"predict.maskness: {family.name} has no mask probabilities (Mask R-CNN has)")
        changes["maskness"] = p.maskness
        log(f"scores × maskness^{p.maskness}")
    if p.scores == "cell":
        # one detection per proposal at its probability of being a cell, whatever its type (docs/experiments.md)
        if limits.cell_scores is None:
            raise CellpipeError(f"predict.scores cell: {family.name} cannot score cells apart from types (torchvision's can)")
        changes["cell_scores"] = True
        log("scores: 1 − P(background), one detection per proposal")
    if changes:
        family.set_limits(model, replace(limits, **changes))
    source = prediction_table.model_digest(checkpoint)
    outputs_ = ([] if skip_val else [("val", val_paths, val_out)]) + [("test", test_paths, test_out)]
    if lockbox_paths is not None:
        outputs_.insert(1, ("lockbox", lockbox_paths, lockbox_out))
    with Outputs() as out:  # every table of this model is replaced together or not at all
        for label, paths, target in outputs_:
            wall, cpu = time.perf_counter(), time.process_time()
            with progress(f"predict {label}", total=len(paths)) as bar:
                pred = predict_images(
                    family,
                    model,
                    paths,
                    classes,
                    device=device,
                    mask_threshold=mcfg.mask_threshold,
                    tta=p.tta,
                    tta_iou=p.tta_iou,
                    tile=tile,
                    overlap=p.tile_overlap,
                    max_pixels=p.max_image_pixels,
                    progress=bar,
                )
            pred.model = source
            pred.scores = score_kind(p)
            prediction_table.write(pred, out(target))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            per = max(1, len(paths))  # the cost per image, so that caps and settings are measured, not guessed
            log(f"predicted {len(pred.detections)} {label} detections on {len(paths)} images "
                f"({wall / per:.2f} s/image, {cpu / per:.2f} s of CPU) → {target}")  # fmt: skip
        if submission_out is not None:
            from cellpipe import submission

            submission.write(
                pred,
                list(test_paths),
                thresholds_file,
                out(submission_out),
                default_threshold=0.5,
                ids_where=str(folder),
                shown_as=submission_out,
            )
