"""Training: the engine (:mod:`.engine`), data-parallel processes (:mod:`.distributed`) and the
body of the ``pretrain`` and ``finetune`` stages (:mod:`.runner`).

What a training stage imports ends here and in :mod:`cellpipe.models`: evaluating a
checkpoint needs single-image prediction and the metric, never ensembling, submission
writing or drawing code, so an edit to those retrains nothing.
"""
