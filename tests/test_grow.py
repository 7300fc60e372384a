"""Final cells grown into the free pixels around them (``postprocess.grow``), chosen per class out of fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.ndimage as ndi
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from cellpipe import postprocess, tables
from cellpipe.config import PostProcess
from tests.helpers import score_on_truth, thresholds_on_truth


def masks_of(labels: np.ndarray) -> sp.csr_matrix:
    """A label image (0 = background, k = instance k) → one sparse row per instance 1…max."""
    flat = labels.ravel()
    at = np.flatnonzero(flat)
    return sp.csr_matrix((np.ones(len(at), np.float32), (flat[at] - 1, at)), shape=(int(labels.max()), flat.size))


def labels_of(masks: sp.csr_matrix, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape[0] * shape[1], np.int64)
    coo = masks.tocoo()
    assert np.bincount(coo.col, minlength=out.size).max(initial=0) <= 1, "instances overlap"
    out[coo.col] = coo.row + 1
    return out.reshape(shape)


def test_a_cell_grows_by_the_disc_of_its_distance_and_neighbours_split_the_gap_between_them():
    labels = np.zeros((30, 40), np.int64)
    labels[10:15, 10:15] = 1
    alone = postprocess.grow(masks_of(labels), 40, 2)
    within = ndi.distance_transform_edt(labels == 0) <= 2  # every pixel within 2 px of the square
    assert (labels_of(alone, labels.shape) > 0).tolist() == within.tolist()
    labels[10:15, 18:23] = 2  # three free columns (15, 16, 17) between the two squares
    grown = labels_of(postprocess.grow(masks_of(labels), 40, 3), labels.shape)
    assert (grown[12, 14:19] == [1, 1, 1, 2, 2]).all() or (grown[12, 14:19] == [1, 1, 2, 2, 2]).all()
    assert (grown[labels > 0] == labels[labels > 0]).all()  # nobody loses a pixel, nobody takes another's
    assert postprocess.grow(masks_of(labels), 40, 0).nnz == int((labels > 0).sum())


@settings(max_examples=60, deadline=None)
@given(
    st.integers(5, 30),
    st.integers(5, 30),
    st.lists(st.tuples(st.integers(0, 29), st.integers(0, 29), st.integers(1, 6), st.integers(1, 6)), min_size=0, max_size=8),
    st.integers(0, 4),
    st.integers(1, 7),
)
def test_growth_in_bands_is_exact_keeps_cells_apart_and_stays_within_its_distance(h, w, rects, distance, band):
    labels = np.zeros((h, w), np.int64)
    for k, (y, x, dh, dw) in enumerate(rects, 1):
        labels[y : y + dh, x : x + dw] = k  # later ones cover earlier ones: some cells vanish, as overlaps do
    present = np.unique(labels[labels > 0])
    labels = np.searchsorted(np.r_[0, present], labels)  # 1…n with no gaps
    masks = masks_of(labels) if labels.max() else sp.csr_matrix((0, h * w), dtype=np.float32)
    grown = postprocess.grow(masks, w, distance, band=band)
    assert grown.shape == masks.shape
    out = labels_of(grown, (h, w))  # asserts no two instances share a pixel
    assert (out[labels > 0] == labels[labels > 0]).all()  # each keeps its pixels
    reach = ndi.distance_transform_edt(labels == 0) if labels.max() else np.full((h, w), np.inf)
    assert ((out > 0) == (reach <= distance)).all()  # every free pixel within the distance, and no other, is taken
    for k in range(1, int(labels.max()) + 1):  # each taken pixel within the distance of the cell that took it
        assert (ndi.distance_transform_edt(labels != k)[out == k] <= distance).all()
    whole = postprocess.grow(masks, w, distance, band=10**6)  # one band: the plain transform of the whole image
    assert (grown != whole).nnz == 0
    each = postprocess.grow_each(masks, w, [distance + 1, 0, distance], band=band)  # one transform, three growths
    assert [(e != postprocess.grow(masks, w, d, band=band)).nnz for e, d in zip(each, [distance + 1, 0, distance])] == [0] * 3


def test_final_grows_after_overlap_removal_and_needs_the_width():
    labels = np.zeros((20, 20), np.int64)
    labels[5:10, 5:10] = 1
    masks = masks_of(labels)
    out = postprocess.final(masks, np.array([0.9]), 0.5, PostProcess(grow=1), width=20)
    assert out.nnz == 25 + 4 * 5  # a 5×5 square and the four rows of 5 beside it
    try:
        postprocess.final(masks, np.array([0.9]), 0.5, PostProcess(grow=1))
    except ValueError as err:
        assert "width" in str(err)
    else:
        raise AssertionError("growing without the width must fail")


def test_thresholds_choose_each_class_growth_and_score_applies_it(tmp_path, tiny_kaggle):
    """Through the CLI: predictions that are the true cells shrunk by one pixel score best grown by 1, which the
    stage chooses per class (grid 0 / 1 / 3) and ``score`` applies from the thresholds file."""

    def shrunk(truth: sp.csr_matrix, h: int, w: int) -> tuple[sp.csr_matrix, np.ndarray]:
        rows = [ndi.binary_erosion(truth[k].toarray().reshape(h, w)).ravel() for k in range(truth.shape[0])]
        masks = sp.csr_matrix(np.array([r for r in rows if r.any()], dtype=np.float32))
        return masks, np.full(masks.shape[0], 0.9)

    chosen = thresholds_on_truth(tmp_path, tiny_kaggle, shrunk, "{grid: [0.5], grows: [0, 1, 3]}")
    types = set(tables.read_train_csv(tiny_kaggle / "train.csv")["cell_type"])
    assert {c: v["grow"] for c, v in chosen["postprocess_per_class"].items()} == dict.fromkeys(types, 1)
    assert chosen["scores"] == ""  # chosen on the model's own scores (no maskness), and says so
    grown = score_on_truth(tmp_path, tiny_kaggle, chosen, "grown")
    plain = score_on_truth(tmp_path, tiny_kaggle, {**chosen, "postprocess_per_class": {}}, "plain")
    assert grown > plain + 0.05, (grown, plain)
    sweep = pd.read_csv(tmp_path / "sw.csv")
    assert len(sweep) == 1  # the sweep plot: each class at its chosen post-processing, one row per threshold
