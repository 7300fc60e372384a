"""``cellpipe params``: the effective params of a file, or the documented defaults."""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import config


def show(
    params: Path = typer.Option(Path("params.yaml"), help=config.PARAMS_HELP),
    defaults: bool = typer.Option(False, "--defaults", help="print the defaults as a documented params.yaml instead"),
) -> None:
    """Print the params every stage would use (the file's values, defaults for keys it leaves out)."""
    if defaults:
        typer.echo(config.render(), nl=False)
        return
    typer.echo(config.render(config.read(params)[0]), nl=False)
