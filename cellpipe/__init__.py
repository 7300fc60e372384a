"""cellpipe: a reproducible, cached pipeline for cell instance segmentation.

The library is pure: it knows nothing of typer or DVC. The stage commands in
``stages/`` read params and paths and call into it.
"""

__version__ = "0.1.0"
