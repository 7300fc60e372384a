"""cellpipe: a reproducible, cached pipeline for cell instance segmentation.

The library knows nothing of typer or of DVC's pipeline: no module runs a dvc command or
reads ``dvc.yaml`` (the training runner writes its logs with dvclive, as plain files
under the model's folder, ``dvcyaml=False``). The stage commands in ``stages/`` read
params and paths and call into it.
"""

__version__ = "0.1.0"
