"""Atomic outputs: write to a temporary sibling, rename into place when complete.

DVC caches whatever lies at an output path when a stage ends. A stage killed half
way must leave either the old output or none, never a truncated file that would be
hashed and reused forever; ``os.replace`` of a sibling path is atomic on POSIX.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` on success.

    On any exception the temporary file/folder is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent, target.name)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def remove_stale(folder: str | os.PathLike[str], name: str = "*") -> list[Path]:
    """Remove temporaries a killed writer left in ``folder`` (of ``name``, or of any name).

    They are hidden (``.name.XXXX.tmp``/``.name.old``) and never an output themselves, but
    inside an output folder (a persisted checkpoint folder) DVC would cache them.
    """
    folder = Path(folder)
    stale = [*folder.glob(f".{name}.*.tmp"), *folder.glob(f".{name}.old")] if folder.is_dir() else []
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale
