"""Stage ``predict``: the best fine-tuned checkpoint → raw detections for val and test.

Also the way to apply a model to any folder of images (``--test-dir``), Kaggle
layout or a plain folder of PNG/TIFF files of any size.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import coco
from cellpipe.errors import CellpipeError
from cellpipe.images import list_images, read_grey
from stages.common import PARAMS_HELP, load_params, log, progress


def load_model(checkpoint: Path, device):
    """Model, its config and class names from a cellpipe checkpoint."""
    from cellpipe import models

    ckpt = models.load_checkpoint(checkpoint)
    for key in ("model_config", "classes"):
        if key not in ckpt:
            raise CellpipeError(f"checkpoint lacks '{key}': not written by cellpipe's training", where=str(checkpoint))
    # checkpoints from before mask_geometry existed were trained with torchvision's
    mcfg = models.ModelConfig.from_params({"mask_geometry": "torchvision", **ckpt["model_config"]})
    model = models.build(mcfg, len(ckpt["classes"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CellpipeError(f"weights do not fit the architecture they claim ({str(exc).splitlines()[0]})",
                            where=str(checkpoint)) from None
    return model.to(device).eval(), mcfg, list(ckpt["classes"])


def predict_paths(model, mcfg, classes, paths: dict[str, Path], *, tta: bool, tta_iou: float, label: str, device):
    from cellpipe import predictions
    from cellpipe.predict import predict_image

    items = []
    with progress(f"predict {label}") as bar:
        for k, (image_id, path) in enumerate(paths.items()):
            grey = read_grey(path)
            items.append((image_id, predict_image(model, grey, device=device, mask_threshold=mcfg.mask_threshold,
                                                  tta=tta, tta_iou=tta_iou)))
            bar(k + 1, len(paths))
    return predictions.to_frame(items, classes)


def run(
    checkpoint: Path = typer.Option(Path("models/finetune/best.pt"), help="trained checkpoint"),
    val: Path = typer.Option(Path("data/coco/val.json"), help="COCO JSON whose images to predict (val split)"),
    kaggle_dir: Path = typer.Option(Path("data/raw/kaggle"), help="Kaggle-layout folder whose test/ images to predict"),
    test_dir: Path | None = typer.Option(None, help="folder of images to predict instead (any folder of PNG/TIFF) "
                                         "[default: KAGGLE_DIR/test]"),
    val_out: Path = typer.Option(Path("data/predictions/val.parquet"), help="val detections"),
    test_out: Path = typer.Option(Path("data/predictions/test.parquet"), help="test detections"),
    skip_val: bool = typer.Option(False, "--skip-val", help="predict only the image folder (apply a model to new images)"),
    submission_out: Path | None = typer.Option(None, help="also write a submission-format CSV of the folder's images"),
    thresholds_file: Path = typer.Option(Path("metrics/thresholds.json"), "--thresholds",
                                         help="per-class score thresholds for --submission-out (0.5 if missing)"),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    from cellpipe import models, predictions
    from cellpipe.train import default_device

    p = load_params(params, "predict", builtin=skip_val)
    folder = test_dir or kaggle_dir / "test"
    test_paths = list_images(folder)
    if not test_paths:
        raise CellpipeError("no .png/.tif images in the folder", where=str(folder))
    val_paths = {} if skip_val else coco.image_paths(coco.load_json(val), val)
    device = default_device()
    model, mcfg, classes = load_model(checkpoint, device)
    if p["detections_per_img"]:
        # a predict-time cap, so that trying another cap does not retrain the model
        models.test_head(model).detections_per_img = p["detections_per_img"]
        log(f"detections per image capped at {p['detections_per_img']} (checkpoint: {mcfg.detections_per_img})")
    if not skip_val:
        val_pred = predict_paths(model, mcfg, classes, val_paths, tta=p["tta"], tta_iou=p["tta_iou"], label="val",
                                 device=device)
        predictions.write(val_pred, val_out)
        log(f"predicted {len(val_pred.detections)} val detections on {len(val_paths)} images → {val_out}")
    test_pred = predict_paths(model, mcfg, classes, test_paths, tta=p["tta"], tta_iou=p["tta_iou"], label="test",
                              device=device)
    predictions.write(test_pred, test_out)
    log(f"predicted {len(test_pred.detections)} detections on {len(test_paths)} images of {folder} → {test_out}")
    if submission_out is not None:
        from stages.submit import write_submission

        write_submission(test_pred, list(test_paths), thresholds_file, submission_out, default_threshold=0.5,
                         ids_where=str(folder))
