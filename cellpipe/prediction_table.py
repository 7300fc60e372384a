"""Predictions tables: scored instances as Parquet rows (one per detection).

Columns: ``image_id``, ``label`` (class name), ``score``, ``height``, ``width``,
``rle`` (Kaggle RLE of the raw, possibly overlapping mask). Overlap removal and score
cuts happen downstream (thresholds, score, submit), so they can be tuned without
re-running the model.

An image without detections has no row, so the file also lists every image the
model was run on, with its size, in the Parquet schema metadata (``cellpipe.images``).
That is what lets ``score`` tell "the model found nothing here" from "the model never
saw this image", and lets every consumer use each image's own size.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from cellpipe import rle
from cellpipe.atomic import atomic_path
from cellpipe.errors import CellpipeError
from cellpipe.instances import Instances

COLUMNS = ["image_id", "label", "score", "height", "width", "rle"]
IMAGES_KEY = b"cellpipe.images"
MODEL_KEY = b"cellpipe.model"  # digest of the checkpoint that predicted the file ("" when not known)
# what the score column holds beyond the model's class score ("" when it is that score): a fixed threshold means
# another thing on scores × maskness² (``predict.maskness``), so reports say which
SCORES_KEY = b"cellpipe.scores"


def model_digest(path: str | Path) -> str:
    """The first 16 hex digits of a checkpoint's SHA-256: which model a predictions file came from."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@dataclass
class Predictions:
    """A predictions file: its detections and every image the model was run on."""

    detections: pd.DataFrame
    sizes: dict[str, tuple[int, int]]  # image id -> (height, width), in prediction order
    where: str
    model: str = ""  # digest of the checkpoint that predicted them (``predict``); "" for ensembles and unknown
    scores: str = ""  # what the scores are beyond the class score, e.g. "× maskness^2" (:data:`SCORES_KEY`)

    def select(self, image_ids: Iterable[str]) -> list[Instances]:
        """Per-image predictions of ``image_ids`` (each must have been predicted) at their own size."""
        df = self.detections
        groups = df.groupby("image_id", sort=False).indices
        out = []
        for image_id in image_ids:
            if image_id not in self.sizes:
                raise CellpipeError(f"image {image_id} was not predicted", where=self.where)
            h, w = self.sizes[image_id]
            idx = groups.get(image_id, np.zeros(0, dtype=np.int64))
            sub = df.iloc[idx]
            runs = rle.parse_many(
                sub["rle"].tolist(), h * w, where=self.where, row_names=[f"{image_id} #{k}" for k in range(len(sub))]
            )
            masks = rle.to_csr(runs, h * w) if len(sub) else sp.csr_matrix((0, h * w), dtype=np.float32)
            out.append(Instances(masks, sub["score"].to_numpy(np.float64), sub["label"].to_numpy(str), (h, w), image_id))
        return out


def to_frame(items: Iterable[tuple[str, Instances]], class_names: list[str] | None = None) -> Predictions:
    """Detections of ``(image id, instances)`` pairs, every image listed with its size.

    Labels are class ids (1-based into ``class_names``) from a model, or names already
    (``class_names`` None: instances read back from a predictions file).
    """
    frames, sizes = [], {}
    for image_id, inst in items:
        sizes[image_id] = (int(inst.shape[0]), int(inst.shape[1]))
        strings = rle.to_strings(rle.from_csr(inst.masks))
        frames.append(
            pd.DataFrame(
                {
                    "image_id": image_id,
                    "label": [str(k) for k in inst.labels]
                    if class_names is None
                    else [class_names[int(k) - 1] for k in inst.labels],
                    "score": inst.scores.astype(np.float32),
                    "height": np.int64(inst.shape[0]),
                    "width": np.int64(inst.shape[1]),
                    "rle": strings,
                }
            )
        )
    frames = [f for f in frames if len(f)]
    if frames:
        df = pd.concat(frames, ignore_index=True)
        df = df[df["rle"] != ""].reset_index(drop=True)
    else:
        df = pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(COLUMNS, ["str", "str", "float32", "int64", "int64", "str"])})
    return Predictions(df, sizes, "<memory>")


def write(pred: Predictions, target: str | Path) -> None:
    """Write detections + the image list atomically."""
    table = pa.Table.from_pandas(pred.detections[COLUMNS], preserve_index=False)
    images = [[i, h, w] for i, (h, w) in pred.sizes.items()]
    meta = {**(table.schema.metadata or {}), IMAGES_KEY: json.dumps(images).encode()}
    if pred.model:
        meta[MODEL_KEY] = pred.model.encode()
    if pred.scores:
        meta[SCORES_KEY] = pred.scores.encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)


