"""Stage ``coco``: Parquet tables → leak-free train/val COCO JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import coco
from cellpipe.config import PARAMS_HELP, load
from cellpipe.console import log
from cellpipe.io import read_parquet, write_json


def run(
    annotations: Path = typer.Option(Path("data/interim/annotations.parquet"), help="cells table from decode"),
    images: Path = typer.Option(Path("data/interim/images.parquet"), help="images table from decode"),
    train_out: Path = typer.Option(Path("data/coco/train.json"), help="COCO JSON of the train split"),
    val_out: Path = typer.Option(Path("data/coco/val.json"), help="COCO JSON of the val split"),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    p = load(params, "coco").coco
    ann = read_parquet(annotations)
    img = read_parquet(images)
    split = coco.split_groups(img, p.val_fraction, p.seed)
    for name, out in (("train", train_out), ("val", val_out)):
        part = img[split == name]
        data = coco.build(part, ann, images_file=images, out=out)
        write_json(data, out, indent=None)
        counts = part["cell_type"].value_counts().to_dict()
        log(f"{name}: {len(part)} images ({counts}), {len(data['annotations'])} cells → {out}")
