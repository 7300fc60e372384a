"""Atomic outputs: every output of a stage is written to a temporary sibling and the set is
moved into place together, or not at all.

DVC caches whatever lies at an output path when a stage ends. A stage killed half way
must leave either the old outputs or none, never a truncated file that would be hashed
and reused forever — and never a *mix* of new and old outputs (a new
``annotations.parquet`` beside an old ``images.parquet``) that the next stage would read
as one consistent result. So a stage writes all its outputs to temporaries first
(:class:`Outputs`), then renames them in one short block during which SIGINT/SIGTERM
are held back (:func:`signals_deferred`); a failure on the way puts the old set back.
``os.replace`` of a sibling path is atomic on POSIX; only SIGKILL or a power cut can
split the block, and readers check that what belongs together matches.

A failure to write (read-only folder, no space left, a parent that is a file, an output
path that is a folder) is a one-line :class:`~cellpipe.errors.CellpipeError` naming
the path, not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from cellpipe.errors import CellpipeError

_DEFERRED = (signal.SIGINT, signal.SIGTERM)
_FILE_SYSTEM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while the block runs; the first one is delivered when it ends.

    Python runs signal handlers in the main thread between bytecodes, whichever thread the
    kernel handed the signal to (torch's worker threads included), so the handlers are
    swapped for a recorder during the block and the recorded signal is passed to the
    previous handler after it: the CLI's (exit 130/143), Python's default KeyboardInterrupt,
    or the default action. A block of renames is never split by Ctrl-C or ``kill``. Only
    the main thread may set handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.getsignal(s) for s in _DEFERRED}
    for s in _DEFERRED:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            signum = received[0]
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def _write_error(path: Path, exc: OSError) -> CellpipeError:
    reasons = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a parent of it is a file, not a folder",
        errno.EISDIR: "it is a folder, not a file",
        errno.ENAMETOOLONG: "its name is too long for the file system",
        errno.EEXIST: "a parent of it is a file, not a folder",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "the file grew past the largest this process may write (file-size limit)",
    }
    reason = reasons.get(exc.errno, exc.strerror or exc.__class__.__name__)
    return CellpipeError(f"cannot write this output: {reason}", where=str(path))


def _parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(target, exc) from None
    if not target.parent.is_dir():
        raise _write_error(target, OSError(errno.ENOTDIR, "not a folder"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class Outputs:
    """A stage's outputs, replaced together or not at all.

    ``out(target)`` (``directory=True`` for a folder) gives a temporary path beside
    ``target`` to write to. When the ``with`` block ends without an error every target
    is replaced by its temporary in one block that SIGINT/SIGTERM cannot split (a
    failing rename puts the old ones back); on any exception the temporaries are
    removed and every target is untouched::

        with Outputs() as out:
            write_parquet(annotations, out(annotations_out))
            write_parquet(images, out(images_out))
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path, bool]] = []  # (target, temporary, directory)

    def __call__(self, target: str | os.PathLike[str], *, directory: bool = False) -> Path:
        target = Path(target)
        if any(t == target for t, _, _ in self._pending):
            raise ValueError(f"{target} is already an output of this stage")
        _parent(target)
        if target.is_dir() and not directory:
            raise _write_error(target, OSError(errno.EISDIR, "is a directory"))
        if target.exists() and not target.is_dir() and directory:
            raise CellpipeError("cannot write this output folder: a file of that name is in the way", where=str(target))
        remove_stale(target.parent, target.name)
        try:
            if directory:
                tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
            else:
                fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
                os.close(fd)
                tmp = Path(name)
        except OSError as exc:
            raise _write_error(target, exc) from None
        self._pending.append((target, tmp, directory))
        return tmp

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            target = self._target_of(exc) if isinstance(exc, OSError) else None
            self.discard()
            if target is not None:  # no space left while writing, ...: said in one line
                raise _write_error(target, exc) from None
            return False
        targets = [t for t, _, _ in self._pending]
        try:
            self.commit()
        except OSError as err:  # the old outputs are back in place
            raise _write_error(self._target_of(err) or targets[0], err) from None
        return False

    def _target_of(self, exc: OSError) -> Path | None:
        """The output a write error belongs to: the one whose path it names, else the first when
        it is a file-system condition (no space, read-only, quota) rather than a bug."""
        names = [str(n) for n in (exc.filename, getattr(exc, "filename2", None)) if n]
        for target, tmp, _ in self._pending:
            if any(n in (str(tmp), str(target)) or n.startswith(str(tmp) + os.sep) for n in names):
                return target
        full = exc.errno in _FILE_SYSTEM or any(text in str(exc) for text in ("No space left", "Read-only file system"))
        return self._pending[0][0] if full and self._pending else None

    def discard(self) -> None:
        for _, tmp, _ in self._pending:
            _remove(tmp)
        self._pending = []

    def _roll_back(self, done: list[Path], backups: list[tuple[Path, Path]]) -> None:
        """Put the old outputs back after a failed commit (each step on its own: one failure stops no other)."""
        for target in done:
            with contextlib.suppress(OSError):
                _remove(target)
        for target, old in backups:
            with contextlib.suppress(OSError):
                if target.exists() and target.is_file() and not target.is_symlink() and target not in done:
                    _remove(old)  # a file set aside by a hard link and never replaced: still in place
                else:
                    os.replace(old, target)
        for _, tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                _remove(tmp)
        self._pending = []

    def commit(self) -> None:
        """Move every temporary onto its target, all or none (see the class doc)."""
        for _, tmp, directory in self._pending:
            if not directory:
                os.chmod(tmp, 0o644)
        backups: list[tuple[Path, Path]] = []  # (target, its old version) for the ones replaced so far
        done: list[Path] = []
        with signals_deferred():
            try:
                for target, tmp, _ in self._pending:
                    old = target.with_name(f".{target.name}.old")
                    _remove(old)
                    if target.exists() or target.is_symlink():
                        _keep_old(target, old)
                        backups.append((target, old))
                    os.replace(tmp, target)
                    done.append(target)
            except BaseException:
                self._roll_back(done, backups)
                raise
            for _, old in backups:
                _remove(old)
        self._pending = []


def _keep_old(target: Path, old: Path) -> None:
    """Set ``target`` aside as ``old`` for a rollback. A file is hard-linked, so that it stays at its
    path until its replacement lands there (even a SIGKILL leaves the old file or the new one);
    a folder (or a file system without hard links) is renamed."""
    if target.is_file() and not target.is_symlink():
        try:
            os.link(target, old)
            return
        except OSError:
            pass
    os.replace(target, old)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` on success.

    One output of :class:`Outputs`: on any exception the temporary file/folder is
    removed and ``target`` is untouched.
    """
    with Outputs() as out:
        yield out(target, directory=directory)


def remove_stale(folder: str | os.PathLike[str], name: str = "*") -> list[Path]:
    """Remove temporaries a killed writer left in ``folder`` (of ``name``, or of any name).

    They are hidden (``.name.XXXX.tmp``/``.name.old``) and never an output themselves, but
    inside an output folder (a persisted checkpoint folder) DVC would cache them.
    """
    folder = Path(folder)
    pattern = name if name == "*" else glob.escape(name)
    stale = [*folder.glob(f".{pattern}.*.tmp"), *folder.glob(f".{pattern}.old")] if folder.is_dir() else []
    for path in stale:
        _remove(path)
    return stale
