"""Helpers shared by several test files (test files never import each other)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import decode_and_split, run_cli, write_params


def one_line_error(proc, *needles: str) -> None:
    """Exit code 1, one ``error:`` message (last on stderr) naming what is wrong, no traceback."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    starts = [k for k, line in enumerate(lines) if line.startswith("error:")]
    assert len(starts) == 1, proc.stderr
    err = " ".join(" ".join(lines[starts[0] :]).split())
    for needle in needles:
        assert needle in err, (needle, proc.stderr)


def finetune_on(kaggle: Path, tmp_path: Path, edit, *extra: str):
    """decode → coco → ``cellpipe finetune`` on ``kaggle`` with the committed params edited by ``edit``."""
    p = write_params(tmp_path / "p.yaml", edit)
    decode_and_split(kaggle, tmp_path, p)
    return run_cli(
        "finetune",
        "--train",
        str(tmp_path / "train.json"),
        "--val",
        str(tmp_path / "val.json"),
        "--out",
        str(tmp_path / "ft"),
        "--params",
        str(p),
        *extra,
    )
