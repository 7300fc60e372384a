"""Truth and predictions side by side, for the stages that score (thresholds, score, visualize)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import scipy.sparse as sp

from cellpipe import coco, prediction_table, rle, tables
from cellpipe.config import PostProcess
from cellpipe.console import log
from cellpipe.errors import CellpipeError
from cellpipe.folds import TRAIN_ONLY
from cellpipe.instances import Instances
from cellpipe.io import read_json, read_parquet
from cellpipe.thresholds import Choice

DUPLICATES_HINT = "--duplicates drop drops them"
DEFAULT_THRESHOLDS = Path("metrics/thresholds.json")
BUILTIN_THRESHOLD = 0.5  # every class, when a model is applied outside a repository


def val_image_list(val: Path) -> pd.DataFrame:
    """image_id / cell_type / height / width / fold of the images a COCO JSON holds out.

    A folds file (coco stage) lists its images with their fold; those only ever trained on
    (K = 1: ``fold`` −1) are left out. A plain COCO file is one held-out set: fold 0.
    """
    data = coco.load_json(val)
    return pd.DataFrame(
        [
            {
                "image_id": coco.image_id(im),
                "cell_type": im.get("cell_type", "cell"),
                "height": im["height"],
                "width": im["width"],
                "fold": int(im.get("fold", 0)),
            }
            for im in data["images"]
            if im.get("fold", 0) != TRAIN_ONLY
        ],
        columns=["image_id", "cell_type", "height", "width", "fold"],
    )


def _truth_table(path: Path, duplicates: str) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return read_parquet(path).rename(columns={"image_id": "id"})
    return tables.read_train_csv(path, duplicates=duplicates, duplicates_hint=DUPLICATES_HINT)


def truth_ids(path: Path, duplicates: str = "error") -> list[str]:
    """Image ids of a truth file (annotations.parquet or train.csv), in file order."""
    return list(dict.fromkeys(_truth_table(path, duplicates)["id"]))


def load_truth(
    path: Path, image_ids: list[str], duplicates: str = "error"
) -> tuple[dict[str, sp.csr_matrix], dict[str, str], dict[str, tuple[int, int]]]:
    """True instances, cell type and (height, width) per image from ``annotations.parquet`` or a ``train.csv``."""
    df = _truth_table(path, duplicates)
    missing = sorted(set(image_ids) - set(df["id"]))
    if missing:
        raise CellpipeError(f"no truth for image {missing[0]} ({len(missing)} missing)", where=str(path))
    df = df[df["id"].isin(set(image_ids))]
    truths, types, sizes = {}, {}, {}
    for image_id, g in df.groupby("id", sort=False):
        h, w = int(g["height"].iloc[0]), int(g["width"].iloc[0])
        runs = rle.parse_many(g["annotation"].tolist(), h * w, where=str(path))
        truths[image_id] = rle.to_csr(runs, h * w)
        types[image_id] = str(g["cell_type"].iloc[0])
        sizes[image_id] = (h, w)
    return truths, types, sizes


@dataclass
class Truth:
    """True instances, cell type and (height, width) of some images, read once for several scorings."""

    instances: dict[str, sp.csr_matrix]
    types: dict[str, str]
    sizes: dict[str, tuple[int, int]]
    where: str


def read_truth(path: Path, image_ids: list[str], duplicates: str = "error") -> Truth:
    """:class:`Truth` of ``image_ids`` from ``annotations.parquet`` or a ``train.csv`` (an id it lacks is an error)."""
    return Truth(*load_truth(path, image_ids, duplicates), str(path))


def pairs(
    truth: Truth, truth_ids_: list[str], pred: prediction_table.Predictions, *, truth_where: Path | str,
    chosen: bool = False,
) -> tuple[list[tuple[Instances, sp.csr_matrix, str]], prediction_table.Alignment]:  # fmt: skip
    """(predictions, truth, cell type) of every image of ``truth_ids_`` that was predicted.

    Ids in only one of them are counted and reported as a warning; none in common is an
    error; an image whose predictions and truth differ in size is an error. ``chosen``:
    ``truth_ids_`` is a handful picked from the predicted images (overlays), so the
    predictions of the others are no mismatch; a chosen image that was not predicted is.
    """
    wanted = set(truth_ids_)
    predicted = [i for i in pred.sizes if i in wanted] if chosen else pred.sizes
    alignment = prediction_table.align(truth_ids_, predicted, truth_where=str(truth_where), predictions_where=pred.where)
    if warning := alignment.warning():
        log(f"[yellow]warning: {warning}[/yellow]")
    out = []
    for p in pred.select(alignment.scored):
        if p.shape != truth.sizes[p.image_id]:
            raise CellpipeError(
                f"image {p.image_id} was predicted at {p.shape[1]}×{p.shape[0]} but the truth is "
                f"{truth.sizes[p.image_id][1]}×{truth.sizes[p.image_id][0]} (width×height)",
                where=pred.where,
            )
        out.append((p, truth.instances[p.image_id], truth.types[p.image_id]))
    return out, alignment


def scored_pairs(
    truth: Path, truth_ids_: list[str], predictions: Path | prediction_table.Predictions, *, truth_where: Path,
    duplicates: str = "error", chosen: bool = False,
) -> tuple[list[tuple[Instances, sp.csr_matrix, str]], prediction_table.Alignment]:  # fmt: skip
    """:func:`pairs` of a predictions file (or table read already) and a truth file (the truth read for the
    predicted images only)."""
    pred = predictions if isinstance(predictions, prediction_table.Predictions) else prediction_table.read(predictions)
    scored = [i for i in truth_ids_ if i in pred.sizes]
    return pairs(read_truth(truth, scored, duplicates), truth_ids_, pred, truth_where=truth_where, chosen=chosen)


def read_thresholds(path: Path, default: float | None = None) -> Choice:
    """The ``thresholds`` stage's choice for lockbox and test images: per-class thresholds and post-processing.

    Without the file: ``default`` for every class (and no post-processing beyond overlap
    removal) when a default is given or the path is the default one (a model applied
    outside a repository: :data:`BUILTIN_THRESHOLD`), else an error.
    """
    if default is None and path == DEFAULT_THRESHOLDS:
        default = BUILTIN_THRESHOLD
    if not path.is_file():
        if default is None:
            raise CellpipeError("thresholds file is missing", where=str(path))
        log(f"[yellow]{path} not found: score threshold {default} for every class[/yellow]")
        return Choice({}, PostProcess(), {}, default)
    data = read_json(path, "thresholds file")
    if not isinstance(data, dict) or not isinstance(data.get("score_threshold"), dict):
        raise CellpipeError("not a thresholds file (no 'score_threshold' mapping)", where=str(path))
    scores = data.get("scores")
    if scores is not None and not isinstance(scores, str):
        raise CellpipeError(f"its 'scores' must be a string (got {type(scores).__name__})", where=str(path))
    try:
        post = PostProcess.model_validate(data.get("postprocess", {}))
        per_class = {c: dict(v) for c, v in (data.get("postprocess_per_class") or {}).items()}
        for overrides in per_class.values():  # each class's post-processing must be a valid one
            PostProcess.model_validate({**post.model_dump(), **overrides})
    except (ValueError, TypeError) as exc:
        raise CellpipeError(f"its postprocess is not valid ({str(exc).splitlines()[0]})", where=str(path)) from None
    return Choice(data["score_threshold"], post, per_class, BUILTIN_THRESHOLD if default is None else default, scores)


def check_scores(choice: Choice, thresholds_file: Path, pred: prediction_table.Predictions) -> None:
    """Thresholds apply to the kind of scores they were chosen on (a file without ``scores`` is not checked)."""
    if choice.scores is not None and choice.scores != pred.scores:
        raise CellpipeError(
            f"chosen on {prediction_table.describe_scores(choice.scores)}, but {pred.where} has "
            f"{prediction_table.describe_scores(pred.scores)} (predict.maskness or predict.scores differs): choose the "
            "thresholds on predictions made as these were",
            where=str(thresholds_file),
        )


def read_fold_thresholds(path: Path) -> tuple[dict[int, Choice], bool]:
    """The thresholds file's per-fold choices (for fold k's images) and whether they are cross-fitted."""
    data = read_json(path, "thresholds file")
    per_fold = data.get("per_fold") if isinstance(data, dict) else None
    if not isinstance(per_fold, dict):
        raise CellpipeError(
            "no 'per_fold' thresholds (written by the thresholds stage from out-of-fold predictions)", where=str(path)
        )
    base = read_thresholds(path)
    posts = data.get("per_fold_postprocess") or {}
    return {
        int(k): Choice(v, base.post, {c: dict(o) for c, o in (posts.get(str(k)) or {}).items()}, base.fallback, base.scores)
        for k, v in per_fold.items()
    }, bool(data.get("cross_fitted"))


def thresholds_images(path: Path) -> set[str]:
    """The images whose predictions the thresholds file's thresholds were chosen on (empty: unknown)."""
    if not path.is_file():
        return set()
    data = read_json(path, "thresholds file")
    return set(data.get("chosen_on_images", [])) if isinstance(data, dict) else set()
