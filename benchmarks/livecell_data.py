"""A LIVECell-sized dataset in LIVECell's layout, for measuring at the real size (``benchmarks.livecell_scale``).

≈ 5,000 images and ≈ 1.7 M cells without rendering 1.7 M cells: a pool of rendered images
(:mod:`cellpipe.synth`'s cells) reused under every image's own name and ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from cellpipe import synth
from cellpipe.atomic import atomic_path

H, W = synth.HEIGHT, synth.WIDTH


def livecell_scale_counts(n_images: int, total_cells: int, max_cells: int, seed: int) -> np.ndarray:
    """Cells per image for a LIVECell-sized dataset: log-normal, clipped to [5, ``max_cells``], summing ≈ ``total_cells``.

    LIVECell's per-image counts are heavily skewed (sparse early time points, confluent
    late ones up to a few thousand), so a log-normal around the mean is the simple model.
    """
    rng = np.random.default_rng(seed + 104729)
    mean = total_cells / n_images
    raw = rng.lognormal(0.0, 0.9, n_images)
    counts = np.clip(raw * mean / raw.mean(), 5, max_cells)
    for _ in range(20):  # clipping lowers the sum: rescale the unclipped ones until it fits
        counts = np.clip(counts * total_cells / counts.sum(), 5, max_cells)
    return np.rint(counts).astype(np.int64)


def write_livecell_scale(
    out: Path, n_images: int, total_cells: int, *, max_cells: int = 2000, pool: int = 40, seed: int = 0, progress=None
) -> dict:
    """Write a LIVECell-sized COCO JSON (dict-form ``annotations``, polygons) and its images.

    For measuring the ``livecell`` stage and the pretraining loader at the real size
    (≈ 5,000 images, ≈ 1.7 M cells) without rendering millions of cells: ``pool``
    distinct images are rendered at cell counts spread over the per-image distribution
    (:func:`livecell_scale_counts`), and each of the ``n_images`` images is one of them
    (the nearest count) under its own name, ids and file (a hard link where the file
    system allows), with that image's annotations. Every image therefore matches its
    annotations exactly; only the content repeats. Polygons have ≈ 24 vertices (the
    real files' median is ≈ 27). The JSON is written as a stream, so the generator
    itself never holds 1.7 M annotation dicts. Returns counts: images, cells, bytes.
    """
    counts = livecell_scale_counts(n_images, total_cells, max_cells, seed)
    levels = np.unique(np.quantile(counts, np.linspace(0, 1, pool)).round().astype(np.int64))
    pick = np.abs(counts[:, None] - levels[None, :]).argmin(1)
    rng = np.random.default_rng(seed + 7919)
    img_dir = out / "images" / "livecell_train_val_images"
    pool_dir = out / "pool"
    for d in (img_dir, pool_dir, out / "annotations" / "LIVECell"):
        d.mkdir(parents=True, exist_ok=True)
    types = list(synth.LIVECELL_STYLES)
    pooled: list[list[str]] = []  # per pool image: each annotation's JSON text after its ids
    for j, n in enumerate(levels):
        cell_type = types[j % len(types)]
        style = synth.STYLES[synth.LIVECELL_STYLES[cell_type]]
        # shrink cells so that n of them fit (≤ 45 % of the frame) in crowded images
        scale_area = min(1.0, 0.45 * H * W / (int(n) * style.median_area))
        placed = synth._place_cells(rng, style, int(n), (H, W), with_processes=False, scale_area=scale_area)
        texts, crops = [], []
        for crop, y0, x0, cell in placed:
            poly = cell.polygon[::3].copy()
            poly[:, 0] = np.clip(poly[:, 0], 0, W - 1)
            poly[:, 1] = np.clip(poly[:, 1], 0, H - 1)
            seg = [np.round(poly, 2).ravel().tolist()]
            rle_ = mask_util.merge(mask_util.frPyObjects(seg, H, W))
            area = float(mask_util.area(rle_))
            if area < 10:
                continue
            crops.append((crop, y0, x0))
            bbox = [round(float(v), 2) for v in mask_util.toBbox(rle_)]
            texts.append(
                f'"category_id": 1, "segmentation": {json.dumps(seg)}, "area": {area}, "bbox": {json.dumps(bbox)}, "iscrowd": 0}}'
            )
        Image.fromarray(synth.render(rng, style, crops, (H, W))).save(pool_dir / f"{j}.tif", compression="tiff_lzw")
        pooled.append(texts)
        if progress:
            progress(j + 1, len(levels) + n_images)
    path = out / "annotations" / "LIVECell" / "livecell_coco_train.json"
    cells = 0
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write('{"info": {"year": "2021", "version": "1.0", "description": "synthetic LIVECell-scale data (cellpipe)"}, ')
        f.write('"licenses": [], "categories": [{"supercategory": "cell", "id": 1, "name": "cell"}], "images": [')
        names = []
        for i in range(n_images):
            cell_type = types[int(pick[i]) % len(types)]
            name = f"{cell_type}_Phase_{'ABCDEFGH'[i % 8]}{1 + i % 12}_{1 + i % 2}_{i % 4:02d}d{(4 * i) % 24:02d}h00m_{i}.tif"
            names.append(name)
            sep = ", " if i else ""
            f.write(f'{sep}{{"id": {500_000 + i}, "width": {W}, "height": {H}, "file_name": "{name}"}}')
        f.write('], "annotations": {')
        ann_id = 2_000_000
        for i in range(n_images):
            target = img_dir / names[i]
            if not target.exists():
                try:
                    os.link(pool_dir / f"{pick[i]}.tif", target)
                except OSError:
                    target.write_bytes((pool_dir / f"{pick[i]}.tif").read_bytes())
            parts = []
            for text in pooled[int(pick[i])]:
                ann_id += 1
                parts.append(f'"{ann_id}": {{"id": {ann_id}, "image_id": {500_000 + i}, {text}')
            if parts:
                f.write((", " if cells else "") + ", ".join(parts))
            cells += len(parts)
            if progress:
                progress(len(levels) + i + 1, len(levels) + n_images)
        f.write("}}")
    return {"images": n_images, "cells": cells, "bytes": path.stat().st_size, "json": str(path), "images_dir": str(img_dir)}
