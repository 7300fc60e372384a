"""Stage ``score``: predictions scored with the competition metric → small metrics JSON and tables.

The DVC stage writes the six named reports of :data:`cellpipe.reports.PIPELINE` in one
command (``--reports-dir metrics``): the out-of-fold predictions with cross-fitted
thresholds (the headline), with the thresholds chosen on those very images (labelled
in-sample) and at a fixed 0.5, and the lockbox with the fold ensemble, the same at 0.5
and fold 0's model alone. One command, not six stages: the reports share their inputs
(the truth, the thresholds, the folds), so the truth and each predictions table are read
once and scored six ways in seconds, where six stages would each start Python and read
them again; and the six describe one model and one set of thresholds, so they are
replaced together.

By hand, ``cellpipe score --predictions … --truth …`` makes one report from its flags:
any predictions table against any ``train.csv``-format truth.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table

from cellpipe import metric, prediction_table, reports
from cellpipe.atomic import Outputs
from cellpipe.console import console, log
from cellpipe.errors import CellpipeError
from cellpipe.io import write_csv, write_json
from cellpipe.scoring import (
    check_scores,
    pairs,
    read_fold_thresholds,
    read_thresholds,
    read_truth,
    scored_pairs,
    thresholds_images,
    truth_ids,
    val_image_list,
)


class Duplicates(StrEnum):
    error = "error"
    drop = "drop"


def run(
    predictions: Path = typer.Option(Path("data/predictions/oof.parquet"), help="detections to score"),
    val: Path = typer.Option(Path("data/coco/folds.json"), help="COCO JSON listing the images to score"),
    truth: Path = typer.Option(Path("data/interim/annotations.parquet"), help="truth: annotations.parquet or a train.csv"),
    thresholds_file: Path = typer.Option(
        Path("metrics/thresholds.json"), "--thresholds", help="per-class score thresholds (thresholds stage)"
    ),
    cross_fitted: bool = typer.Option(
        False, "--cross-fitted", help="each image gets the thresholds of its fold (chosen on the other folds: thresholds stage)"
    ),
    fixed_threshold: float | None = typer.Option(None, min=0.0, max=1.0, help="one score threshold for every class instead"),
    out: Path = typer.Option(Path("metrics/oof.json"), help="metrics JSON (DVC metrics)"),
    per_image_out: Path | None = typer.Option(None, help="score per image and threshold (CSV)"),
    per_iou_out: Path | None = typer.Option(None, help="score per IoU threshold, per class (CSV, plots)"),
    per_fold_out: Path | None = typer.Option(None, help="score per fold, per class (CSV, plots; images of --val with a fold)"),
    all_truth_images: bool = typer.Option(
        False, "--all-truth-images", help="score every image of the truth file instead of the images of --val"
    ),
    duplicates: Duplicates = typer.Option(
        Duplicates.error,
        help="rows of a train.csv truth repeating an earlier row's image and mask (the real train.csv has 15): error | drop",
    ),
    reports_dir: Path | None = typer.Option(
        None, help="write the pipeline's six named reports into this folder (the DVC stage) instead of one report"
    ),
    lockbox: Path = typer.Option(Path("data/coco/lockbox.json"), help="with --reports-dir: COCO JSON of the lockbox images"),
    lockbox_predictions: Path = typer.Option(
        Path("data/predictions/lockbox.parquet"), help="with --reports-dir: the fold ensemble's lockbox detections"
    ),
    fold0_lockbox: Path = typer.Option(
        Path("data/predictions/folds/fold0/lockbox.parquet"), help="with --reports-dir: model 0's lockbox detections"
    ),
) -> None:
    if reports_dir is not None:
        files = {"oof": predictions, "lockbox": lockbox_predictions, "lockbox_fold0": fold0_lockbox}
        pipeline_reports(files, {"folds": val, "lockbox": lockbox}, truth, thresholds_file, reports_dir)
        return
    outs = {"json": out, "per_image": per_image_out, "per_iou": per_iou_out, "per_fold": per_fold_out}
    one_report(predictions, val, truth, thresholds_file, cross_fitted, fixed_threshold, all_truth_images, duplicates.value, outs)


def one_report(
    predictions: Path,
    val: Path,
    truth: Path,
    thresholds_file: Path,
    cross_fitted: bool,
    fixed_threshold: float | None,
    all_truth_images: bool,
    duplicates: str,
    outs: dict[str, Path | None],
) -> None:
    """One report from the command-line flags (by hand)."""
    if cross_fitted and (all_truth_images or fixed_threshold is not None):
        raise CellpipeError("--cross-fitted needs --val with folds, and no --fixed-threshold")
    rule: reports.Rule = "fixed" if fixed_threshold is not None else "cross-fitted" if cross_fitted else "chosen"
    choice = read_thresholds(thresholds_file)
    listed = None if all_truth_images else val_image_list(val)
    ids = truth_ids(truth, duplicates) if listed is None else listed["image_id"].tolist()
    table = prediction_table.read(predictions)
    fixed = reports.FIXED if fixed_threshold is None else fixed_threshold
    if not ids:  # an empty lockbox (cv.lockbox_fraction: 0): nothing to score, said so
        result = reports.empty(rule, str(thresholds_file), f"{val} lists no images", fixed=fixed, scores=table.scores)
        with Outputs() as out:
            write_results(outs, result, out)
        log(f"[yellow]{val} lists no images: nothing scored[/yellow] → {outs['json']}")
        return
    check_scores(choice, thresholds_file, table)
    scored, alignment = scored_pairs(truth, ids, table, truth_where=truth if all_truth_images else val, duplicates=duplicates)
    per_fold, honest = read_fold_thresholds(thresholds_file) if rule == "cross-fitted" else (None, False)
    result = reports.score(
        scored, alignment, rule=rule, choice=choice, thresholds_source=str(thresholds_file),
        chosen_on=thresholds_images(thresholds_file), per_fold=per_fold, cross_fitted=honest,
        fold_of={} if listed is None else dict(zip(listed["image_id"], listed["fold"])),
        fixed=fixed, scores=table.scores,
    )  # fmt: skip
    with Outputs() as out:  # every file of the report is replaced together or not at all
        write_results(outs, result, out)
    show(result, outs["json"])


def pipeline_reports(
    predictions: dict[str, Path], images: dict[str, Path], truth: Path, thresholds_file: Path, folder: Path
) -> None:
    """The six reports of :data:`cellpipe.reports.PIPELINE`: the truth and each table read once, all written together."""
    choice = read_thresholds(thresholds_file)
    per_fold, honest = read_fold_thresholds(thresholds_file)
    chosen_on = thresholds_images(thresholds_file)
    listed = {name: val_image_list(path) for name, path in images.items()}
    wanted = sorted({i for table in listed.values() for i in table["image_id"]})
    tables = {name: prediction_table.read(path) for name, path in predictions.items()}
    for table in tables.values():
        check_scores(choice, thresholds_file, table)
    the_truth = read_truth(truth, [i for i in wanted if any(i in t.sizes for t in tables.values())])
    results = {}
    for spec in reports.PIPELINE:
        images_ = listed[spec.images]
        ids = images_["image_id"].tolist()
        if not ids:
            note = f"{images[spec.images]} lists no images"
            results[spec] = reports.empty(spec.rule, str(thresholds_file), note, scores=tables[spec.predictions].scores)
            continue
        scored, alignment = pairs(the_truth, ids, tables[spec.predictions], truth_where=images[spec.images])
        results[spec] = reports.score(
            scored, alignment, rule=spec.rule, choice=choice, thresholds_source=str(thresholds_file),
            chosen_on=chosen_on, per_fold=per_fold, cross_fitted=honest,
            fold_of=dict(zip(images_["image_id"], images_["fold"])), scores=tables[spec.predictions].scores,
        )  # fmt: skip
    with Outputs() as out:  # the six reports describe one model and one set of thresholds: replaced together
        for spec, result in results.items():
            paths = {"json": folder / f"{spec.name}.json", **{t: folder / f"{spec.name}_{t}.csv" for t in spec.tables}}
            write_results(paths, result, out)
    for spec, result in results.items():
        log(f"{spec.name}: MAP-IoU {result.summary['map_iou']} over {result.summary['images']} images "
            f"({result.summary['thresholds']})")  # fmt: skip
    show(results[reports.PIPELINE[0]], folder / f"{reports.PIPELINE[0].name}.json")


def write_results(paths: dict[str, Path | None], result: reports.Result, out: Outputs) -> None:
    """The report's JSON and the tables asked for, into ``out``'s set of outputs."""
    tables = {"per_image": result.per_image, "per_iou": result.per_iou, "per_fold": result.per_fold}
    write_json(result.summary, out(paths["json"]))
    for name, table in tables.items():
        if paths.get(name) is not None and table is not None:
            write_csv(table, out(paths[name]))


def show(result: reports.Result, out: Path) -> None:
    """The per-class × per-IoU-threshold table on the console."""
    summary = result.summary
    if summary["map_iou"] is None:
        return
    table = Table(title=f"MAP-IoU {summary['map_iou']:.4f} over {summary['images']} images ({summary['thresholds']})")
    table.add_column("class")
    for t in metric.THRESHOLDS[::2]:
        table.add_column(f"{t:.2f}")
    table.add_column("mean")
    per = result.per_image.groupby("cell_type")[[f"t{t:.2f}" for t in metric.THRESHOLDS]].mean()
    for cls, row in per.iterrows():
        table.add_row(str(cls), *[f"{row[f't{t:.2f}']:.3f}" for t in metric.THRESHOLDS[::2]], f"{summary['per_class'][cls]:.3f}")
    console.print(table)
    log(f"→ {out}")
