"""Benchmark cases: the public notebooks' formulation vs cellpipe, on the same input.

The references are written here from the public formulation (per-row ``rle_decode`` to
a full mask, per-mask ``rle_encode`` with ``np.diff``, dense IoU by matrix product,
per-mask overlap removal) and deliberately not imported from cellpipe. Each case
returns both results so the runner can check they are identical.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pycocotools import mask as mask_util

from cellpipe import metric, postprocess, rle, submission, tables

H, W = 520, 704
# the competition's thresholds 0.50, 0.55, …, 0.95 (rounded: np.arange's 0.6000000000000001
# would make an IoU of exactly 0.6 count differently from the metric's definition)
THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


# --------------------------------------------------------------------------- references


def ref_rle_decode(s: str, shape=(H, W)) -> np.ndarray:
    toks = s.split()
    starts = np.asarray(toks[0::2], dtype=int) - 1
    lengths = np.asarray(toks[1::2], dtype=int)
    img = np.zeros(shape[0] * shape[1], dtype=bool)
    for lo, n in zip(starts, lengths):
        img[lo : lo + n] = True
    return img.reshape(shape)


def ref_rle_encode(mask: np.ndarray) -> str:
    pixels = np.concatenate([[0], mask.ravel().astype(np.int8), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def ref_iou_score(true_masks: np.ndarray, pred_masks: np.ndarray) -> float:
    t = true_masks.reshape(len(true_masks), -1).astype(np.float32)
    p = pred_masks.reshape(len(pred_masks), -1).astype(np.float32)
    if len(t) == 0 and len(p) == 0:
        return 1.0
    if len(t) == 0 or len(p) == 0:
        return 0.0
    inter = (t @ p.T).astype(np.float64)  # exact integer counts; divide in float64 so that an IoU
    union = t.sum(1)[:, None] + p.sum(1)[None, :] - inter  # of exactly t is not rounded above t
    iou = inter / union
    scores = []
    for th in THRESHOLDS:
        tp = int((iou > th).sum())
        scores.append(tp / (tp + (len(p) - tp) + (len(t) - tp)))
    return float(np.mean(scores))


# --------------------------------------------------------------------------- timing


@dataclass
class Result:
    name: str
    unit: str
    size: int
    ref_s: float
    cellpipe_s: float
    identical: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ref_s / self.cellpipe_s if self.cellpipe_s > 0 else float("inf")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


# --------------------------------------------------------------------------- cases


def decode_coco(df: pd.DataFrame) -> Result:
    """train.csv rows → per-cell area, bbox and COCO RLE."""

    def reference():
        areas, boxes, counts = [], [], []
        for s in df["annotation"]:
            m = ref_rle_decode(s)
            areas.append(int(m.sum()))
            ys, xs = np.where(m)
            boxes.append((int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)))
            counts.append(mask_util.encode(np.asfortranarray(m))["counts"])
        return areas, boxes, counts

    def ours():
        ann, _ = tables.build_tables(df, "", check_images=False)
        return ann

    ref_s, (areas, boxes, counts) = timed(reference)
    our_s, ann = timed(ours)
    same = (
        ann["area"].tolist() == areas
        and list(map(tuple, ann[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].to_numpy().tolist())) == boxes
        and [c.encode() for c in ann["coco_counts"]] == counts
    )
    return Result("decode → COCO (area, bbox, COCO RLE)", "cells", len(df), ref_s, our_s, same)


def plain_decode(df: pd.DataFrame) -> Result:
    """RLE strings → runs (start, length) of every cell."""
    strings = df["annotation"].tolist()

    def reference():
        out = []
        for s in strings:
            toks = s.split()
            out.append((np.asarray(toks[0::2], dtype=np.int64) - 1, np.asarray(toks[1::2], dtype=np.int64)))
        return out

    ref_s, ref = timed(reference)
    our_s, runs = timed(lambda: rle.parse_many(strings, H * W))
    same = np.array_equal(np.concatenate([r[0] for r in ref]), runs.starts) and np.array_equal(
        np.concatenate([r[1] for r in ref]), runs.lengths
    )
    return Result("plain decode (RLE → runs)", "cells", len(df), ref_s, our_s, same)


def label_images(df: pd.DataFrame) -> list[np.ndarray]:
    """Non-overlapping instance label images (1..n) of every image of a train.csv."""
    out = []
    for _, g in df.groupby("id", sort=False):
        runs = rle.parse_many(g["annotation"].tolist(), H * W)
        out.append(rle.label_image(runs, (H, W)))
    return out


def encode(labels: list[np.ndarray]) -> Result:
    """All instance masks of all images → Kaggle RLE strings."""

    def reference():
        out = []
        for lab in labels:
            for k in np.unique(lab[lab > 0]):
                out.append(ref_rle_encode(lab == k))
        return out

    def ours():
        out = []
        for lab in labels:
            out.extend(rle.to_strings(rle.from_label_image(lab)[1]))
        return out

    ref_s, ref = timed(reference)
    our_s, got = timed(ours)
    return Result("encode (masks → RLE)", "cells", len(ref), ref_s, our_s, ref == got)


def perturbed_predictions(df: pd.DataFrame, seed: int = 0) -> dict[str, list[str]]:
    """Realistic predictions: GT cells dropped, added, dilated, eroded and shifted."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    out = {}
    for image_id, g in df.groupby("id", sort=False):
        strings = []
        for s in g["annotation"]:
            u = rng.random()
            if u < 0.1:
                continue  # dropped
            m = ref_rle_decode(s)
            ys, xs = np.nonzero(m)
            y0, y1, x0, x1 = max(ys.min() - 3, 0), min(ys.max() + 4, H), max(xs.min() - 3, 0), min(xs.max() + 4, W)
            crop = m[y0:y1, x0:x1]
            if u < 0.3:
                crop = ndi.binary_dilation(crop)
            elif u < 0.5:
                e = ndi.binary_erosion(crop)
                crop = e if e.any() else crop
            elif u < 0.65:
                crop = np.roll(crop, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
            full = np.zeros((H, W), bool)
            full[y0:y1, x0:x1] = crop
            strings.append(ref_rle_encode(full))
        for _ in range(max(1, len(g) // 20)):  # added false positives
            full = np.zeros((H, W), bool)
            y, x = int(rng.integers(10, H - 10)), int(rng.integers(10, W - 10))
            full[y - 4 : y + 4, x - 5 : x + 5] = True
            strings.append(ref_rle_encode(full))
        out[image_id] = strings
    return out


def metric_case(df: pd.DataFrame, preds: dict[str, list[str]], ref_images: list[str]) -> Result:
    """Competition metric over images from RLE truths and predictions.

    The reference is timed on ``ref_images`` (a stratified subset when large) and scaled
    to all images by their cell counts; both are compared on that subset.
    """
    groups = {k: g["annotation"].tolist() for k, g in df.groupby("id", sort=False)}

    def reference():
        return {
            i: ref_iou_score(
                np.stack([ref_rle_decode(s) for s in groups[i]]),
                np.stack([ref_rle_decode(s) for s in preds[i]]) if preds[i] else np.zeros((0, H, W), bool),
            )
            for i in ref_images
        }

    def ours():
        out = {}
        for i, truth in groups.items():
            t = rle.to_csr(rle.parse_many(truth, H * W), H * W)
            p = rle.to_csr(rle.parse_many(preds[i], H * W, allow_empty=True), H * W)
            out[i] = metric.score_image(t, p).score
        return out

    ref_s, ref = timed(reference)
    our_s, got = timed(ours)
    # scale the subset time to all images by cell count (the dense cost is per cell pair)
    cells = {i: len(groups[i]) + len(preds[i]) for i in groups}
    scale = sum(cells.values()) / sum(cells[i] for i in ref_images)
    same = all(abs(ref[i] - got[i]) <= 1e-9 for i in ref_images)
    note = f"reference timed on {len(ref_images)} images, scaled ×{scale:.1f}" if len(ref_images) < len(groups) else ""
    return Result("metric (MAP-IoU over images)", "images", len(groups), ref_s * scale, our_s, same, note)


def submission_case(preds: dict[str, list[str]], seed: int = 0) -> Result:
    """Overlap removal (higher score wins) + encoding of scored predictions."""
    rng = np.random.default_rng(seed)
    scores = {i: rng.random(len(v)) for i, v in preds.items()}
    min_size = 10

    def reference():
        out = []
        for i, strings in preds.items():
            order = np.argsort(-scores[i], kind="stable")
            used = np.zeros((H, W), bool)
            rows = []
            for k in order:
                m = ref_rle_decode(strings[k]) & ~used
                if m.sum() >= min_size:
                    used |= m
                    rows.append(ref_rle_encode(m))
            out.extend((i, r) for r in rows)
        return out

    def ours():
        out = []
        for i, strings in preds.items():
            inst = rle.to_csr(rle.parse_many(strings, H * W), H * W)
            clean, _ = postprocess.resolve_overlaps(inst, scores[i], min_size)
            out.extend(submission.image_rows(i, clean) if clean.shape[0] else [])
        return out

    ref_s, ref = timed(reference)
    our_s, got = timed(ours)
    return Result("submission (overlaps + encode)", "cells", sum(map(len, preds.values())), ref_s, our_s, ref == got, "")
