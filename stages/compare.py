"""``cellpipe compare``: two runs' per-image scores on the same images, with a paired bootstrap interval per class.

Not a DVC stage: it compares two experiments' outputs, which no one stage of the DAG
holds. Fetch each run's table with ``dvc get`` (an experiment name works as ``--rev``)::

    dvc get . metrics/oof_fixed_per_image.csv --rev main -o /tmp/a.csv
    dvc get . metrics/oof_fixed_per_image.csv --rev my-exp -o /tmp/b.csv
    cellpipe compare /tmp/a.csv /tmp/b.csv
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cellpipe import comparison
from cellpipe.atomic import Outputs
from cellpipe.console import console, log
from cellpipe.io import write_json


def run(
    a: Path = typer.Argument(..., help="the reference run's per-image table (metrics/*_per_image.csv)"),
    b: Path = typer.Argument(..., help="the candidate run's per-image table, on the same images"),
    resamples: int = typer.Option(10_000, min=1, help="bootstrap resamples of the images"),
    seed: int = typer.Option(0, help="seed of the resampling"),
    confidence: float = typer.Option(0.95, min=0.5, max=0.999, help="level of the interval"),
    out: Path | None = typer.Option(None, help="also write the comparison as JSON here"),
) -> None:
    """Print B − A per class with its interval; an interval holding 0 is no measured difference on these images."""
    rows = comparison.paired(
        comparison.read_per_image(a), comparison.read_per_image(b),
        resamples=resamples, seed=seed, confidence=confidence, where_a=str(a), where_b=str(b),
    )  # fmt: skip
    level = f"{confidence:.0%}"
    table = Table(title=f"B − A per image, paired bootstrap {level} interval ({resamples} resamples of the images)")
    for column in ("group", "images", "A", "B", "B − A", f"{level} interval", "images B / A up"):
        table.add_column(column, justify="left" if column == "group" else "right", no_wrap=True)
    for row in rows:
        shown = "[green]" if row.low > 0 else "[red]" if row.high < 0 else ""
        table.add_row(
            row.group, str(row.images), f"{row.score_a:.4f}", f"{row.score_b:.4f}", f"{shown}{row.difference:+.4f}",
            f"[{row.low:+.4f}, {row.high:+.4f}]", f"{row.b_better} / {row.a_better}",
        )  # fmt: skip
    console.print(table)
    log(f"A = {a}, B = {b}; the interval is the images' noise only: a second training seed shows the model's")
    if out is not None:
        summary = {"a": str(a), "b": str(b), "resamples": resamples, "seed": seed, "confidence": confidence,
                   "groups": [row.as_dict() for row in rows]}  # fmt: skip
        with Outputs() as outputs:
            write_json(summary, outputs(out))
        log(f"→ {out}")
