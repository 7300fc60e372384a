"""Stage ``finetune``: from the LIVECell checkpoint (or as params say) on the competition data.

Under DVC one stage per fold (a ``matrix`` over ``cv.folds``): model k trains on the
other folds of ``data/coco/folds.json``, early-stops on fold k and goes to
``models/finetune/fold<k>``. The fold reaches the command as an option DVC quotes
(``${item}``); the output folder follows from it here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cellpipe.errors import CellpipeError
from cellpipe.params_file import PARAMS_HELP, load


def run(
    train: Path = typer.Option(
        Path("data/coco/folds.json"), help="COCO JSON to train on (with --fold: the folds file, fold K held out)"
    ),
    fold: int | None = typer.Option(None, help="the fold this model holds out and early-stops on (a folds file's 'fold')"),
    val: Path | None = typer.Option(None, help="without --fold: a separate COCO JSON to early-stop on"),
    init_checkpoint: Path = typer.Option(
        Path("models/livecell/best.pt"), help="the checkpoint finetune.init 'checkpoint' starts from"
    ),
    models_dir: Path = typer.Option(Path("models/finetune"), help="with --fold K: the model goes to MODELS_DIR/foldK"),
    out: Path | None = typer.Option(
        None, help="checkpoints (best.pt, last.pt) and dvclive logs [default: MODELS_DIR/foldK; without --fold: MODELS_DIR]"
    ),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    if (fold is None) == (val is None):
        raise CellpipeError("give either --fold (validate on that fold of --train) or --val (a separate COCO file)")
    out = out or (models_dir / f"fold{fold}" if fold is not None else models_dir)
    from cellpipe.training import distributed
    from cellpipe.training.runner import run_training  # imports torch: only when training

    p = load(params, "model", "finetune", "postprocess")
    if p.finetune.nproc > 1 and not distributed.launched():  # the same command as nproc processes (DDP)
        raise typer.Exit(distributed.relaunch(p.finetune.nproc, sys.argv[1:]))
    init = str(init_checkpoint) if p.finetune.init == "checkpoint" else p.finetune.init
    run_training(
        stage="finetune" if fold is None else f"finetune fold {fold}",
        train_json=train,
        val_source=val if val is not None else train,
        out=out,
        model_cfg=p.model,
        train_cfg=p.finetune,
        init=init,
        post=p.postprocess,
        single_class=False,
        fold=fold,
    )
