"""Checkpoints are data, never code.

A ``.pt`` file is a pickle, and unpickling can call any function the file names:
loading a checkpoint someone shared (``--checkpoint``, ``finetune.init``, a ``last.pt``
left in an output folder) must never run it. Every checkpoint is therefore read with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers
(dict, list, tuple, str, numbers), and cellpipe writes nothing else into its own.
detectron2's model-zoo ``.pkl`` files are plain pickles of numpy arrays; they go
through a restricted unpickler that allows numpy arrays and nothing callable.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from cellpipe.atomic import atomic_path
from cellpipe.errors import CellpipeError

UNSAFE = "holds Python objects that are not plain data ({what}); refusing to load it, as unpickling it could run code"


def _unsafe_name(exc: BaseException) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return found.group(1) if found else "not tensors, containers, strings or numbers"


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint as a dict of plain data and tensors, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CellpipeError("checkpoint is missing", where=str(path))
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "GLOBAL" in str(exc):
            raise CellpipeError(f"checkpoint {UNSAFE.format(what=_unsafe_name(exc))}", where=str(path)) from None
        raise CellpipeError(f"checkpoint is unreadable or truncated ({exc.__class__.__name__})", where=str(path)) from None
    except Exception as exc:  # truncated zip, not a torch file, ...
        raise CellpipeError(f"checkpoint is unreadable or truncated ({exc.__class__.__name__})", where=str(path)) from None
    if not isinstance(obj, dict):
        raise CellpipeError(f"checkpoint holds a {type(obj).__name__}, not a dict of states", where=str(path))
    return obj


def save(obj: dict[str, Any], path: str | Path) -> None:
    """Write a checkpoint atomically (a killed writer leaves the old file or none)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class _NumpyOnly(pickle.Unpickler):
    """Rebuilds numpy arrays, dtypes and builtin containers; refuses every other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")


def load_pickle(path: str | Path) -> Any:
    """A plain pickle of numpy arrays (detectron2/Caffe2 model-zoo ``.pkl``), safely."""
    path = Path(path)
    if not path.is_file():
        raise CellpipeError("checkpoint is missing", where=str(path))
    try:
        with open(path, "rb") as f:
            return _NumpyOnly(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):
            raise CellpipeError(f"checkpoint {UNSAFE.format(what=_unsafe_name(exc))}", where=str(path)) from None
        raise CellpipeError(f"checkpoint is unreadable or truncated ({exc.__class__.__name__})", where=str(path)) from None
    except Exception as exc:  # EOFError, ValueError, ...
        raise CellpipeError(f"checkpoint is unreadable or truncated ({exc.__class__.__name__})", where=str(path)) from None
