"""Score reports: predictions scored with the competition metric under one way of choosing thresholds.

A report scores a set of images (out of fold, the lockbox) with one predictions table
and one threshold rule, and says in its ``thresholds`` label where the thresholds came
from and whether they were chosen on the scored images (``thresholds_in_sample``):

- ``cross-fitted``: each image gets the thresholds of its fold, chosen on the other
  folds (the ``thresholds`` stage's ``per_fold``); with K = 1 these were chosen on the
  fold itself and the report says so;
- ``chosen``: the final thresholds (chosen on all out-of-fold predictions): honest for
  the lockbox, in-sample for the out-of-fold images themselves;
- ``fixed``: one threshold for every class; on scores that are not the model's own (× maskness², the table's
  ``scores``) the label says so, since the same threshold then keeps fewer cells.

:data:`PIPELINE` names the six reports the ``score`` stage writes; :func:`score` makes
any report (``cellpipe score`` by hand makes one from its flags).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import scipy.sparse as sp

from cellpipe import metric, thresholds
from cellpipe.config import CELL_TYPES
from cellpipe.errors import CellpipeError
from cellpipe.instances import Instances
from cellpipe.prediction_table import Alignment

Rule = Literal["cross-fitted", "chosen", "fixed"]


@dataclass(frozen=True)
class Spec:
    """One report of the pipeline: which predictions, which images, which threshold rule, which tables."""

    name: str
    predictions: Literal["oof", "lockbox", "lockbox_fold0"]
    images: Literal["folds", "lockbox"]
    rule: Rule
    tables: tuple[str, ...] = ()  # of "per_image", "per_iou", "per_fold"
    doc: str = ""


PIPELINE: tuple[Spec, ...] = (
    Spec("oof", "oof", "folds", "cross-fitted", ("per_image", "per_iou", "per_fold"),
         "the headline: every training image scored by a model and thresholds that never saw it"),
    Spec("oof_in_sample", "oof", "folds", "chosen", (), "thresholds chosen on these images: only to show the inflation"),
    Spec("oof_fixed", "oof", "folds", "fixed", ("per_image",), "every class at 0.5"),
    Spec("lockbox", "lockbox", "lockbox", "chosen", ("per_image", "per_iou"), "the fold ensemble on images no step saw"),
    Spec("lockbox_fixed", "lockbox", "lockbox", "fixed", ("per_image",), "the ensemble at 0.5 for every class"),
    Spec("lockbox_fold0", "lockbox_fold0", "lockbox", "chosen", ("per_iou",), "model 0 alone"),
)  # fmt: skip
FIXED = 0.5


@dataclass
class Result:
    """A report's metrics JSON and its tables."""

    summary: dict
    per_image: pd.DataFrame
    per_iou: pd.DataFrame
    per_fold: pd.DataFrame | None


def empty(rule: Rule, source: str, note: str, *, fixed: float = FIXED, scores: str = "") -> Result:
    """The report of a set with no images (an empty lockbox): said, never a 0; labelled with the thresholds it
    would have used (``fixed`` for every class, or those of ``source``)."""
    label = fixed_label(fixed, scores) if rule == "fixed" else f"chosen on {source}"
    table = pd.DataFrame(columns=["iou_threshold", "all", *CELL_TYPES])
    return Result({"map_iou": None, "images": 0, "thresholds": label, "note": note}, table, table, table)


