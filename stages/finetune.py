"""Stage ``finetune``: from the LIVECell checkpoint (or as params say) on the competition data."""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe.config import PARAMS_HELP, load


def run(
    train: Path = typer.Option(Path("data/coco/train.json"), help="COCO JSON of the train split"),
    val: Path = typer.Option(Path("data/coco/val.json"), help="COCO JSON of the val split"),
    init_checkpoint: Path = typer.Option(
        Path("models/livecell/best.pt"), help="the checkpoint finetune.init 'checkpoint' starts from"
    ),
    out: Path = typer.Option(Path("models/finetune"), help="checkpoints (best.pt, last.pt) and dvclive logs"),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    from cellpipe.training import run_training  # imports torch: only when training

    p = load(params, "model", "finetune", "postprocess")
    init = str(init_checkpoint) if p.finetune.init == "checkpoint" else p.finetune.init
    run_training(
        stage="finetune",
        train_json=train,
        val_source=val,
        out=out,
        model_cfg=p.model,
        train_cfg=p.finetune,
        init=init,
        post=p.postprocess,
        single_class=False,
    )
