"""Stage ``ensemble``: the fold models' predictions → out-of-fold, lockbox and test predictions.

Out of fold: each image of the folds file, predicted by the one model that never trained
on it. Lockbox and test: the K models' detections combined (:mod:`cellpipe.ensemble`);
with K = 1 the one model's, unchanged.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cellpipe import ensemble, prediction_table
from cellpipe.atomic import Outputs
from cellpipe.console import log
from cellpipe.params_file import PARAMS_HELP, load


def run(
    folds_dir: Path = typer.Option(
        Path("data/predictions/folds"), help="folder of the predict stages' fold<K>/{val,lockbox,test}.parquet"
    ),
    oof_out: Path = typer.Option(Path("data/predictions/oof.parquet"), help="out-of-fold detections of every fold"),
    lockbox_out: Path = typer.Option(Path("data/predictions/lockbox.parquet"), help="the ensemble's lockbox detections"),
    test_out: Path = typer.Option(Path("data/predictions/test.parquet"), help="the ensemble's test detections"),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    p = load(params, "cv", "ensemble")
    k = len(p.cv.folds)
    fold_dirs = [folds_dir / f"fold{f}" for f in p.cv.folds]
    tables = {(d, name): prediction_table.read(d / f"{name}.parquet") for d in fold_dirs for name in ("val", "lockbox", "test")}
    for d in fold_dirs:  # each fold's three tables come from one predict run of one model
        prediction_table.same_model([tables[d, name] for name in ("val", "lockbox", "test")])
    with Outputs() as outputs:  # the three tables are replaced together or not at all
        oof = ensemble.concat([tables[d, "val"] for d in fold_dirs])
        prediction_table.write(oof, outputs(oof_out))
        log(f"out of fold: {len(oof.sizes)} images from {k} fold model(s) → {oof_out}")
        for name, out in (("lockbox", lockbox_out), ("test", test_out)):
            combined = ensemble.combine([tables[d, name] for d in fold_dirs], p.ensemble.iou, p.ensemble.min_agreement)
            prediction_table.write(combined, outputs(out))
            log(f"{name}: {len(combined.detections)} detections on {len(combined.sizes)} images, {k} model(s) → {out}")
