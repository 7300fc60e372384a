"""Stage ``livecell``: validate the LIVECell COCO JSON and normalise it for pretraining."""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import livecell
from cellpipe.console import log, progress


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
    with progress("livecell MB") as bar:
        n_images, n_cells = livecell.normalise_file(livecell_json, out, image_root=livecell_images, progress=bar)
    log(f"LIVECell: {n_images} images, {n_cells} cells → {out}")
