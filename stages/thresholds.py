"""Stage ``thresholds``: per-class score thresholds chosen on out-of-fold predictions.

Writes the thresholds for lockbox and test images (chosen on all out-of-fold
predictions) and, per fold k, the ones chosen on the other folds only: those are what
``score --cross-fitted`` applies to fold k's images, so that the out-of-fold score never
uses thresholds chosen on the images it scores. With K = 1 there is no other fold: the
fold's thresholds are its own (``cross_fitted: false``) and the lockbox is the honest score.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import prediction_table, thresholds
from cellpipe.atomic import Outputs
from cellpipe.config import CELL_TYPES
from cellpipe.console import log
from cellpipe.io import write_csv, write_json
from cellpipe.params_file import PARAMS_HELP, load
from cellpipe.scoring import scored_pairs, val_image_list


def run(
    predictions: Path = typer.Option(Path("data/predictions/oof.parquet"), help="out-of-fold detections (ensemble stage)"),
    val: Path = typer.Option(Path("data/coco/folds.json"), help="COCO JSON of the predicted images, each with its 'fold'"),
    truth: Path = typer.Option(Path("data/interim/annotations.parquet"), help="truth: annotations.parquet or a train.csv"),
    out: Path = typer.Option(Path("metrics/thresholds.json"), help="chosen thresholds (final and per fold)"),
    sweep_out: Path = typer.Option(
        Path("metrics/threshold_sweep.csv"), help="out-of-fold score per threshold, a column per class"
    ),
    counts_out: Path = typer.Option(Path("metrics/threshold_counts.csv"), help="TP/FP/FN at IoU 0.5 per threshold"),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    params_ = load(params, "thresholds", "postprocess")
    p, post = params_.thresholds, params_.postprocess
    images = val_image_list(val)
    predicted = prediction_table.read(predictions)
    pairs, _ = scored_pairs(truth, images["image_id"].tolist(), predicted, truth_where=val)
    preds = [pred for pred, _, _ in pairs]
    truths = {pred.image_id: t for pred, t, _ in pairs}
    posts = thresholds.variants(post, p.box_nms_ious, p.min_sizes, p.grows)  # tried per class beside the thresholds
    rows = thresholds.per_image(preds, truths, p.grid, post, default_class=CELL_TYPES[0], posts=posts)
    table = thresholds.aggregate(rows)
    choice = thresholds.choose(table, list(CELL_TYPES), p.fallback, post)
    fold_of = dict(zip(images["image_id"], images["fold"]))
    folds = sorted({fold_of[i] for i in truths})
    cross_fitted = len(folds) > 1
    per_fold = (
        thresholds.cross_fit(rows, fold_of, folds, list(CELL_TYPES), p.fallback, post) if cross_fitted else {folds[0]: choice}
    )
    at_choice = thresholds.sweep_at_choice(table, choice)
    wide = at_choice.pivot(index="threshold", columns="cell_type", values="score").reset_index()
    with Outputs() as outputs:  # the three files are replaced together or not at all
        write_csv(wide.reindex(columns=["threshold", *CELL_TYPES]), outputs(sweep_out))
        write_csv(at_choice.groupby("threshold", as_index=False)[["tp", "fp", "fn"]].sum(), outputs(counts_out))
        write_json(
            {
                "score_threshold": dict(choice.thresholds),
                "scores": predicted.scores,  # what they are thresholds of: the predictions' scores (× maskness² or not)
                "chosen_on": f"out-of-fold predictions of {len(preds)} images ({len(folds)} fold(s))",
                "chosen_on_images": sorted(truths),  # so that a score on these images is labelled in-sample
                "per_fold": {str(k): dict(v.thresholds) for k, v in per_fold.items()},
                "cross_fitted": cross_fitted,
                "postprocess": post.model_dump(),
                # each class's box-NMS IoU, minimum size and growth, chosen with its threshold (and per fold, cross-fitted)
                "postprocess_per_class": {c: dict(v) for c, v in choice.per_class.items()},
                "per_fold_postprocess": {str(k): {c: dict(o) for c, o in v.per_class.items()} for k, v in per_fold.items()},
            },
            outputs(out),
        )
    log(f"thresholds {dict(choice.thresholds)}, per class {dict(choice.per_class)} → {out}")
    for k, v in per_fold.items():
        how = "chosen on the other folds" if cross_fitted else "K=1: chosen on the fold itself"
        log(f"fold {k}: {dict(v.thresholds)} ({how})")
