"""``cellpipe params``: the effective params of a file, or the documented defaults."""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import params_file


def show(
    params: Path = typer.Option(Path("params.yaml"), help=params_file.PARAMS_HELP),
    defaults: bool = typer.Option(False, "--defaults", help="print the defaults as a documented params.yaml instead"),
) -> None:
    """Print the params every stage would use (the file's values, defaults for keys it leaves out)."""
    if defaults:
        typer.echo(params_file.render(), nl=False)
        return
    typer.echo(params_file.render(params_file.read(params)[0]), nl=False)