def read(path: str | Path) -> Predictions:
    """Read a predictions file, checking its columns and that rows and image list agree."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise CellpipeError("predictions table is missing (run the stage that writes it first)", where=where)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise CellpipeError(f"unreadable Parquet ({exc.__class__.__name__})", where=where) from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise CellpipeError(f"predictions table lacks column(s) {', '.join(missing)}", where=where)
    meta = table.schema.metadata or {}
    if IMAGES_KEY not in meta:
        raise CellpipeError("predictions table does not list its images (not written by cellpipe predict)", where=where)
    try:
        sizes = {str(i): (int(h), int(w)) for i, h, w in json.loads(meta[IMAGES_KEY])}
    except (ValueError, TypeError) as exc:
        raise CellpipeError(f"predictions table's image list is malformed ({exc.__class__.__name__})", where=where) from None
    df = table.to_pandas()
    unknown = sorted(set(df["image_id"]) - set(sizes))
    if unknown:
        raise CellpipeError(f"detections of image {unknown[0]} which the image list lacks ({len(unknown)} images)", where=where)
    if len(df):
        expected = np.array([sizes[i] for i in df["image_id"]], dtype=np.int64)
        bad = np.flatnonzero((expected != df[["height", "width"]].to_numpy(np.int64)).any(axis=1))
        if len(bad):
            i = int(bad[0])
            raise CellpipeError(
                f"row {i}: image {df['image_id'].iloc[i]} has size {df['height'].iloc[i]}×"
                f"{df['width'].iloc[i]} but the image list says {sizes[df['image_id'].iloc[i]]}",
                where=where,
            )
    model, scores = (meta.get(key, b"").decode(errors="replace") for key in (MODEL_KEY, SCORES_KEY))
    return Predictions(df, sizes, where, model, scores)


def same_model(preds: Sequence[Predictions]) -> None:
    """Tables that one ``predict`` run wrote together must come from the same checkpoint.

    An interrupted or hand-run ``predict`` could leave a new ``val.parquet`` beside a
    ``test.parquet`` of an older model; read together they would mix two models silently.
    """
    _agree(
        preds,
        lambda t: t.model,
        lambda p, first: (
            f"predicted by another model ({p.model or 'unknown'}) than {first.where} "
            f"({first.model or 'unknown'}): the tables of one fold come from one predict run; rerun it (dvc repro)"
        ),
    )


def same_scores(preds: Sequence[Predictions]) -> str:
    """What the scores of tables merged or concatenated into one are: the same for all of them, or an error.

    Cells of a table scored × maskness² beside cells of one scored without would be ranked and thresholded as
    if their scores meant one thing.
    """
    _agree(
        preds,
        lambda t: t.scores,
        lambda p, first: (
            f"{describe_scores(p.scores)}, but {first.where} has {describe_scores(first.scores)}: "
            "tables with different scores cannot be combined"
        ),
    )
    return preds[0].scores


def _agree(
    preds: Sequence[Predictions], key: Callable[[Predictions], str], message: Callable[[Predictions, Predictions], str]
) -> None:
    """An error naming the first table whose ``key`` differs from the first table's, in ``message(it, first)``."""
    first = preds[0]
    for p in preds[1:]:
        if key(p) != key(first):
            raise CellpipeError(message(p, first), where=p.where)


def describe_scores(scores: str) -> str:
    """A table's ``scores`` in words, for messages."""
    return f"scores {scores}" if scores else "the model's own scores"


@dataclass(frozen=True)
class Alignment:
    """Which images can be scored: in the truth and predicted."""

    scored: list[str]
    without_predictions: list[str]  # truth images the model was not run on
    without_truth: list[str]  # predicted images the truth does not hold

    def warning(self) -> str | None:
        parts = []
        for ids, what in (
            (self.without_predictions, "truth image(s) were not predicted"),
            (self.without_truth, "predicted image(s) are not in the truth"),
        ):
            if ids:
                parts.append(f"{len(ids)} {what} (e.g. {', '.join(ids[:3])})")
        if not parts:
            return None
        return f"scoring the {len(self.scored)} images in both: " + "; ".join(parts)

    def counts(self) -> dict[str, int]:
        """For the metrics file (the scored images are its ``images``)."""
        return {
            "truth_images_not_predicted": len(self.without_predictions),
            "predicted_images_without_truth": len(self.without_truth),
        }


def align(truth_ids: Sequence[str], predicted_ids: Iterable[str], *, truth_where: str, predictions_where: str) -> Alignment:
    """Match truth and prediction ids; an error when they share no image."""
    predicted = list(dict.fromkeys(predicted_ids))
    pset, tset = set(predicted), set(truth_ids)
    scored = [i for i in truth_ids if i in pset]
    if not scored:
        raise CellpipeError(
            f"no image of the truth ({truth_where}: {len(tset)} images, e.g. "
            f"{', '.join(list(truth_ids)[:3]) or 'none'}) was predicted (predicted: {len(pset)} images, "
            f"e.g. {', '.join(predicted[:3]) or 'none'})",
            where=predictions_where,
        )
    return Alignment(scored, [i for i in truth_ids if i not in pset], [i for i in predicted if i not in tset])
