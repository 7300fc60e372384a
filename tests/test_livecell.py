"""LIVECell at its real size: the streaming normaliser, the LIVECell-scale generator and the bounded sample cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_util

from benchmarks import livecell_data
from cellpipe import coco, livecell
from cellpipe.errors import CellpipeError
from cellpipe.models.rcnn import CocoInstances
from cellpipe.samples import SampleCache
from tests.conftest import SHARED, requires_shared

SAMPLE = SHARED / "livecell" / "livecell_coco_val_subset5img.json"


def _same_as_normalise(src: Path, image_root: Path, out: Path) -> None:
    """The stream's output holds what coco.normalise makes of the whole file, masks as RLE."""
    n_images, n_cells = livecell.normalise_file(src, out, image_root=image_root)
    whole = coco.normalise(json.loads(src.read_text()), where=str(src), image_root=image_root, single_class=True)
    streamed = coco.normalise(coco.load_json(out), where=str(out), single_class=True)
    assert (n_images, n_cells) == (len(whole["images"]), len(whole["annotations"]))
    assert [im["path"] for im in streamed["images"]] == [im["path"] for im in whole["images"]]
    assert streamed["categories"] == whole["categories"] == coco.SINGLE_CLASS
    for a, b in zip(whole["annotations"], streamed["annotations"], strict=True):
        assert (a["id"], a["image_id"], a["area"], a["bbox"]) == (b["id"], b["image_id"], b["area"], b["bbox"])
        assert isinstance(b["segmentation"]["counts"], str)
        h, w = b["segmentation"]["size"]
        ma = mask_util.decode(coco.segmentation_rle(a["segmentation"], h, w))
        mb = mask_util.decode(coco.segmentation_rle(b["segmentation"], h, w))
        assert np.array_equal(ma, mb)


@requires_shared()
def test_stream_equals_whole_file_normalise_on_the_real_sample(tmp_path):
    _same_as_normalise(SAMPLE, SHARED / "livecell" / "images", tmp_path / "out.json")


@requires_shared()
def test_stream_reads_annotations_keyed_by_id_and_placed_before_the_images(tmp_path):
    """Official releases key annotations by id; a file may also list them before 'images'."""
    raw = json.loads(SAMPLE.read_text())
    reordered = {
        "annotations": {str(a["id"]): a for a in raw["annotations"]},
        "info": raw["info"],
        "categories": raw["categories"],
        "images": raw["images"],
        "extra": [1, {"x": None}],
    }
    src = tmp_path / "reordered.json"
    src.write_text(json.dumps(reordered))
    header, form = livecell.read_header(src)
    assert form == "map" and header["extra"] == [1, {"x": None}] and len(header["images"]) == len(raw["images"])
    _same_as_normalise(src, SHARED / "livecell" / "images", tmp_path / "out.json")


def _folder(tmp_path: Path, annotations) -> Path:
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((40, 50), 100, np.uint8)).save(tmp_path / "images" / "a.tif")
    src = tmp_path / "x.json"
    src.write_text(
        json.dumps(
            {
                "categories": [{"id": 1, "name": "cell"}],
                "images": [{"id": 1, "height": 40, "width": 50, "file_name": "a.tif"}],
                "annotations": annotations,
            }
        )
    )
    return src


def _ann(aid: int, **kw) -> dict:
    return {"id": aid, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 30, 1, 15, 25]], **kw}


@pytest.mark.parametrize(
    "annotations, message",
    [
        ([_ann(1), _ann(2), _ann(3, category_id=7)], "annotation 3: category_id 7"),
        ([_ann(1), _ann(1)], "annotation id 1 appears twice"),
        ("nope", "'annotations' must be a list"),
    ],
)
def test_a_bad_annotation_late_in_the_stream_leaves_no_output(tmp_path, annotations, message):
    src = _folder(tmp_path, annotations)
    out = tmp_path / "out" / "lc.json"
    with pytest.raises(CellpipeError, match=message) as err:
        livecell.normalise_file(src, out, image_root=tmp_path / "images")
    assert str(src) in str(err.value)
    assert not out.exists() and not list(out.parent.glob("*"))


