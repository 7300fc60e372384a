"""Stage ``predict``: the best fine-tuned checkpoint → raw detections for val and test.

Also the way to apply a model to any folder of images (``--test-dir``), Kaggle
layout or a plain folder of PNG/TIFF files of any size.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import coco, folds
from cellpipe.config import PARAMS_HELP, load
from cellpipe.console import log, progress
from cellpipe.errors import CellpipeError
from cellpipe.images import list_images


def fold_images(path: Path, fold: int | None) -> dict:
    """The COCO dict of ``path``, or only its images of fold ``fold`` (out of fold for that model)."""
    data = coco.load_json(path)
    if fold is None:
        return data
    return folds.held_out(data, fold, where=str(path))


def run(
    checkpoint: Path = typer.Option(Path("models/finetune/fold0/best.pt"), help="trained checkpoint"),
    val: Path = typer.Option(
        Path("data/coco/folds.json"), help="COCO JSON whose images to predict (with --fold: that fold's images only)"
    ),
    fold: int | None = typer.Option(None, help="predict the images of this fold of --val (out of fold for its model)"),
    lockbox: Path | None = typer.Option(None, help="COCO JSON of the lockbox images, predicted into --lockbox-out"),
    lockbox_out: Path = typer.Option(Path("data/predictions/lockbox.parquet"), help="lockbox detections"),
    kaggle_dir: Path = typer.Option(Path("data/raw/kaggle"), help="Kaggle-layout folder whose test/ images to predict"),
    test_dir: Path | None = typer.Option(
        None, help="folder of images to predict instead (any folder of PNG/TIFF) [default: KAGGLE_DIR/test]"
    ),
    val_out: Path = typer.Option(Path("data/predictions/folds/fold0/val.parquet"), help="val (out-of-fold) detections"),
    test_out: Path = typer.Option(Path("data/predictions/test.parquet"), help="test detections"),
    skip_val: bool = typer.Option(False, "--skip-val", help="predict only the image folder (apply a model to new images)"),
    submission_out: Path | None = typer.Option(None, help="also write a submission-format CSV of the folder's images"),
    thresholds_file: Path = typer.Option(
        Path("metrics/thresholds.json"), "--thresholds", help="per-class score thresholds for --submission-out (0.5 if missing)"
    ),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    from cellpipe import models, predictions  # import torch: only when predicting
    from cellpipe.predict import predict_images
    from cellpipe.train import default_device

    p = load(params, "predict", builtin=skip_val).predict
    folder = test_dir or kaggle_dir / "test"
    test_paths = list_images(folder)
    if not test_paths:
        raise CellpipeError("no .png/.tif images in the folder", where=str(folder))
    val_paths = {} if skip_val else coco.image_paths(fold_images(val, fold), val)
    lockbox_paths = coco.image_paths(coco.load_json(lockbox), lockbox) if lockbox is not None and not skip_val else None
    device = default_device()
    family, model, mcfg, classes = models.from_checkpoint(checkpoint, device)
    if p.detections_per_img:
        # a predict-time cap, so that trying another cap does not retrain the model
        family.limits(model).detections_per_img = p.detections_per_img
        log(f"detections per image capped at {p.detections_per_img} (checkpoint: {mcfg.detections_per_img})")
    outputs = ([] if skip_val else [("val", val_paths, val_out)]) + [("test", test_paths, test_out)]
    if lockbox_paths is not None:
        outputs.insert(1, ("lockbox", lockbox_paths, lockbox_out))
    for label, paths, out in outputs:
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
                progress=bar,
            )
        predictions.write(pred, out)
        log(f"predicted {len(pred.detections)} {label} detections on {len(paths)} images → {out}")
    if submission_out is not None:
        from stages.submit import write_submission

        write_submission(pred, list(test_paths), thresholds_file, submission_out, default_threshold=0.5, ids_where=str(folder))
