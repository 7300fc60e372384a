"""The ``cellpipe`` command: one subcommand per DVC stage, in DAG order.

Errors in user input are printed as one red line and exit with code 1; set
``--debug`` (or ``CELLPIPE_DEBUG=1``) to see the traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from cellpipe import __version__
from cellpipe.errors import CellpipeError
from stages import coco, decode, finetune, livecell, predict, pretrain, score, submit, synth, thresholds, visualize
from stages import submission as submission_cmd
from stages.common import console

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
app.command("coco", help="Split images without leakage and write COCO JSON (train/val).")(coco.run)
app.command("livecell", help="Validate and normalise the LIVECell COCO JSON for pretraining.")(livecell.run)
app.command("pretrain", help="Train Mask R-CNN on the LIVECell COCO (one class).")(pretrain.run)
app.command("finetune", help="Fine-tune from the LIVECell checkpoint on the competition train split.")(finetune.run)
app.command("predict", help="Run the best checkpoint on val and test images → detections (Parquet).")(predict.run)
app.command("thresholds", help="Tune per-class score thresholds on val.")(thresholds.run)
app.command("score", help="Score val detections with the competition metric → metrics/val.json.")(score.run)
app.command("submit", help="Test detections → non-overlapping masks → submission.csv (validated).")(submit.run)
app.command("visualize", help="Draw predictions over val/test images (overlays for dvc plots).")(visualize.run)
app.command("check-submission", help="Validate a submission.csv against the test image ids.")(submission_cmd.check)


def main() -> None:
    """Console entry point: turn CellpipeError into a one-line message and exit 1."""
    try:
        app(standalone_mode=False)
    except CellpipeError as exc:
        if os.environ.get("CELLPIPE_DEBUG") == "1":
            raise
        console.print(f"[bold red]error:[/bold red] [red]{exc}[/red]", soft_wrap=True, highlight=False)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("[red]aborted[/red]")
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
