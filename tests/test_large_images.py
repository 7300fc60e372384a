"""Bounded memory and time on any image: box-sized masks, large images in windows, limits refused by name."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.models.detection.roi_heads import paste_masks_in_image

from cellpipe import prediction_table
from cellpipe.inference import predict_tiled, tile_starts
from cellpipe.instances import Instances
from cellpipe.models import masks
from tests.conftest import TINY_MODEL, cellpipe_checkpoint, run_cli, tiny_model
from tests.helpers import one_line_error


def random_detections(n: int, shape=(60, 80), seed=0, size=14):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand((n, 1, size, size), generator=g)
    x0 = torch.rand(n, generator=g) * (shape[1] + 5) - 10  # some boxes cross the image's border
    y0 = torch.rand(n, generator=g) * (shape[0] + 5) - 10
    w, h = 12 + torch.rand(n, generator=g) * 30, 12 + torch.rand(n, generator=g) * 30
    return probs, torch.stack([x0, y0, x0 + w, y0 + h], 1)


@pytest.mark.parametrize("geometry", ["exact", "torchvision"])
def test_sparse_paste_gives_the_pixels_of_the_dense_paste(geometry):
    """Box by box into a sparse matrix: the same pixels as pasting N full-size masks, without them."""
    shape = (60, 80)
    probs, boxes = random_detections(40, shape)
    got = masks.paste_sparse(probs, boxes, shape, 0.5, geometry).toarray().astype(bool)
    if geometry == "exact":
        dense = masks.paste_masks(probs, boxes, shape)[:, 0] > 0.5
    else:
        dense = paste_masks_in_image(probs, boxes, shape, padding=1)[:, 0] > 0.5
    assert np.array_equal(got, dense.reshape(len(probs), -1).numpy())
    assert got.any(axis=1).sum() > 20


def discs(shape, n, radius, seed):
    """A label image of ``n`` random discs (labels 1..n, later discs on top)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int64)
    for k in range(1, n + 1):
        r = rng.uniform(2, radius)
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return labels


def oracle(labels: np.ndarray):
    """A 'model' that finds every cell of the window it is shown (cut at the window's edge, as a real one would)."""
    calls = []

    def predict_one(grey: np.ndarray) -> Instances:
        y, x = np.unravel_index(int(grey.ravel()[0]), labels.shape)  # the window's corner, smuggled in its first pixel
        window = labels[y : y + grey.shape[0], x : x + grey.shape[1]]
        calls.append(grey.shape)
        rows, cols = [], []
        for k, ids in enumerate(np.unique(window[window > 0])):
            pix = np.flatnonzero(window.ravel() == ids)
            rows.append(np.full(len(pix), k))
            cols.append(pix)
        n = len(rows)
        m = sp.csr_matrix(
            (np.ones(sum(map(len, cols)), np.float32), (np.concatenate(rows or [[]]), np.concatenate(cols or [[]]))),
            shape=(n, window.size),
        )
        return Instances(m, np.linspace(0.9, 0.5, n), np.ones(n, np.int64), window.shape)

    return predict_one, calls


def corner_image(shape):
    """An image whose pixel at each window corner names the corner (what :func:`oracle` reads back)."""
    return np.arange(shape[0] * shape[1], dtype=np.int64).reshape(shape)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(20, 300), w=st.integers(20, 300), th=st.integers(40, 120), tw=st.integers(40, 120), seed=st.integers(0, 999))
