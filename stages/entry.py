"""The ``cellpipe`` entry point: the signal handlers first, then the command line's (slow) imports.

Importing typer, rich, pydantic and the stage modules takes a second or two; Ctrl-C or
SIGTERM in that time must end the command like at any other moment (exit 130/143, one
line), not with a ``KeyboardInterrupt`` traceback from inside an import.
"""

from __future__ import annotations

import signal
import sys


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


def main() -> None:
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        from stages import cli
    except (Interrupted, KeyboardInterrupt) as exc:
        sys.exit(stopped(exc))
    cli.main()


if __name__ == "__main__":
    main()
