"""Stage ``decode``: Kaggle ``train.csv`` → ``annotations.parquet`` + ``images.parquet``."""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import tables
from cellpipe.atomic import Outputs
from cellpipe.console import log, progress
from cellpipe.io import write_parquet
from cellpipe.params_file import PARAMS_HELP, load


def run(
    kaggle_dir: Path = typer.Option(Path("data/raw/kaggle"), help="folder in the Kaggle layout (train.csv, train/)"),
    annotations_out: Path = typer.Option(Path("data/interim/annotations.parquet"), help="one row per cell"),
    images_out: Path = typer.Option(Path("data/interim/images.parquet"), help="one row per image"),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    p = load(params, "decode").decode
    csv_path = kaggle_dir / "train.csv"
    df = tables.read_train_csv(csv_path, duplicates=p.duplicates)
    dropped = df.attrs.get("dropped_duplicates", [])
    if dropped:
        log(
            f"[yellow]dropped {len(dropped)} exact duplicate rows of {csv_path} (lines {', '.join(map(str, dropped[:10]))}"
            f"{' …' if len(dropped) > 10 else ''})[/yellow]"
        )
    with progress("decode images") as bar:
        ann, images = tables.build_tables(df, kaggle_dir / "train", where=str(csv_path), progress=bar, holder=images_out)
    tables.check_image_folder(kaggle_dir / "train", images, where=str(csv_path))
    with Outputs() as out:  # the two tables are replaced together or not at all
        write_parquet(ann, out(annotations_out))
        write_parquet(images, out(images_out))
    log(f"decoded {len(ann)} cells of {len(images)} images → {annotations_out}, {images_out}")
