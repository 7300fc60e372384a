"""Run-length codes in the Kaggle convention, vectorised over whole tables.

Kaggle RLE (the competition's ``train.csv`` and submission format): space-separated pairs ``start length`` with a
1-based ``start``, over the image flattened row by row (numpy C order of
``(height, width)``); runs sorted and not overlapping.

The public notebooks decode one string at a time into a full 520×704 mask. Here all
strings of a table are parsed at once into flat run arrays (:class:`Runs`), from which
areas, boxes, sparse instance matrices and COCO RLE are derived without ever
materialising a full-size mask per cell.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import scipy.sparse as sp
from pycocotools import mask as mask_util

from cellpipe.errors import CellpipeError

Shape = tuple[int, int]


@dataclass(frozen=True)
class Runs:
    """Runs of ``n`` masks, flattened: run ``i`` belongs to mask ``row[i]``.

    ``starts`` are 0-based flat pixel indices (row-major); ``offsets`` has ``n + 1``
    entries so that the runs of mask ``k`` are ``offsets[k]:offsets[k + 1]``.
    """

    starts: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray
    canonical: bool = False  # parsed from strings already in canonical form ("s l s l", single spaces)

    @property
    def n(self) -> int:
        return len(self.offsets) - 1

    @property
    def row(self) -> np.ndarray:
        return np.repeat(np.arange(self.n), np.diff(self.offsets))

    def areas(self) -> np.ndarray:
        """Pixel count of each mask."""
        return np.bincount(self.row, weights=self.lengths, minlength=self.n).astype(np.int64)

    def take(self, index: np.ndarray) -> Runs:
        """The runs of the masks ``index`` (in that order)."""
        index = np.asarray(index, dtype=np.int64)
        counts = np.diff(self.offsets)[index]
        firsts = self.offsets[:-1][index]
        sel = _ranges(firsts, counts)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return Runs(self.starts[sel], self.lengths[sel], offsets)

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """(mask index, flat pixel index) of every pixel, in run order."""
        return np.repeat(self.row, self.lengths), _ranges(self.starts, self.lengths)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every pair, without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    step = np.ones(total, dtype=np.int64)
    nonzero = lengths > 0
    s = np.asarray(starts, dtype=np.int64)[nonzero]
    e = ends[nonzero]
    l_ = lengths[nonzero]
    step[0] = s[0]
    # at each run's first element jump from the previous run's last pixel to its start
    step[(e - l_)[1:]] = s[1:] - (s[:-1] + l_[:-1] - 1)
    return np.cumsum(step)


# --------------------------------------------------------------------------- parsing


def _row_name(row_names: Sequence[str] | None, i: int) -> str:
    return row_names[i] if row_names is not None else f"row {i}"


def parse_many(
    strings: Sequence[str],
    n_pixels: int | np.ndarray,
    *,
    where: str | None = None,
    row_names: Sequence[str] | None = None,
    allow_empty: bool = False,
) -> Runs:
    """Parse and validate many Kaggle RLE strings at once.

    ``n_pixels`` is ``height * width`` (a scalar or one per string). Raises
    :class:`CellpipeError` naming ``where`` and the offending row for odd token counts,
    non-integers, starts < 1, lengths < 1, runs past the image and unsorted or
    overlapping runs; for empty strings unless ``allow_empty``.
    """
    texts = [s if isinstance(s, str) else ("" if s is None or (isinstance(s, float) and s != s) else str(s)) for s in strings]
    fast = _parse_canonical(texts)
    if fast is not None:
        flat, counts = fast
        canonical = True
    else:
        flat, counts = _parse_tokens(texts, where, row_names)
        canonical = False
    odd = np.flatnonzero(counts % 2)
    if len(odd):
        i = int(odd[0])
        raise CellpipeError(
            f"{_row_name(row_names, i)}: RLE has an odd number of values ({counts[i]}); expected 'start length' pairs",
            where=where,
        )
    if not allow_empty:
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            raise CellpipeError(f"{_row_name(row_names, int(empty[0]))}: empty RLE (a cell with no pixels)", where=where)
    return _validated(flat, counts, n_pixels, where, row_names, canonical)


def _parse_canonical(texts: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """All strings at once in C (``np.fromstring``), or None when any is unusual.

    Each row's token count is taken as its number of spaces + 1, which equals the true
    count only for canonical rows ("s l s l": single spaces, no signs or decimals that
    stop the C parser early); any difference in the total hands over to the careful
    per-token path, which also names the offending row.
    """
    counts = np.fromiter((t.count(" ") + 1 if t else 0 for t in texts), dtype=np.int64, count=len(texts))
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64), counts
    joined = " ".join(texts)
    if "+" in joined:  # "+5" parses, but is not the canonical form
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a partial parse warns; it is caught by the count check
        try:
            values = np.fromstring(joined, dtype=np.int64, sep=" ")
        except ValueError:
            return None
    if len(values) != total:
        return None
    return values, counts


def _parse_tokens(texts: list[str], where: str | None, row_names: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """The careful path: split every string, name the first token that is not an integer."""
    tokens = [t.split() for t in texts]
    counts = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    try:
        flat = np.array(list(chain.from_iterable(tokens)), dtype=np.int64) if counts.sum() else np.zeros(0, np.int64)
    except (ValueError, OverflowError):
        for i, toks in enumerate(tokens):
            for t in toks:
                try:
                    v = int(t)
                    if abs(v) > 2**62:
                        raise OverflowError
                except (ValueError, OverflowError):
                    raise CellpipeError(
                        f"{_row_name(row_names, i)}: RLE value {t[:20]!r} is not an integer", where=where
                    ) from None
        raise  # pragma: no cover - np.array failed but every token parsed
    return flat, counts


def _validated(
    flat: np.ndarray,
    counts: np.ndarray,
    n_pixels: int | np.ndarray,
    where: str | None,
    row_names: Sequence[str] | None,
    canonical: bool,
) -> Runs:
    """Runs from parsed values, after checking every run against its image."""
    tokens_n = len(counts)
    starts1 = flat[0::2]
    lengths = flat[1::2]
    offsets = np.concatenate([[0], np.cumsum(counts // 2)])
    run_row = np.repeat(np.arange(tokens_n), counts // 2)
    limit = np.broadcast_to(np.asarray(n_pixels, dtype=np.int64), (tokens_n,))[run_row]

    def fail(mask: np.ndarray, what: str) -> None:
        bad = np.flatnonzero(mask)
        if len(bad):
            j = int(bad[0])
            raise CellpipeError(
                f"{_row_name(row_names, int(run_row[j]))}: {what} (run {j - offsets[run_row[j]] + 1}: "
                f"start {starts1[j]}, length {lengths[j]})",
                where=where,
            )

    fail(starts1 < 1, "RLE start < 1 (starts are 1-based)")
    fail(lengths < 1, "RLE run length < 1")
    # compare start and length separately first: their sum can overflow int64
    past = (starts1 > limit) | (lengths > limit) | (starts1 + np.minimum(lengths, limit) - 1 > limit)
    fail(past, f"RLE run goes past the image's {int(limit[0]) if len(limit) else 0} pixels")
    same = run_row[1:] == run_row[:-1]
    overlap = np.zeros(len(starts1), dtype=bool)
    overlap[1:] = same & (starts1[1:] < starts1[:-1] + lengths[:-1])
    fail(overlap, "RLE runs are unsorted or overlap")
    return Runs(starts1 - 1, lengths, offsets, canonical)


def parse(rle: str, shape: Shape, *, where: str | None = None, allow_empty: bool = True) -> Runs:
    """Parse one RLE string (see :func:`parse_many`)."""
    return parse_many([rle], shape[0] * shape[1], where=where, allow_empty=allow_empty)


# --------------------------------------------------------------------------- masks


def decode(rle: str, shape: Shape) -> np.ndarray:
    """One Kaggle RLE string → boolean mask of ``shape`` (height, width)."""
    runs = parse(rle, shape)
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    flat[_ranges(runs.starts, runs.lengths)] = True
    return flat.reshape(shape)


def runs_from_flat_indices(mask_of: np.ndarray, pixel: np.ndarray, n: int) -> Runs:
    """Runs of ``n`` masks from (mask index, flat pixel) pairs sorted by mask then pixel."""
    if len(pixel) == 0:
        return Runs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(n + 1, np.int64))
    brk = np.ones(len(pixel), dtype=bool)
    brk[1:] = (np.diff(pixel) != 1) | (mask_of[1:] != mask_of[:-1])
    first = np.flatnonzero(brk)
    lengths = np.diff(np.append(first, len(pixel)))
    starts = pixel[first]
    counts = np.bincount(mask_of[first], minlength=n)
    return Runs(starts.astype(np.int64), lengths.astype(np.int64), np.concatenate([[0], np.cumsum(counts)]))


def from_masks(masks: np.ndarray) -> Runs:
    """Runs of a stack of boolean masks ``(n, height, width)``."""
    masks = np.asarray(masks, dtype=bool)
    n = masks.shape[0]
    mask_of, pixel = np.nonzero(masks.reshape(n, -1))
    return runs_from_flat_indices(mask_of, pixel, n)


def from_label_image(labels: np.ndarray) -> tuple[np.ndarray, Runs]:
    """(label values, runs) of every non-zero label of a label image, in label order."""
    flat = np.asarray(labels).ravel()
    pixel = np.flatnonzero(flat)
    lab = flat[pixel]
    if len(lab) and lab.min() >= 0 and lab.max() < 2**16:
        lab = lab.astype(np.uint16)  # numpy's stable sort is a linear radix sort for 16-bit keys
    order = np.argsort(lab, kind="stable")
    pixel, lab = pixel[order], lab[order]
    first = np.ones(len(lab), dtype=bool)
    first[1:] = lab[1:] != lab[:-1]
    values = lab[first].astype(flat.dtype)
    mask_of = np.cumsum(first) - 1
    return values, runs_from_flat_indices(mask_of.astype(np.int64), pixel.astype(np.int64), len(values))


def from_csr(matrix: sp.csr_matrix) -> Runs:
    """Runs of the rows of a sparse ``(n, height*width)`` instance matrix."""
    m = matrix.tocsr()
    m.sort_indices()
    mask_of = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    return runs_from_flat_indices(mask_of, m.indices.astype(np.int64), m.shape[0])


def to_strings(runs: Runs) -> list[str]:
    """Kaggle RLE strings (1-based starts) of every mask in ``runs``."""
    pairs = np.empty(2 * len(runs.starts), dtype=np.int64)
    pairs[0::2] = runs.starts + 1
    pairs[1::2] = runs.lengths
    values = pairs.tolist()  # Python ints format faster than a numpy string array
    bounds = (2 * runs.offsets).tolist()
    join = " ".join
    return [join(map(str, values[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]


def encode(mask: np.ndarray) -> str:
    """Boolean mask ``(height, width)`` → Kaggle RLE string ('' for an empty mask)."""
    return to_strings(from_masks(np.asarray(mask)[None]))[0]


def to_csr(runs: Runs, n_pixels: int) -> sp.csr_matrix:
    """Sparse boolean instance matrix ``(n, n_pixels)``, one row per mask."""
    _, pixel = runs.pixels()
    counts = runs.areas()
    indptr = np.concatenate([[0], np.cumsum(counts)])
    data = np.ones(len(pixel), dtype=np.float32)
    return sp.csr_matrix((data, pixel, indptr), shape=(runs.n, n_pixels))


def label_image(runs: Runs, shape: Shape) -> np.ndarray:
    """Label image (0 = background, k + 1 = mask k); later masks win overlapping pixels."""
    mask_of, pixel = runs.pixels()
    labels = np.zeros(shape[0] * shape[1], dtype=np.int32)
    labels[pixel] = mask_of + 1
    return labels.reshape(shape)


def boxes(runs: Runs, width: int) -> np.ndarray:
    """COCO boxes ``[x, y, w, h]`` (integer pixel extents) of every mask, from its runs.

    A run that wraps onto the next image row covers the last and first column.
    """
    n = runs.n
    out = np.zeros((n, 4), dtype=np.int64)
    if len(runs.starts) == 0:
        return out
    s, e = runs.starts, runs.starts + runs.lengths - 1
    ys, ye = s // width, e // width
    wraps = ye > ys
    xs = np.where(wraps, 0, s % width)
    xe = np.where(wraps, width - 1, e % width)
    row = runs.row
    big = np.iinfo(np.int64).max
    x0 = np.full(n, big)
    y0 = np.full(n, big)
    x1 = np.full(n, -1)
    y1 = np.full(n, -1)
    np.minimum.at(x0, row, xs)
    np.minimum.at(y0, row, ys)
    np.maximum.at(x1, row, xe)
    np.maximum.at(y1, row, ye)
    has = np.diff(runs.offsets) > 0
    out[has] = np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], axis=1)[has]
    return out


def to_coco(runs: Runs, shape: Shape) -> list[dict]:
    """COCO compressed RLE (pycocotools' column-major counts) of every mask.

    The row-major runs are re-ordered column-major in one vectorised pass over all
    pixels of all masks (no full-size mask per cell); pycocotools compresses the counts. Equal to
    ``pycocotools.mask.encode(np.asfortranarray(full_mask))`` for each mask.
    """
    h, w = shape
    if runs.n == 0:
        return []
    mask_of, pixel = runs.pixels()
    # scatter every pixel into its mask's box stored column by column; reading the
    # set positions back in order yields each mask's pixels in column-major order,
    # with no sort (linear in the total box area)
    x0, y0, bw, bh = boxes(runs, w).T
    bh = np.maximum(bh, 1)
    offsets = np.concatenate([[0], np.cumsum(bw * bh)])
    y = pixel // w
    x = pixel - y * w
    buf = np.zeros(int(offsets[-1]), dtype=bool)
    buf[offsets[mask_of] + (x - x0[mask_of]) * bh[mask_of] + (y - y0[mask_of])] = True
    pos = np.flatnonzero(buf)
    mask_of = np.searchsorted(offsets, pos, side="right") - 1
    local = pos - offsets[mask_of]
    col = local // bh[mask_of]
    cm = (x0[mask_of] + col) * h + y0[mask_of] + (local - col * bh[mask_of])
    cm_runs = runs_from_flat_indices(mask_of, cm, runs.n)
    # counts alternate background/foreground lengths, starting with background
    starts, lengths, off = cm_runs.starts, cm_runs.lengths, cm_runs.offsets
    first_in_mask = np.zeros(len(starts), dtype=bool)
    first_in_mask[off[:-1][np.diff(off) > 0]] = True
    prev_end = np.zeros(len(starts), dtype=np.int64)
    prev_end[1:] = starts[:-1] + lengths[:-1]
    gaps = np.where(first_in_mask, starts, starts - prev_end)
    inter = np.empty(2 * len(starts), dtype=np.int64)
    inter[0::2] = gaps
    inter[1::2] = lengths
    total = h * w
    objs = []
    for k in range(runs.n):
        a, b = off[k], off[k + 1]
        counts = inter[2 * a : 2 * b].tolist()
        tail = total - (int(starts[b - 1] + lengths[b - 1]) if b > a else 0)
        if tail > 0 or b == a:
            counts.append(tail)
        objs.append({"size": [h, w], "counts": counts})
    out = mask_util.frPyObjects(objs, h, w)
    for o in out:
        o["counts"] = o["counts"].decode("ascii")
    return out
