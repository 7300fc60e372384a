"""Deterministic synthetic data in the exact Kaggle Sartorius and LIVECell layouts.

Nothing can be downloaded here, so the embedded default data is generated. The point
is that a model learns the *real* task from it: per-type shape, size and count of
cells (shsy5y: hundreds of elongated cells with thin processes, touching; astro:
tens of large irregular low-contrast cells; cort: a few dozen small round cells among
unannotated debris), a phase-contrast look (grey ≈ 128, bright halo and dark rim at
the border, textured interior, uneven illumination, grain) and a few pixels of
overlap between neighbours, as in the real ``train.csv``. Counts and sizes follow
those measured on the real training images.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util
from scipy import ndimage as ndi

from cellpipe import rle
from cellpipe.config import CELL_TYPES
from cellpipe.tables import COLUMNS

HEIGHT, WIDTH = 520, 704


@dataclass(frozen=True)
class Style:
    """How one cell type looks: counts, sizes, shape and contrast (full-resolution pixels)."""

    mean_cells: float
    max_cells: int
    median_area: float
    area_sigma: float
    aspect: tuple[float, float]
    wobble: float
    processes: tuple[int, int]
    process_len: tuple[float, float]
    process_width: int
    spikes: tuple[int, int]  # tapering protrusions of the outline (astro lobes, neurite roots)
    spike_amp: tuple[float, float]  # their length, × the cell's radius
    cluster_sigma: float  # 0 = uniform placement
    max_overlap: float  # fraction of a cell's area that may lie under neighbours
    bg_noise: float
    body: float  # darkening of the interior
    texture: float  # interior grain
    halo: float  # bright ring outside the border
    rim: float  # dark line inside the border
    nucleus: float
    debris: int = 0
    neurites: int = 0


STYLES: dict[str, Style] = {
    "shsy5y": Style(
        337,
        790,
        195,
        0.55,
        (1.6, 3.2),
        0.12,
        (0, 1),
        (6, 16),
        2,
        (0, 2),
        (0.6, 1.6),
        28.0,
        0.06,
        bg_noise=5.0,
        body=3.0,
        texture=10.0,
        halo=32.0,
        rim=20.0,
        nucleus=14.0,
        neurites=10,
    ),
    "astro": Style(
        80,
        594,
        653,
        0.75,
        (1.2, 2.4),
        0.25,
        (0, 0),
        (0, 0),
        3,
        (2, 4),
        (0.8, 2.2),
        60.0,
        0.04,
        bg_noise=3.0,
        body=-2.0,
        texture=8.0,
        halo=20.0,
        rim=14.0,
        nucleus=6.0,
    ),
    "cort": Style(
        34,
        108,
        209,
        0.5,
        (1.0, 1.35),
        0.06,
        (0, 1),
        (6, 18),
        2,
        (0, 0),
        (0.0, 0.0),
        0.0,
        0.02,
        bg_noise=7.0,
        body=8.0,
        texture=18.0,
        halo=60.0,
        rim=32.0,
        nucleus=18.0,
        debris=140,
        neurites=25,
    ),
}

# LIVECell's eight cell types, each drawn in the style of the nearest competition type
LIVECELL_STYLES: dict[str, str] = {
    "A172": "shsy5y",
    "BT474": "cort",
    "BV2": "cort",
    "Huh7": "astro",
    "MCF7": "cort",
    "SHSY5Y": "shsy5y",
    "SkBr3": "cort",
    "SKOV3": "astro",
}


@dataclass
class Cell:
    """One generated cell: its polygon (x, y pairs), processes and full-frame runs."""

    polygon: np.ndarray
    processes: list[tuple[float, float, float, float]] = field(default_factory=list)


def _cell_shape(rng: np.random.Generator, style: Style, scale_area: float = 1.0, with_processes: bool = True) -> Cell:
    """A cell centred at the origin: a wobbly ellipse, optionally with thin processes."""
    area = style.median_area * scale_area * float(np.exp(rng.normal(0.0, style.area_sigma)))
    area = float(np.clip(area, 30.0, 12_000.0))
    aspect = rng.uniform(*style.aspect)
    a = math.sqrt(area * aspect / math.pi)
    b = area / (math.pi * a)
    n = 72
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = np.ones(n)
    for k in range(2, 6):
        radius += rng.normal(0, style.wobble / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius = np.clip(radius, 0.45, 1.8)
    for _ in range(int(rng.integers(style.spikes[0], style.spikes[1] + 1))):
        # a tapering protrusion: a narrow bump of the outline, mostly along the long axis
        centre = rng.choice([0.0, np.pi]) + rng.normal(0, 0.6)
        d = np.angle(np.exp(1j * (theta - centre)))
        radius += rng.uniform(*style.spike_amp) * np.exp(-0.5 * (d / rng.uniform(0.08, 0.16)) ** 2)
    rot = rng.uniform(0, np.pi)
    x = a * radius * np.cos(theta)
    y = b * radius * np.sin(theta)
    xr = x * math.cos(rot) - y * math.sin(rot)
    yr = x * math.sin(rot) + y * math.cos(rot)
    cell = Cell(np.stack([xr, yr], axis=1))
    if with_processes:
        for _ in range(int(rng.integers(style.processes[0], style.processes[1] + 1))):
            # processes leave from the ends of the long axis, roughly along it
            end = rng.choice([-1.0, 1.0])
            ang = rot + (0 if end > 0 else np.pi) + rng.normal(0, 0.5)
            r0 = 0.8 * a
            length = rng.uniform(*style.process_len)
            x0, y0 = r0 * math.cos(ang), r0 * math.sin(ang)
            cell.processes.append((x0, y0, x0 + length * math.cos(ang), y0 + length * math.sin(ang)))
    return cell


def _rasterize(
    cell: Cell, cx: float, cy: float, process_width: int, shape: tuple[int, int]
) -> tuple[np.ndarray, int, int] | None:
    """Boolean crop of the cell placed at (cx, cy) and its top-left corner, clipped."""
    pts = cell.polygon + [cx, cy]
    xs = [pts[:, 0]] + [np.array([p[0] + cx, p[2] + cx]) for p in cell.processes]
    ys = [pts[:, 1]] + [np.array([p[1] + cy, p[3] + cy]) for p in cell.processes]
    allx, ally = np.concatenate(xs), np.concatenate(ys)
    x0 = int(math.floor(allx.min())) - 2
    y0 = int(math.floor(ally.min())) - 2
    w = int(math.ceil(allx.max())) + 3 - x0
    h = int(math.ceil(ally.max())) + 3 - y0
    canvas = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([(float(px - x0), float(py - y0)) for px, py in pts], fill=1)
    for px0, py0, px1, py1 in cell.processes:
        draw.line([(px0 + cx - x0, py0 + cy - y0), (px1 + cx - x0, py1 + cy - y0)], fill=1, width=process_width)
    crop = np.asarray(canvas, dtype=bool)
    # clip to the image
    H, W = shape
    cy0, cx0 = max(0, -y0), max(0, -x0)
    cy1, cx1 = min(h, H - y0), min(w, W - x0)
    if cy1 <= cy0 or cx1 <= cx0:
        return None
    crop = crop[cy0:cy1, cx0:cx1]
    if crop.sum() < 15:
        return None
    return crop, y0 + cy0, x0 + cx0


def _n_cells(rng: np.random.Generator, style: Style, scale: float) -> int:
    sigma = 0.45
    n = style.mean_cells * scale * math.exp(rng.normal(0, sigma) - sigma**2 / 2)
    return int(np.clip(round(n), 3, max(3, style.max_cells * scale)))


def _place_cells(
    rng: np.random.Generator,
    style: Style,
    n: int,
    shape: tuple[int, int],
    *,
    with_processes: bool = True,
    scale_area: float = 1.0,
) -> list[tuple[np.ndarray, int, int, Cell]]:
    """Place ``n`` cells, accepting only a few pixels of overlap with neighbours.

    Returns (crop, top, left, cell) with ``cell.polygon`` moved to image coordinates.
    """
    H, W = shape
    occupied = np.zeros(shape, dtype=np.uint8)
    placed: list[tuple[np.ndarray, int, int, Cell]] = []
    centres = rng.uniform([0, 0], [W, H], size=(max(1, n // 12), 2))
    attempts = 0
    while len(placed) < n and attempts < n * 12:
        attempts += 1
        if style.cluster_sigma > 0 and rng.random() < 0.75:
            c = centres[rng.integers(len(centres))]
            cx, cy = rng.normal(c, style.cluster_sigma)
        else:
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        cell = _cell_shape(rng, style, scale_area, with_processes)
        got = _rasterize(cell, cx, cy, style.process_width, shape)
        if got is None:
            continue
        crop, y0, x0 = got
        window = occupied[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
        if (window[crop] > 0).sum() > style.max_overlap * crop.sum():
            continue
        window[crop] += 1
        placed.append((crop, y0, x0, Cell(cell.polygon + [cx, cy], cell.processes)))
    return placed


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int], amp: float) -> np.ndarray:
    coarse = rng.normal(0, 1, size=cells)
    field_ = ndi.zoom(coarse, (shape[0] / cells[0], shape[1] / cells[1]), order=3)[: shape[0], : shape[1]]
    return amp * field_ / max(field_.std(), 1e-6)


def render(
    rng: np.random.Generator, style: Style, crops: list[tuple[np.ndarray, int, int]], shape: tuple[int, int]
) -> np.ndarray:
    """Phase-contrast-like 8-bit image of the given cell masks."""
    H, W = shape
    labels = np.zeros(shape, dtype=np.int32)
    img = np.full(shape, 128.0, dtype=np.float32)
    img += _smooth_field(rng, shape, (4, 5), 3.0)
    grain = rng.normal(0, 1, size=shape).astype(np.float32)
    img += style.bg_noise * ndi.gaussian_filter(grain, 0.6) * 1.6
    # unannotated neurites (thin faint lines) and debris (tiny dark dots with halo)
    extra = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(extra)
    for _ in range(style.neurites):
        x, y = rng.uniform(0, W), rng.uniform(0, H)
        ang = rng.uniform(0, 2 * np.pi)
        pts = [(x, y)]
        for _ in range(6):
            ang += rng.normal(0, 0.3)
            x, y = x + 25 * math.cos(ang), y + 25 * math.sin(ang)
            pts.append((x, y))
        draw.line(pts, fill=255, width=1)
    neur = np.asarray(extra, dtype=np.float32) / 255.0
    img -= 7.0 * neur
    img += 4.0 * (ndi.gaussian_filter(neur, 1.2) - neur * 0.5)
    if style.debris:
        dots = np.zeros(shape, dtype=np.float32)
        ys = rng.integers(0, H, style.debris)
        xs = rng.integers(0, W, style.debris)
        dots[ys, xs] = 1.0
        d = ndi.gaussian_filter(dots, 1.2) * 2 * np.pi * 1.44
        img += 30.0 * (ndi.gaussian_filter(dots, 3.0) * 2 * np.pi * 9 - d * 0.9) - 40.0 * d
    for k, (crop, y0, x0) in enumerate(crops):
        sl = (slice(y0, y0 + crop.shape[0]), slice(x0, x0 + crop.shape[1]))
        labels[sl][crop] = k + 1
    inside = labels > 0
    edges = ndi.maximum_filter(labels, 3) != ndi.minimum_filter(labels, 3)
    halo = (edges & ~inside).astype(np.float32)
    rim = (edges & inside).astype(np.float32)
    tex = ndi.gaussian_filter(rng.normal(0, 1, size=shape).astype(np.float32), 1.0) * 2.2
    img += inside * (-style.body + style.texture * tex)
    img += style.halo * ndi.gaussian_filter(halo, 0.8) * 1.8
    img -= style.rim * ndi.gaussian_filter(rim, 0.7) * 1.5
    if style.nucleus:
        nuc = np.zeros(shape, dtype=np.float32)
        for crop, y0, x0 in crops:
            if crop.sum() < 60:
                continue
            yy, xx = np.nonzero(ndi.binary_erosion(crop, iterations=2))
            if len(yy) == 0:
                continue
            nuc[y0 + int(yy.mean()), x0 + int(xx.mean())] = 1.0
        blob = ndi.gaussian_filter(nuc, 2.0) * 2 * np.pi * 4
        ring = ndi.gaussian_filter(nuc, 3.5) * 2 * np.pi * 12.25
        img += style.nucleus * (1.6 * ring - 2.2 * blob)
    img += 128.0 - img.mean()
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- Kaggle layout


def _hex_id(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        s = "".join(rng.choice(list("0123456789abcdef"), 12))
        if s not in used:
            used.add(s)
            return s


SAMPLE_NAMES = {"shsy5y": "shsy5y[diff]", "astro": "astros[cereb]", "cort": "cort[oka-high]"}


def kaggle_image(
    rng: np.random.Generator, cell_type: str, cells_scale: float, shape: tuple[int, int] = (HEIGHT, WIDTH)
) -> tuple[np.ndarray, list[np.ndarray], list[tuple[int, int]]]:
    """One synthetic competition image: pixels, cell crops and their corners."""
    style = STYLES[cell_type]
    placed = _place_cells(rng, style, _n_cells(rng, style, cells_scale), shape)
    crops = [(c, y0, x0) for c, y0, x0, _ in placed]
    return render(rng, style, crops, shape), [c for c, _, _ in crops], [(y0, x0) for _, y0, x0 in crops]


def _crop_runs(crops: list[np.ndarray], corners: list[tuple[int, int]], shape: tuple[int, int]) -> rle.Runs:
    H, W = shape
    mask_of, pixel = [], []
    for k, (crop, (y0, x0)) in enumerate(zip(crops, corners)):
        yy, xx = np.nonzero(crop)
        pixel.append((yy + y0) * W + xx + x0)
        mask_of.append(np.full(len(yy), k))
    if not crops:
        return rle.runs_from_flat_indices(np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    return rle.runs_from_flat_indices(np.concatenate(mask_of), np.concatenate(pixel).astype(np.int64), len(crops))


def write_kaggle(
    out: Path,
    images_per_type: dict[str, int],
    test_images: int,
    cells_scale: float,
    seed: int,
    images_per_sample: int = 3,
    progress=None,
) -> pd.DataFrame:
    """Write ``train.csv``, ``train/<id>.png``, ``test/<id>.png`` and ``sample_submission.csv``."""
    rng = np.random.default_rng(seed)
    used: set[str] = set()
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = [ct for ct in CELL_TYPES for _ in range(int(images_per_type.get(ct, 0)))]
    sample_counter = 0
    sample_id = ""
    prev_type = None
    in_sample = 0
    for i, cell_type in enumerate(jobs):
        if cell_type != prev_type or in_sample >= images_per_sample:
            sample_counter += 1
            well = f"{'ABCDEFGH'[sample_counter % 8]}{1 + sample_counter % 12}-{1 + sample_counter % 4}"
            sample_id = f"{SAMPLE_NAMES[cell_type]}_{well}_Vessel-{300 + sample_counter}_Ph_{1 + sample_counter % 4}"
            date = f"2020-{1 + sample_counter % 12:02d}-{1 + sample_counter % 28:02d}"
            prev_type, in_sample = cell_type, 0
        in_sample += 1
        hours = 9 + 4 * (in_sample - 1) + int(rng.integers(0, 3))
        image_id = _hex_id(rng, used)
        pixels, crops, corners = kaggle_image(rng, cell_type, cells_scale)
        Image.fromarray(pixels).save(out / "train" / f"{image_id}.png")
        runs = _crop_runs(crops, corners, (HEIGHT, WIDTH))
        for s in rle.to_strings(runs):
            rows.append(
                (image_id, s, WIDTH, HEIGHT, cell_type, f"{hours:02d}h00m00s", date, sample_id, f"0 days {hours:02d}:00:00")
            )
        if progress:
            progress(i + 1, len(jobs))
    test_ids = []
    for j in range(test_images):
        cell_type = CELL_TYPES[j % 3]
        image_id = _hex_id(rng, used)
        pixels, _, _ = kaggle_image(rng, cell_type, cells_scale)
        Image.fromarray(pixels).save(out / "test" / f"{image_id}.png")
        test_ids.append(image_id)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df.to_csv(out / "train.csv", index=False)
    pd.DataFrame({"id": test_ids, "predicted": ""}).to_csv(out / "sample_submission.csv", index=False)
    return df


# --------------------------------------------------------------------------- LIVECell layout


def write_livecell(out: Path, n_images: int, cells_scale: float, seed: int, progress=None) -> dict:
    """Write a LIVECell-style COCO JSON (dict-form ``annotations``) and its TIFF images."""
    rng = np.random.default_rng(seed + 7919)
    img_dir = out / "images" / "livecell_train_val_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    (out / "annotations" / "LIVECell").mkdir(parents=True, exist_ok=True)
    types = list(LIVECELL_STYLES)
    images, annotations = [], {}
    ann_id = 1_000_000
    for i in range(n_images):
        cell_type = types[i % len(types)]
        style = STYLES[LIVECELL_STYLES[cell_type]]
        n = _n_cells(rng, style, cells_scale * 1.5)
        placed = _place_cells(rng, style, n, (HEIGHT, WIDTH), with_processes=False)
        image_id = 500_000 + i
        well = f"{'ABCDEFGH'[i % 8]}{1 + i % 12}"
        name = f"{cell_type}_Phase_{well}_{1 + i % 2}_{i % 4:02d}d{(4 * i) % 24:02d}h00m_{1 + i % 4}.tif"
        crops = []
        for _, _, _, cell in placed:
            # the polygon is the annotation; its rasterisation (pycocotools) is the mask
            poly = cell.polygon.copy()
            poly[:, 0] = np.clip(poly[:, 0], 0, WIDTH - 1)
            poly[:, 1] = np.clip(poly[:, 1], 0, HEIGHT - 1)
            seg = [np.round(poly, 2).ravel().tolist()]
            rles = mask_util.frPyObjects(seg, HEIGHT, WIDTH)
            m = mask_util.decode(mask_util.merge(rles)).astype(bool)
            area = float(m.sum())
            if area < 10:
                continue
            ys, xs = np.nonzero(m)
            crops.append((m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], int(ys.min()), int(xs.min())))
            x_min, y_min = float(poly[:, 0].min()), float(poly[:, 1].min())
            ann_id += 1
            annotations[str(ann_id)] = {
                "id": ann_id,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": seg,
                "area": area,
                "bbox": [
                    round(x_min, 2),
                    round(y_min, 2),
                    round(float(poly[:, 0].max()) - x_min, 2),
                    round(float(poly[:, 1].max()) - y_min, 2),
                ],
                "iscrowd": 0,
            }
        pixels = render(rng, style, crops, (HEIGHT, WIDTH))
        Image.fromarray(pixels).save(img_dir / name, compression="tiff_lzw")
        images.append(
            {
                "id": image_id,
                "width": WIDTH,
                "height": HEIGHT,
                "file_name": name,
                "original_filename": name.replace(".tif", ".png"),
            }
        )
        if progress:
            progress(i + 1, n_images)
    coco = {
        "info": {"year": "2021", "version": "1.0", "description": "synthetic LIVECell-style data (cellpipe)"},
        "licenses": [],
        "categories": [{"supercategory": "cell", "id": 1, "name": "cell"}],
        "images": images,
        "annotations": annotations,
    }
    (out / "annotations" / "LIVECell" / "livecell_coco_train.json").write_text(json.dumps(coco))
    return coco
