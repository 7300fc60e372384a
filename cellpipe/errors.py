"""The project's own error type.

Every problem with user input (files, rows, params, checkpoints) is raised as a
:class:`CellpipeError` whose message is one line naming the file, the row or image
and what is wrong. The CLI turns it into a red one-line message and a non-zero
exit; anything else escaping is a bug.
"""

from __future__ import annotations


class CellpipeError(ValueError):
    """Bad input or an impossible request, with a one-line user-facing message."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)
