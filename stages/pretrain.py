"""Stage ``pretrain``: a model on the LIVECell COCO (one class 'cell')."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cellpipe.params_file import PARAMS_HELP, load


def run(
    livecell: Path = typer.Option(Path("data/coco/livecell.json"), help="normalised LIVECell COCO (livecell stage)"),
    out: Path = typer.Option(Path("models/livecell"), help="checkpoints (best.pt, last.pt) and dvclive logs"),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    from cellpipe.training import distributed
    from cellpipe.training.runner import run_training  # imports torch: only when training

    p = load(params, "model", "pretrain", "postprocess")
    if p.pretrain.nproc > 1 and not distributed.launched():  # the same command as nproc processes (DDP)
        raise typer.Exit(distributed.relaunch(p.pretrain.nproc, sys.argv[1:]))
    run_training(
        stage="pretrain",
        train_json=livecell,
        val_source=livecell,
        out=out,
        model_cfg=p.model,
        train_cfg=p.pretrain,
        init=p.pretrain.init,
        post=p.postprocess,
        single_class=True,
        val_images=p.pretrain.val_images,
    )