def score(
    pairs: Sequence[tuple[Instances, sp.csr_matrix, str]],
    alignment: Alignment,
    *,
    rule: Rule,
    choice: thresholds.Choice,
    thresholds_source: str,
    chosen_on: set[str],
    per_fold: Mapping[int, thresholds.Choice] | None = None,
    cross_fitted: bool = False,
    fold_of: Mapping[str, int] | None = None,
    fixed: float = FIXED,
    scores: str = "",
) -> Result:
    """Score ``(predictions, truth, cell type)`` pairs under ``rule``.

    ``choice``: the final per-class thresholds and post-processing; ``chosen_on``: the
    images they were chosen on (a score on those is labelled in-sample); ``per_fold`` /
    ``cross_fitted``: the choice for each fold's images and whether it came from the other folds;
    ``fold_of``: each image's fold (out-of-fold images; a per-fold table and ``per_fold``
    scores come with it); ``scores``: what the table's scores are beyond the class score (its ``scores``).
    """
    fold_of = fold_of or {}
    label, in_sample = _label(rule, alignment, thresholds_source, chosen_on, cross_fitted, fixed, scores)
    if rule == "cross-fitted" and (per_fold is None or not fold_of):
        raise CellpipeError("cross-fitted thresholds need images with folds and the thresholds stage's per_fold")
    rows, voted = [], []
    for pred, true, cell_type in pairs:
        if rule == "fixed":
            use = choice.fixed(fixed)
        elif rule == "cross-fitted":
            fold = fold_of[pred.image_id]
            if fold not in per_fold:
                raise CellpipeError(f"no thresholds for fold {fold} (image {pred.image_id})", where=thresholds_source)
            use = per_fold[fold]
        else:
            use = choice
        image_type, final = thresholds.apply_chosen(pred, use, CELL_TYPES[0])
        voted.append(image_type)
        rows.append((pred.image_id, cell_type, true, final))
    report = metric.evaluate(rows)
    # which type each image was given (it chose the image's thresholds): a wrong type and a weak model look alike
    report.per_image.insert(2, "voted_type", voted)
    right = report.per_image["voted_type"] == report.per_image["cell_type"]
    # the voted cell type picks each image's threshold; on test images it is all there is
    summary = {
        **report.to_dict(),
        "thresholds": label,
        "thresholds_in_sample": bool(in_sample),
        "cell_type_vote_accuracy": round(float(right.mean()), 6),
        "cell_type_vote_accuracy_per_type": {
            str(k): round(float(v), 6) for k, v in right.groupby(report.per_image["cell_type"]).mean().items()
        },
        **alignment.counts(),
    }
    table = None
    if fold_of and min(fold_of.values()) >= 0:  # folds, not the lockbox
        by_fold = report.per_image.assign(fold=report.per_image["image_id"].map(fold_of))
        summary["per_fold"] = {str(k): round(float(v), 6) for k, v in by_fold.groupby("fold")["score"].mean().items()}
        table = _per_fold_table(by_fold)
    return Result(summary, report.per_image, _per_iou_table(report), table)


def fixed_label(threshold: float, scores: str = "") -> str:
    """The ``thresholds`` label of a report at one threshold for every class, on scores described by ``scores``."""
    return f"fixed {threshold} for every class" + (f", on scores {scores}" if scores else "")


def _label(
    rule: Rule, alignment: Alignment, source: str, chosen_on: set[str], cross_fitted: bool, fixed: float, scores: str
) -> tuple[str, int]:
    """The report's ``thresholds`` label and how many scored images chose its thresholds."""
    if rule == "fixed":
        return fixed_label(fixed, scores), 0
    if rule == "cross-fitted":
        if cross_fitted:
            return "cross-fitted: each fold's images with thresholds chosen on the other folds", 0
        return "in-sample: K=1, the fold's thresholds were chosen on these images", len(alignment.scored)
    in_sample = len(set(alignment.scored) & chosen_on)
    if in_sample:
        return f"in-sample: thresholds chosen on the predictions of {in_sample} of these images", in_sample
    return f"out-of-sample: thresholds chosen on other images ({source})", 0


def _per_fold_table(by_fold: pd.DataFrame) -> pd.DataFrame:
    wide = by_fold.pivot_table(index="fold", columns="cell_type", values="score", aggfunc="mean")
    table = pd.DataFrame({"fold": wide.index.astype(int), "all": by_fold.groupby("fold")["score"].mean().to_numpy()})
    for cls in CELL_TYPES:
        table[cls] = wide[cls].to_numpy() if cls in wide.columns else float("nan")
    return table


def _per_iou_table(report: metric.Report) -> pd.DataFrame:
    per_class = report.per_threshold(by_class=True).T
    table = pd.DataFrame(
        {"iou_threshold": [float(c[1:]) for c in per_class.index], "all": report.per_threshold().iloc[0].to_numpy()}
    )
    for cls in CELL_TYPES:
        table[cls] = per_class[cls].to_numpy() if cls in per_class.columns else float("nan")
    return table
