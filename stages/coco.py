"""Stage ``coco``: Parquet tables → COCO JSON of the cross-validation folds and of the lockbox."""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import coco, folds, tables
from cellpipe.atomic import Outputs
from cellpipe.console import log
from cellpipe.io import read_parquet, write_json
from cellpipe.params_file import PARAMS_HELP, load


def run(
    annotations: Path = typer.Option(Path("data/interim/annotations.parquet"), help="cells table from decode"),
    images: Path = typer.Option(Path("data/interim/images.parquet"), help="images table from decode"),
    folds_out: Path = typer.Option(
        Path("data/coco/folds.json"), help="COCO JSON of every image models train or validate on, each with its 'fold'"
    ),
    lockbox_out: Path = typer.Option(Path("data/coco/lockbox.json"), help="COCO JSON of the lockbox images"),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    p = load(params, "cv").cv
    ann = read_parquet(annotations)
    img = read_parquet(images)
    tables.check_pair(ann, img, annotations_where=str(annotations), images_where=str(images))
    img = img.assign(fold=folds.assign(img, len(p.folds), p.lockbox_fraction, p.val_fraction, p.seed))
    with Outputs() as outputs:  # folds and lockbox are replaced together or not at all
        for name, part, out in (
            ("folds", img[img["fold"] != folds.LOCKBOX], folds_out),
            ("lockbox", img[img["fold"] == folds.LOCKBOX], lockbox_out),
        ):
            data = coco.build(part, ann, images_file=images, out=out)
            write_json(data, outputs(out), indent=None)
            counts = part["cell_type"].value_counts().to_dict()
            log(f"{name}: {len(part)} images ({counts}), {len(data['annotations'])} cells → {out}")
    for fold in p.folds:
        held = img[img["fold"] == fold]
        log(f"fold {fold}: {len(held)} images held out ({held['cell_type'].value_counts().to_dict()})")
    if len(p.folds) == 1:
        log(f"train only (K=1): {int((img['fold'] == folds.TRAIN_ONLY).sum())} images")