def test_windows_stitch_every_cell_once_and_whole(h, w, th, tw, seed):
    """Cells smaller than the overlap come out once each, with exactly their pixels, whatever the seams."""
    overlap = 30
    labels = discs((h, w), n=max(1, h * w // 600), radius=10, seed=seed)  # diameters < 20 < overlap
    predict_one, calls = oracle(labels)
    got = predict_tiled(predict_one, corner_image((h, w)), (th, tw), overlap)
    want = {frozenset(np.flatnonzero(labels.ravel() == k)) for k in np.unique(labels[labels > 0])}
    m = got.masks.tocsr()
    found = [frozenset(m.indices[m.indptr[i] : m.indptr[i + 1]].tolist()) for i in range(m.shape[0])]
    assert len(found) == len(set(found)) and set(found) == want
    if h <= th and w <= tw:
        assert calls == [(h, w)]
    else:
        assert all(c == (min(th, h), min(tw, w)) for c in calls)  # every window at the tile's size


def test_tile_starts_cover_with_the_overlap():
    assert tile_starts(500, 520, 128) == [0]
    starts = tile_starts(8000, 520, 128)
    assert starts[0] == 0 and starts[-1] == 8000 - 520
    assert all(b - a <= 520 - 128 for a, b in zip(starts, starts[1:]))


def png_header_only(path, width, height):
    """A PNG that declares ``width × height`` pixels in a few bytes (a decompression bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )
    return path


def predict_folder(tmp_path, folder, checkpoint=None, params="predict: {}\n"):
    (tmp_path / "p.yaml").write_text(params)
    if checkpoint is None:
        checkpoint = tmp_path / "m.pt"
        cellpipe_checkpoint(checkpoint, TINY_MODEL, ["shsy5y", "astro", "cort"])
    return run_cli(
        "predict", "--checkpoint", str(checkpoint), "--skip-val", "--test-dir", str(folder),
        "--test-out", str(tmp_path / "out" / "t.parquet"), "--params", str(tmp_path / "p.yaml"),
    )  # fmt: skip


def test_a_decompression_bomb_is_refused_by_name_before_decoding(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    bomb = png_header_only(folder / "bomb.png", 20_000, 20_000)
    assert bomb.stat().st_size < 1000
    proc = predict_folder(tmp_path, folder)
    one_line_error(proc, "bomb.png", "20000×20000 = 400,000,000 pixels", "limit of 100,000,000", "predict.max_image_pixels")
    assert not (tmp_path / "out").exists()
    proc = predict_folder(tmp_path, folder, params="predict: {max_image_pixels: 500000000}\n")
    one_line_error(proc, "bomb.png", "unreadable or truncated image")  # past the limit it is decoded, and is broken


def test_a_checkpoint_asking_for_a_huge_input_is_refused_by_name(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((52, 70), 90, np.uint8)).save(folder / "a.png")
    cfg = tiny_model()
    ckpt = tmp_path / "huge.pt"
    cellpipe_checkpoint(ckpt, cfg, ["shsy5y", "astro", "cort"])
    state = torch.load(ckpt, weights_only=True)
    state["model_config"].update(min_size=1_000_000, max_size=1_000_000)
    torch.save(state, ckpt)
    proc = predict_folder(tmp_path, folder, checkpoint=ckpt)
    one_line_error(proc, "huge.pt", "model.min_size must be ≤ 8192 (got 1000000)")
    state["model_config"].update(min_size=8000, max_size=8000)
    torch.save(state, ckpt)
    proc = predict_folder(tmp_path, folder, checkpoint=ckpt, params="predict: {max_image_pixels: 10000000}\n")
    one_line_error(proc, "huge.pt", "over predict.max_image_pixels 10,000,000")
    assert not (tmp_path / "out").exists()


def test_a_large_image_is_predicted_in_windows_at_its_own_size(tmp_path):
    """Through ``cellpipe predict``: a 1300×1500 image (several windows of 520×704) gives detections of its own
    size, every one inside it, at the same cost per window as a Kaggle image."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(60, 200, (1300, 1500), dtype=np.uint8)).save(folder / "big.png")
    proc = predict_folder(tmp_path, folder, params="predict: {tile_size: [520, 704], tile_overlap: 64}\n")
    assert proc.returncode == 0, proc.stderr
    pred = prediction_table.read(tmp_path / "out" / "t.parquet")
    assert pred.sizes == {"big": (1300, 1500)}
    (inst,) = pred.select(["big"])
    assert inst.masks.shape == (len(pred.detections), 1300 * 1500)
