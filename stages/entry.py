"""The ``cellpipe`` entry point: the signal handlers first, then the command line's (slow) imports.

Importing typer, rich, pydantic and the stage modules takes a second or two; Ctrl-C or
SIGTERM in that time must end the command like at any other moment (exit 130/143, one
line), not with a ``KeyboardInterrupt`` traceback from inside an import.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path


class Interrupted(BaseException):
    """SIGINT/SIGTERM, raised where the command is: ``except Exception`` cannot swallow it, and
    the atomic writers remove their temporaries on the way out, so no partial output remains."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def stopped(exc: BaseException) -> int:
    """Say how the command was stopped (one line on stderr) and return its exit code (128 + signal)."""
    signum = int(getattr(exc, "signum", signal.SIGINT))
    print("interrupted" if signum == signal.SIGINT else "terminated", file=sys.stderr, flush=True)
    return 128 + signum


def run_this_checkout(cwd: Path) -> bool:
    """Import the code of the cellpipe checkout the command runs in, not of the installed one.

    The package is installed in editable mode from one checkout, so the ``cellpipe`` script
    imports that checkout's code wherever it runs. ``dvc exp run --queue``/``--temp`` runs
    every command in a copy of the repository (``.dvc/tmp/exps/…``) and records the hashes
    of the copy's files as the stage's dependencies; without this it would run the
    original checkout's code as it is at that moment — an edit made while a queued
    experiment waits would then be cached under the hashes of the code it was queued with.
    Returns whether the imports were redirected.
    """
    root = cwd.resolve()
    marks = (root / "dvc.yaml", root / "cellpipe" / "__init__.py", root / "stages" / "cli.py")
    if not all(m.is_file() for m in marks) or Path(__file__).resolve().parent.parent == root:
        return False
    sys.path.insert(0, str(root))
    for name in [m for m in sys.modules if m.split(".")[0] in ("stages", "cellpipe") and m != __name__]:
        del sys.modules[name]  # (this module stays: it only installs the handlers and dispatches)
    return True


def main() -> None:
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        run_this_checkout(Path.cwd())
        from stages import cli
    except (Interrupted, KeyboardInterrupt) as exc:
        sys.exit(stopped(exc))
    cli.main()


if __name__ == "__main__":
    main()
