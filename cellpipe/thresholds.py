"""Per-class score thresholds, chosen on out-of-fold predictions (cross-fitted).

The competition penalises false positives and negatives alike, and the best score cut
differs by cell type (crowded shsy5y and faint astro need lower ones). Each image is
assigned the class that dominates its confident detections (score-weighted vote, see
:mod:`cellpipe.postprocess`; on test images the true type is unknown, so val uses the
same rule), and for each class the
threshold that maximises the mean score of its images is chosen from a grid.

Choosing thresholds on the images that are then scored inflates the score. With K folds
the thresholds applied to fold k's images are chosen on the other folds' out-of-fold
predictions (:func:`cross_fit`); the thresholds for lockbox and test images are chosen
on all out-of-fold predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import scipy.sparse as sp

from cellpipe import metric, postprocess
from cellpipe.config import PostProcess
from cellpipe.errors import CellpipeError
from cellpipe.instances import Instances

SETTINGS = ("box_nms_iou", "min_size", "grow")  # post-processing chosen per class, beside the score threshold


@dataclass(frozen=True)
class Choice:
    """Per-class score thresholds and post-processing: what the ``thresholds`` stage chose.

    ``per_class`` overrides fields of ``post`` (:data:`SETTINGS`) for an image of that
    class; a class without a threshold gets ``fallback``. ``scores``: what the scores they were chosen on are
    (a predictions table's ``scores``; None: not recorded), since a threshold chosen on scores × maskness² means
    another thing on the model's own.
    """

    thresholds: Mapping[str, float]
    post: PostProcess
    per_class: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    fallback: float = 0.5
    scores: str | None = None

    def threshold(self, cls: str) -> float:
        return float(self.thresholds.get(cls, self.fallback))

    def post_for(self, cls: str) -> PostProcess:
        overrides = self.per_class.get(cls)
        return self.post.model_copy(update=dict(overrides)) if overrides else self.post

    def fixed(self, threshold: float) -> Choice:
        """Every class at ``threshold``, with the shared post-processing (nothing chosen per class)."""
        return Choice({}, self.post, {}, threshold, self.scores)


def apply(pred: Instances, threshold: float, pp: PostProcess) -> sp.csr_matrix:
    """Final non-overlapping instances of an image at a score threshold."""
    return postprocess.final(pred.masks, pred.scores, threshold, pp, pred.shape[1])


def voted_class(pred: Instances, pp: PostProcess, default_class: str) -> str:
    return postprocess.image_class(pred.labels, pred.scores, default_class, pp.vote_min_score)


def apply_chosen(pred: Instances, choice: Choice, default_class: str) -> tuple[str, sp.csr_matrix]:
    """The image's voted class and its final instances under that class's threshold and post-processing."""
    cls = voted_class(pred, choice.post, default_class)
    return cls, apply(pred, choice.threshold(cls), choice.post_for(cls))


def variants(
    pp: PostProcess, box_nms_ious: Sequence[float] = (), min_sizes: Sequence[int] = (), grows: Sequence[int] = ()
) -> list[PostProcess]:
    """The post-processings tried per class: ``pp`` with each box-NMS IoU × minimum size × growth (empty: ``pp``'s
    own)."""
    return [
        pp.model_copy(update={"box_nms_iou": float(u), "min_size": int(m), "grow": int(g)})
        for u in (box_nms_ious or [pp.box_nms_iou])
        for m in (min_sizes or [pp.min_size])
        for g in (grows or [pp.grow])
    ]


def per_image(
    preds: Sequence[Instances],
    truths: Mapping[str, sp.csr_matrix],
    grid: Sequence[float],
    pp: PostProcess,
    default_class: str,
    posts: Sequence[PostProcess] | None = None,
) -> pd.DataFrame:
    """Score of every image at every threshold of the grid (× every post-processing of ``posts``), with its
    voted class and TP/FP/FN at IoU 0.5. The class is voted with ``pp``."""
    groups: dict[str, tuple[PostProcess, list[int]]] = {}  # the growths of each otherwise equal post-processing
    for post in posts or [pp]:
        base = post.model_copy(update={"grow": 0})
        groups.setdefault(base.model_dump_json(), (base, []))[1].append(int(post.grow))
    rows = []
    for p in preds:
        cls = voted_class(p, pp, default_class)
        truth = truths[p.image_id]
        for base, grows in groups.values():
            for t in grid:
                clean = apply(p, t, base)
                for g, cells in zip(grows, postprocess.grow_each(clean, p.shape[1], grows)):  # one transform for all
                    s = metric.score_image(truth, cells)
                    rows.append(
                        {
                            "image_id": p.image_id,
                            "cell_type": cls,
                            "threshold": round(float(t), 4),
                            "box_nms_iou": float(base.box_nms_iou),
                            "min_size": int(base.min_size),
                            "grow": g,
                            "score": s.score,
                            "tp": int(s.tp[0]),
                            "fp": int(s.fp[0]),
                            "fn": int(s.fn[0]),
                        }
                    )
    return pd.DataFrame(rows, columns=["image_id", "cell_type", "threshold", *SETTINGS, "score", "tp", "fp", "fn"])


KEYS = ["cell_type", "threshold", *SETTINGS]


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean score per (image class, threshold, post-processing), with TP/FP/FN at IoU 0.5 summed."""
    return rows.groupby(KEYS, as_index=False).agg(
        score=("score", "mean"), tp=("tp", "sum"), fp=("fp", "sum"), fn=("fn", "sum"), images=("image_id", "nunique")
    )


def cross_fit(
    rows: pd.DataFrame, fold_of: Mapping[str, int], folds: Sequence[int], classes: Sequence[str], fallback: float,
    pp: PostProcess | None = None,
) -> dict[int, Choice]:  # fmt: skip
    """For each fold k, the choice made on the *other* folds' images only (``rows``: :func:`per_image`).

    Applied to fold k's images, they score those images out of sample: neither the
    model nor the thresholds saw them. A class absent from the other folds gets ``fallback``.
    """
    fold = rows["image_id"].map(fold_of)
    if fold.isna().any():
        missing = rows.loc[fold.isna(), "image_id"].iloc[0]
        raise CellpipeError(f"image {missing} has no fold")
    return {int(k): choose(aggregate(rows[fold != k]), classes, fallback, pp) for k in folds}


def choose(table: pd.DataFrame, classes: Sequence[str], fallback: float, pp: PostProcess | None = None) -> Choice:
    """Best threshold and post-processing per class; ``fallback`` for classes without val images.

    Among ties: the lowest threshold, then the least suppression (the highest box-NMS IoU),
    then the smallest minimum size, then the least growth.
    """
    pp = pp or PostProcess()
    thresholds, per_class = {}, {}
    for c in classes:
        sub = table[table["cell_type"] == c]
        if sub.empty:
            thresholds[c] = fallback
            continue
        best = sub[sub["score"] >= sub["score"].max() - 1e-12]
        pick = best.sort_values(["threshold", "box_nms_iou", "min_size", "grow"], ascending=[True, False, True, True]).iloc[0]
        thresholds[c] = float(pick["threshold"])
        per_class[c] = {"box_nms_iou": float(pick["box_nms_iou"]), "min_size": int(pick["min_size"]), "grow": int(pick["grow"])}
    return Choice(thresholds, pp, per_class, fallback)


def sweep_at_choice(table: pd.DataFrame, choice: Choice) -> pd.DataFrame:
    """Each class's score per threshold at the post-processing chosen for it (for the sweep plot)."""
    keep = []
    for c, sub in table.groupby("cell_type"):
        post = choice.post_for(str(c))
        keep.append(
            sub[(sub["box_nms_iou"] == post.box_nms_iou) & (sub["min_size"] == post.min_size) & (sub["grow"] == post.grow)]
        )
    return pd.concat(keep) if keep else table.iloc[:0]
