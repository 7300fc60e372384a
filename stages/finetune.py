"""Stage ``finetune``: from the LIVECell checkpoint (or as params say) on the competition data."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.common import PARAMS_HELP, load_params


def run(
    train: Path = typer.Option(Path("data/coco/train.json"), help="COCO JSON of the train split"),
    val: Path = typer.Option(Path("data/coco/val.json"), help="COCO JSON of the val split"),
    init_checkpoint: Path = typer.Option(Path("models/livecell/best.pt"),
                                         help="the checkpoint finetune.init 'checkpoint' starts from"),
    out: Path = typer.Option(Path("models/finetune"), help="checkpoints (best.pt, last.pt) and dvclive logs"),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    from stages.training import run_training  # imports torch: only when training

    run_training(stage="finetune", train_json=train, val_source=val, out=out,
                 params_all=load_params(params, "model", "finetune", "postprocess"), single_class=False,
                 init_checkpoint=init_checkpoint)
