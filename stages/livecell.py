"""Stage ``livecell``: validate the LIVECell COCO JSON and normalise it for pretraining."""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import coco
from cellpipe.console import log
from cellpipe.io import write_json


def run(
    livecell_json: Path = typer.Option(
        Path("data/raw/livecell/annotations/LIVECell/livecell_coco_train.json"),
        help="LIVECell COCO JSON (list or dict 'annotations')",
    ),
    livecell_images: Path = typer.Option(
        Path("data/raw/livecell/images/livecell_train_val_images"), help="folder of its .tif images"
    ),
    out: Path = typer.Option(Path("data/coco/livecell.json"), help="normalised COCO JSON (one class 'cell')"),
) -> None:
    data = coco.normalise(coco.load_json(livecell_json), where=str(livecell_json), image_root=livecell_images, single_class=True)
    write_json(coco.with_paths_for(data, out), out, indent=None)
    log(f"LIVECell: {len(data['images'])} images, {len(data['annotations'])} cells → {out}")
