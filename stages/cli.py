"""The ``cellpipe`` command: one subcommand per DVC stage, in DAG order.

Errors in user input are printed as one red line and exit with code 1; set
``--debug`` (or ``CELLPIPE_DEBUG=1``) to see the traceback.
"""

from __future__ import annotations

import os
import signal
import sys

import typer

from cellpipe import __version__
from cellpipe.console import console
from cellpipe.errors import CellpipeError
from stages import (
    anchors,
    check_submission,
    coco,
    compare,
    decode,
    deps,
    ensemble,
    finetune,
    livecell,
    params,
    predict,
    pretrain,
    profile,
    score,
    submit,
    synth,
    thresholds,
    visualize,
)
from stages.entry import Interrupted, _raise_interrupted, stopped

app = typer.Typer(
    name="cellpipe",
    help="Cell instance segmentation pipeline (Kaggle Sartorius / LIVECell). Each command is one DVC stage; "
    "run them all with `dvc repro`.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cellpipe {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="show full tracebacks on errors"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    if debug:
        os.environ["CELLPIPE_DEBUG"] = "1"


# DAG order
app.command("synth", help="Generate the embedded synthetic data (Kaggle + LIVECell layouts).")(synth.run)
app.command("decode", help="Validate train.csv and decode its RLE masks into Parquet tables.")(decode.run)
app.command("coco", help="Split images into folds and a lockbox without leakage and write COCO JSON.")(coco.run)
app.command("anchors", help="Report how well the model's anchors fit the training cells.")(anchors.run)
app.command("livecell", help="Validate and normalise the LIVECell COCO JSON for pretraining.")(livecell.run)
app.command("pretrain", help="Train Mask R-CNN on the LIVECell COCO (one class).")(pretrain.run)
app.command("finetune", help="Fine-tune from the LIVECell checkpoint on the competition data (one fold's model).")(finetune.run)
app.command("predict", help="Run the best checkpoint on out-of-fold, lockbox and test images → detections (Parquet).")(
    predict.run
)
app.command("ensemble", help="Fold models' detections → out-of-fold, lockbox and test predictions.")(ensemble.run)
app.command("thresholds", help="Choose per-class score thresholds on out-of-fold predictions (cross-fitted).")(thresholds.run)
app.command("score", help="Score detections with the competition metric → metrics JSON.")(score.run)
app.command("submit", help="Test detections → non-overlapping masks → submission.csv (validated).")(submit.run)
app.command("visualize", help="Draw predictions over val/test images (overlays for dvc plots).")(visualize.run)
app.command("check-submission", help="Validate a submission.csv against the test image ids.")(check_submission.check)
app.command("params", help="Print the effective params (or the documented defaults).")(params.show)
app.command("deps", help="Print each stage's code closure (--fix: write it into dvc.yaml's deps).")(deps.show)
app.command("compare", help="Compare two runs' per-image scores on the same images (paired bootstrap per class).")(compare.run)
app.command("profile", help="Print a profile's key=value arguments for dvc exp run -S (./run.sh profile NAME).")(profile.show)


def _usage_error(exc: BaseException) -> bool:
    """Is ``exc`` a click/typer usage-class exception (typer vendors its own click classes)?"""
    from typer.exceptions import TyperException

    classes: tuple[type, ...] = (TyperException,)
    try:
        import click

        classes += (click.ClickException,)
    except ImportError:  # pragma: no cover - typer without click
        pass
    return isinstance(exc, classes) and hasattr(exc, "show")


def main() -> None:
    """Console entry point with exit codes scripts can rely on.

    0 ok; 1 a :class:`CellpipeError` (one red line, no traceback); 2 a usage mistake
    (click's usage message only); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
    """
    signal.signal(signal.SIGINT, _raise_interrupted)  # again: stages.entry set them before importing this module
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        code = app(standalone_mode=False)
    except CellpipeError as exc:
        if os.environ.get("CELLPIPE_DEBUG") == "1":
            raise
        console.print(f"[bold red]error:[/bold red] [red]{exc}[/red]", soft_wrap=True, highlight=False)
        sys.exit(1)
    except (Interrupted, KeyboardInterrupt) as exc:
        sys.exit(stopped(exc))
    except Exception as exc:
        if not _usage_error(exc):
            raise
        if exc.__class__.__name__ != "NoArgsIsHelpError":  # the help text is already printed
            exc.show()
        sys.exit(getattr(exc, "exit_code", 2))
    # non-standalone typer returns the code of an Exit (--version: 0; its own Ctrl-C handling: 130)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
