import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_util

from cellpipe import rle
from cellpipe.errors import CellpipeError


def reference_decode(s: str, shape) -> np.ndarray:
    """The public notebooks' loop, kept as plain as possible."""
    m = np.zeros(shape[0] * shape[1], dtype=bool)
    toks = s.split()
    for start, length in zip(toks[0::2], toks[1::2]):
        m[int(start) - 1 : int(start) - 1 + int(length)] = True
    return m.reshape(shape)


def reference_encode(mask: np.ndarray) -> str:
    out, run = [], None
    for i, v in enumerate(mask.ravel()):
        if v and run is None:
            run = i
        elif not v and run is not None:
            out += [run + 1, i - run]
            run = None
    if run is not None:
        out += [run + 1, mask.size - run]
    return " ".join(map(str, out))


masks = st.integers(1, 12).flatmap(lambda h: st.integers(1, 12).flatmap(lambda w: arrays(bool, (h, w))))


@given(masks)
@settings(max_examples=300, deadline=None)
def test_encode_decode_roundtrip_and_agree_with_reference(mask):
    s = rle.encode(mask)
    assert s == reference_encode(mask)
    assert np.array_equal(rle.decode(s, mask.shape), mask)
    assert np.array_equal(reference_decode(s, mask.shape), mask)


@given(st.lists(masks.filter(lambda m: m.any()), min_size=1, max_size=5), st.data())
@settings(max_examples=150, deadline=None)
def test_table_helpers_match_dense(ms, data):
    shape = ms[0].shape
    stack = np.stack([np.resize(m, shape) for m in ms])
    stack = stack[stack.reshape(len(stack), -1).any(1)]
    if not len(stack):
        return
    runs = rle.parse_many([rle.encode(m) for m in stack], shape[0] * shape[1])
    assert list(runs.areas()) == [int(m.sum()) for m in stack]
    for box, m in zip(rle.boxes(runs, shape[1]), stack):
        ys, xs = np.nonzero(m)
        assert list(box) == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    for c, m in zip(rle.to_coco(runs, shape), stack):
        assert c["counts"] == mask_util.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
    assert np.array_equal(rle.to_csr(runs, m.size).toarray().astype(bool), stack.reshape(len(stack), -1))


def test_label_image_and_empty():
    assert rle.encode(np.zeros((3, 4), bool)) == ""
    assert not rle.decode("", (3, 4)).any()
    runs = rle.parse_many(["1 2", "5 3"], 12)
    lab = rle.label_image(runs, (3, 4))
    assert lab.ravel().tolist() == [1, 1, 0, 0, 2, 2, 2, 0, 0, 0, 0, 0]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("1 2 3", "odd number"),
        ("1 x", "not an integer"),
        ("1.5 2", "not an integer"),
        ("0 2", "start < 1"),
        ("-3 2", "start < 1"),
        ("3 0", "length < 1"),
        ("10 5", "past the image"),
        ("5 2 1 2", "unsorted or overlap"),
        ("1 3 2 2", "unsorted or overlap"),
        ("", "empty RLE"),
    ],
)
def test_malformed_rle_names_the_row(bad, message):
    with pytest.raises(CellpipeError, match=message) as err:
        rle.parse_many(["1 1", bad], 12, where="train.csv", row_names=["line 2", "line 3"])
    assert "train.csv: line 3" in str(err.value)


@given(arrays(np.int16, (7, 9), elements=st.integers(0, 5)))
@settings(max_examples=200, deadline=None)
def test_from_label_image(labels):
    values, runs = rle.from_label_image(labels)
    assert list(values) == sorted(set(labels.ravel()) - {0})
    for v, s in zip(values, rle.to_strings(runs)):
        assert s == reference_encode(labels == v)
