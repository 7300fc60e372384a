"""A pre-imported ``cellpipe`` that forks one real process per command, for the tests' ``run_cli``.

Why: every ``cellpipe`` process spends 1 s importing pandas, pydantic and typer, 5 s more
when it imports torch and torchvision (torchvision's ops import ``torch._dynamo``), and
8 s more when it imports cellpose (numba compiles its kernels at import; ≈ 4 s in all
once :func:`cellpipe.models.cellpose_flow._cellpose` has cached them). The
suite starts a few hundred commands, so imports were about a third of its CPU time.

This server imports all of that once, single-threaded (no torch op runs in it, so no
OpenMP pool exists to be forked), then serves requests: each command runs in a child
forked from it — a separate process with its own working directory, environment,
stdout/stderr files and exit status, entering ``stages.entry.main`` exactly as
``python -m stages`` does. Only the imports are shared, so tests of the command's
behaviour (exit codes, one-line errors, no partial output) see what a fresh process does.
Tests of signals and of import-time behaviour start fresh interpreters themselves.

Protocol (one JSON object per line on stdin → one per line on stdout):
``{"args", "cwd", "env", "out", "err"}`` → ``{"pid"}`` when started, then ``{"rc"}`` when it ends.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys


def preload() -> None:
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import torch  # noqa: F401
    import torchvision.models.detection  # noqa: F401

    from cellpipe.models.cellpose_flow import _cellpose

    # cellpose's numba kernels: compiled (or loaded from numba's cache) here, as the family does;
    # the flow family's own tests say when cellpose is missing
    with contextlib.suppress(Exception):
        _cellpose()
    import stages.cli  # noqa: F401


def child(request: dict) -> int:
    """In the forked process: become ``python -m stages ARGS`` run in ``cwd`` with ``env``."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.argv = [str(request["argv0"]), *request["args"]]
    sys.path[0] = os.getcwd()  # as ``python -m`` puts it
    from stages.entry import main

    try:
        main()
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0


def serve() -> int | None:
    """The server loop; returns an exit code only in a forked child (which then exits normally)."""
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            sys.stdin = open(os.devnull)  # noqa: SIM115 - the child's stdin is /dev/null
            return child(request)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
    return None


if __name__ == "__main__":
    preload()
    print(json.dumps({"ready": len(os.listdir("/proc/self/task"))}), flush=True)
    code = serve()
    if code is not None:
        # what interpreter exit does that anyone can see (exit handlers, flushed output), without
        # tearing down torch and numba's modules one by one, which takes longer than most commands
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
