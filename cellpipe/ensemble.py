"""The fold models' predictions tables → out-of-fold, lockbox and test tables (the ``ensemble`` stage).

Lockbox and test images: the K models' detections of each image merged into one set
(:func:`cellpipe.merging.merge`, the same merge as flip test-time augmentation's).
Out of fold: :func:`concat`, each image predicted by exactly one model.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cellpipe.errors import CellpipeError
from cellpipe.merging import merge
from cellpipe.prediction_table import Predictions, same_scores, to_frame


def combine(preds: Sequence[Predictions], iou_threshold: float, min_agreement: float = 0.0) -> Predictions:
    """The fold models' predictions of the same images → one predictions table.

    Every model must have predicted the same images at the same sizes (else an error
    naming the first difference). One model: returned as it is.
    """
    first = preds[0]
    for p in preds[1:]:
        if p.sizes != first.sizes:
            diff = sorted(set(p.sizes) ^ set(first.sizes)) or [i for i in first.sizes if p.sizes.get(i) != first.sizes[i]]
            raise CellpipeError(
                f"the fold models predicted different images (e.g. {diff[0]}; {len(p.sizes)} vs {len(first.sizes)} images)",
                where=p.where,
            )
    scores = same_scores(preds)
    if len(preds) == 1:
        return first
    ids = list(first.sizes)
    per_model = [p.select(ids) for p in preds]
    items = []
    for j, image_id in enumerate(ids):
        items.append((image_id, merge([m[j] for m in per_model], iou_threshold, min_agreement)))
    out = to_frame(items)
    out.where, out.scores = "<ensemble>", scores
    return out


def concat(preds: Sequence[Predictions]) -> Predictions:
    """Out-of-fold predictions of the folds → one table; an image predicted by two folds is an error."""
    sizes: dict[str, tuple[int, int]] = {}
    owner: dict[str, str] = {}
    for p in preds:
        for image_id, size in p.sizes.items():
            if image_id in sizes:
                raise CellpipeError(f"image {image_id} is out of fold for two models (also {owner[image_id]})", where=p.where)
            sizes[image_id], owner[image_id] = size, p.where
    scores = same_scores(preds)
    detections = pd.concat([p.detections for p in preds], ignore_index=True)
    return Predictions(detections, sizes, "<out of fold>", scores=scores)
