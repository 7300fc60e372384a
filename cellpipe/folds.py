"""K-fold cross-validation folds and a lockbox, grouped by sample and stratified by cell type.

Images of one ``sample_id`` are frames of the same well over time: a fold (or the
lockbox) always takes whole samples, or a model would be validated on frames of wells
it trained on. Each image gets one fold number:

- ``LOCKBOX`` (−2): held out from everything — training, early stopping, threshold
  choice — and scored once at the end;
- ``0 … K−1``: the fold whose model does *not* train on it; model k is validated
  (early stopping) and predicts out of fold on fold k and trains on the others;
- ``TRAIN_ONLY`` (−1): only with K = 1 (one model, today's single split): the images
  that are never validated on.

Within each cell type the groups are shuffled (seeded); the lockbox takes groups until it
holds ``lockbox_fraction`` of the type's images, leaving enough groups to train and
validate on (K = 1: two; K ≥ 2: one, which lands in one fold while the other models train on it);
the rest are dealt to the folds, largest group first, each to the fold holding the fewest
images of that type (ties: fewest images overall). With K = 1, val takes groups up to
``val_fraction`` of the rest, one group at least staying in training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellpipe.errors import CellpipeError

LOCKBOX = -2
TRAIN_ONLY = -1


def groups(images: pd.DataFrame) -> pd.Series:
    """The leakage group of each image: its ``sample_id``, or the image itself without one."""
    sample = images["sample_id"].fillna("").astype(str).str.strip() if "sample_id" in images else pd.Series("", images.index)
    return pd.Series(np.where(sample == "", "image:" + images["image_id"].astype(str), "sample:" + sample), index=images.index)


def assign(images: pd.DataFrame, k: int, lockbox_fraction: float, val_fraction: float, seed: int) -> pd.Series:
    """The fold of every image (see the module doc): ``LOCKBOX``, ``0..k-1`` or ``TRAIN_ONLY`` (k = 1)."""
    if k < 1:
        raise CellpipeError(f"cv.folds must hold at least one fold, got {k}")
    if not 0.0 <= lockbox_fraction < 1.0:
        raise CellpipeError(f"cv.lockbox_fraction must be in [0, 1), got {lockbox_fraction}")
    if not 0.0 < val_fraction < 1.0:
        raise CellpipeError(f"cv.val_fraction must be in (0, 1), got {val_fraction}")
    g = pd.DataFrame({"group": groups(images), "cell_type": images["cell_type"].to_numpy()}, index=images.index)
    stratum = g.groupby("group")["cell_type"].agg(lambda s: s.value_counts().index[0])  # a group's majority type
    sizes = g.groupby("group").size()
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    total = np.zeros(k, dtype=np.int64)
    for cell_type in sorted(stratum.unique()):
        order = np.array(sorted(stratum.index[stratum == cell_type]))
        rng.shuffle(order)
        remaining = list(order)
        target, held = lockbox_fraction * sizes[order].sum(), 0
        while held < target and len(remaining) > (2 if k == 1 else 1):
            grp = remaining.pop(0)
            fold_of[grp] = LOCKBOX
            held += sizes[grp]
        if k == 1:  # today's single split: val takes groups up to val_fraction, one group at least stays in train
            target, n = val_fraction * sizes[remaining].sum(), 0
            for grp in remaining:
                fold_of[grp] = TRAIN_ONLY
            for grp in remaining[:-1]:
                if n >= target:
                    break
                fold_of[grp] = 0
                n += sizes[grp]
            continue
        per_type = np.zeros(k, dtype=np.int64)
        for grp in sorted(remaining, key=lambda x: -sizes[x]):  # stable: equal sizes keep the shuffled order
            fold = int(np.lexsort((np.arange(k), total, per_type))[0])
            fold_of[grp] = fold
            per_type[fold] += sizes[grp]
            total[fold] += sizes[grp]
    return g["group"].map(fold_of).astype(np.int64)


def fold_ids(data: dict, where: str) -> list[int]:
    """The ``fold`` of each image of a folds COCO file (written by the ``coco`` stage)."""
    out = []
    for im in data.get("images", []):
        fold = im.get("fold")
        if not isinstance(fold, int) or isinstance(fold, bool) or fold < TRAIN_ONLY:
            raise CellpipeError(
                f"image {im.get('file_name', im.get('id'))} has no valid 'fold' (got {fold!r}): not a folds file "
                "written by the coco stage",
                where=where,
            )
        out.append(fold)
    return out


def _part(data: dict, keep) -> dict:
    return {
        **data,
        "images": [im for im in data["images"] if keep(im["id"])],
        "annotations": [a for a in data.get("annotations", []) if keep(a["image_id"])],
    }


def _held(data: dict, fold: int, where: str) -> set:
    folds = fold_ids(data, where)
    held = {im["id"] for im, f in zip(data["images"], folds) if f == fold}
    if not held:
        present = sorted({f for f in folds if f >= 0})
        raise CellpipeError(f"fold {fold} has no images (the file holds folds {present})", where=where)
    return held


def held_out(data: dict, fold: int, where: str) -> dict:
    """The COCO dict of fold ``fold``'s images: the ones model ``fold`` never trains on."""
    held = _held(data, fold, where)
    return _part(data, lambda i: i in held)


def select(data: dict, fold: int, where: str) -> tuple[dict, dict]:
    """(train, val) COCO dicts of model ``fold``: val is fold ``fold``'s images, train every other image."""
    held = _held(data, fold, where)
    if len(held) == len(data["images"]):
        raise CellpipeError(f"fold {fold} holds every image: nothing is left to train on", where=where)
    return _part(data, lambda i: i not in held), _part(data, lambda i: i in held)