def test_a_truncated_file_is_an_error_with_no_output(tmp_path):
    src = _folder(tmp_path, [_ann(k) for k in range(1, 50)])
    src.write_text(src.read_text()[:-300])
    out = tmp_path / "out" / "lc.json"
    with pytest.raises(CellpipeError, match="not valid JSON"):
        livecell.normalise_file(src, out, image_root=tmp_path / "images")
    assert not out.exists()


def test_livecell_scale_generator_writes_consistent_images_and_counts(tmp_path):
    counts = livecell_data.livecell_scale_counts(1000, 340_000, 2000, seed=0)
    assert counts.min() >= 5 and counts.max() <= 2000 and abs(counts.sum() - 340_000) < 0.01 * 340_000
    got = livecell_data.write_livecell_scale(tmp_path / "lc", 12, 1200, max_cells=400, pool=4, seed=0)
    assert got["images"] == 12 and got["cells"] > 0
    out = tmp_path / "norm.json"
    n_images, n_cells = livecell.normalise_file(got["json"], out, image_root=got["images_dir"])
    assert (n_images, n_cells) == (12, got["cells"])
    data = coco.normalise(coco.load_json(out), where=str(out))
    ids = [a["id"] for a in data["annotations"]]
    assert len(set(ids)) == len(ids)
    # each image is one of the pooled renders: the cells' masks lie on the darker cell bodies
    # or bright halos, i.e. the image and its annotations are the same picture
    first = data["images"][0]
    from cellpipe.images import read_grey

    grey = read_grey(Path(first["path"]), (first["height"], first["width"]))
    anns = [a for a in data["annotations"] if a["image_id"] == first["id"]]
    cells = coco.instances(anns, first["height"], first["width"]).max(0).toarray().reshape(grey.shape) > 0
    assert cells.any() and abs(grey[cells].mean() - grey[~cells].mean()) > 1.0


@given(
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 12), st.integers(1, 50)), min_size=1, max_size=60),
    budget=st.integers(1, 200),
)
@settings(max_examples=80, deadline=None)
def test_sample_cache_is_an_lru_within_its_budget(ops, budget):
    """Against a reference LRU: puts (new or again) and gets in any order; a re-put replaces its bytes."""
    cache = SampleCache(budget, size=lambda v: v[0])
    ref: dict[int, int] = {}  # index -> size, in recency order
    evicted = 0
    for is_put, index, size in ops:
        if is_put:
            ref.pop(index, None)
            ref[index] = size
            cache.put(index, [size])
            while sum(ref.values()) > budget and len(ref) > 1:
                del ref[next(iter(ref))]
                evicted += 1
            assert cache.get(index) == [size]  # the newest is always kept
        elif index in ref:
            ref[index] = ref.pop(index)
            assert cache.get(index) == [ref[index]]
        else:
            assert cache.get(index) is None
        assert list(cache.entries) == list(ref)
        assert cache.bytes == sum(ref.values()) and cache.evicted == evicted
        assert cache.bytes <= budget or len(ref) == 1


def test_samples_rebuilt_after_eviction_are_identical(tiny_coco):
    """A cache too small for one image rebuilds every sample: the batches stay exactly the same."""
    kw = dict(min_size=260, max_size=352, hflip=True, vflip=True, crop_size=128)
    roomy = CocoInstances(tiny_coco, **kw, cache_gb=4.0)
    tight = CocoInstances(tiny_coco, **kw, cache_gb=1e-9)
    for step in range(2 * len(roomy)):
        index = step % len(roomy)
        torch.manual_seed(step)
        a_img, a_t = roomy[index]
        torch.manual_seed(step)
        b_img, b_t = tight[index]
        assert torch.equal(a_img, b_img)
        assert all(torch.equal(a_t[k], b_t[k]) for k in ("boxes", "labels", "masks"))
    assert tight.cache.evicted >= len(tight) and roomy.cache.evicted == 0
