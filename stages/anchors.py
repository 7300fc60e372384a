"""Stage ``anchors``: how well the model's anchors fit the training cells, and sizes that would fit better.

A report, not an input of training: choose ``model.anchor_sizes`` from it (or keep
them) and see the share of cells with a good anchor in ``dvc metrics show``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from cellpipe import anchors, coco
from cellpipe.config import Model
from cellpipe.console import console, log
from cellpipe.images import input_size
from cellpipe.io import write_json
from cellpipe.params_file import PARAMS_HELP, load


def model_scale_boxes(data: dict, mcfg: Model) -> tuple[np.ndarray, np.ndarray]:
    """(x0, y0, x1, y1) boxes at the model's input scale (its cell type's), and each box's category name."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    images = {im["id"]: im for im in data["images"]}
    boxes, labels = [], []
    for a in data["annotations"]:
        im = images[a["image_id"]]
        h, w = int(im["height"]), int(im["width"])
        name = names.get(a["category_id"], "cell")
        f = mcfg.scale_of(name)  # a cell type with its own scale (model.class_scales) is seen at it
        s = input_size(h, w, round(mcfg.min_size * f), round(mcfg.max_size * f))[0] / h
        x, y, bw, bh = (float(v) * s for v in a["bbox"])
        boxes.append((x, y, x + bw, y + bh))
        labels.append(name)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels)


def run(
    train: Path = typer.Option(
        Path("data/coco/folds.json"), help="COCO JSON of the training cells (every fold: not the lockbox)"
    ),
    out: Path = typer.Option(Path("metrics/anchors.json"), help="the report (DVC metrics)"),
    per_level: int = typer.Option(2, help="anchor sizes per FPN level in the suggestion"),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    mcfg = load(params, "model").model
    data = coco.load_json(train)
    data = {**data, "annotations": coco.normalise(data, where=str(train), check_files=False)["annotations"]}
    boxes, labels = model_scale_boxes(data, mcfg)
    current = [list(s) for s in mcfg.level_sizes()]
    suggested = anchors.suggest(boxes, mcfg.aspect_ratios, per_level, mcfg.rpn_fg_iou)
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    per_class = {
        str(c): {
            "cells": int((labels == c).sum()),
            "median_scale": round(float(np.median(side[labels == c])), 2),
            **anchors.report(boxes[labels == c], current, mcfg.aspect_ratios),
        }
        for c in sorted(set(labels.tolist()))
    }
    result = {
        "fg_iou": mcfg.rpn_fg_iou,
        "box_scale_px": {f"p{q}": round(float(np.percentile(side, q)), 2) for q in (1, 10, 50, 90, 99)} if len(side) else {},
        "current": {"anchor_sizes": current, **anchors.report(boxes, current, mcfg.aspect_ratios)},
        "suggested": {"anchor_sizes": suggested, **anchors.report(boxes, suggested, mcfg.aspect_ratios)},
        "per_class": per_class,
    }
    write_json(result, out)
    table = Table(title=f"anchor fit of {len(boxes)} training cells (IoU of each cell's best anchor)")
    for col in ("anchors", "sizes per level (P2..P6)", "median IoU", "≥ 0.5", "≥ 0.6", "≥ 0.7"):
        table.add_column(col)
    for name in ("current", "suggested"):
        r = result[name]
        table.add_row(
            name,
            str(r["anchor_sizes"]),
            f"{r['median_best_iou']:.3f}",
            f"{r['share_iou_0.5']:.1%}",
            f"{r['share_iou_0.6']:.1%}",
            f"{r['share_iou_0.7']:.1%}",
        )
    console.print(table)
    log(f"→ {out}")
