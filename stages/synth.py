"""Stage ``synth``: the embedded default data, in the real Kaggle and LIVECell layouts."""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import synth
from cellpipe.atomic import Outputs
from cellpipe.console import log, progress
from cellpipe.params_file import PARAMS_HELP, load


def run(
    kaggle_out: Path = typer.Option(Path("data/raw/kaggle"), help="output folder in the Kaggle layout"),
    livecell_out: Path = typer.Option(Path("data/raw/livecell"), help="output folder in the LIVECell layout"),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    p = load(params, "synth").synth
    with Outputs() as out:  # both folders are replaced together or not at all
        kaggle, livecell = out(kaggle_out, directory=True), out(livecell_out, directory=True)
        with progress("synth kaggle images") as bar:
            df = synth.write_kaggle(
                kaggle, p.images_per_type, p.test_images, p.cells_scale, p.seed, p.images_per_sample, progress=bar
            )
        log(f"made {df['id'].nunique()} training images with {len(df)} cells and {p.test_images} test images for {kaggle_out}")
        with progress("synth livecell images") as bar:
            coco = synth.write_livecell(livecell, p.livecell_images, p.livecell_cells_scale, p.seed, progress=bar)
        log(f"made {len(coco['images'])} LIVECell-style images with {len(coco['annotations'])} cells for {livecell_out}")
    log(f"wrote {kaggle_out} and {livecell_out}")
