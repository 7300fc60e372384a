import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from cellpipe import coco, rle, tables
from cellpipe.errors import CellpipeError
from tests.conftest import SAMPLE, SHARED, requires_shared


@requires_shared()
def test_decode_coco_on_real_sample_keeps_overlaps(tmp_path):
    df = tables.read_train_csv(SAMPLE / "train.csv")
    ann, images = tables.build_tables(df, SAMPLE / "train")
    assert len(ann) == 356 and len(images) == 6
    data = coco.build(images, ann)
    path = tmp_path / "all.json"
    path.write_text(json.dumps(data))
    api = COCO(str(path))
    assert len(api.getAnnIds()) == 356
    # every mask round-trips pixel for pixel and its area is its pixel count
    for a, s in zip(api.loadAnns(api.getAnnIds()), df["annotation"]):
        m = api.annToMask(a).astype(bool)
        assert np.array_equal(m, rle.decode(s, (520, 704)))
        assert a["area"] == m.sum()
    # the known overlapping image keeps its overlaps
    img = images.index[images["image_id"] == "98fd9ed43654"][0]
    sub = ann[ann["image_id"] == "98fd9ed43654"]
    runs = rle.parse_many(sub["annotation"].tolist(), 520 * 704)
    assert (rle.to_csr(runs, 520 * 704).sum(axis=0).A1 > 1).any()
    assert images.loc[img, "n_cells"] == len(sub)


@requires_shared()
def test_livecell_sample_normalises_both_annotation_forms(tmp_path):
    raw = json.loads((SHARED / "livecell" / "livecell_coco_val_subset5img.json").read_text())
    out = coco.normalise(raw, where="lc", image_root=SHARED / "livecell" / "images", single_class=True)
    assert len(out["images"]) == 5 and len(out["annotations"]) == 1243
    as_dict = {**raw, "annotations": {str(a["id"]): a for a in raw["annotations"]}}
    out2 = coco.normalise(as_dict, where="lc", image_root=SHARED / "livecell" / "images", single_class=True)
    assert out2["annotations"] == out["annotations"]
    a = out["annotations"][0]
    m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], 520, 704)))
    assert a["area"] == m.sum()


def _lc(ann, images=None):
    return {
        "images": images or [{"id": 1, "height": 10, "width": 10, "file_name": "a.tif"}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [ann],
    }


@pytest.mark.parametrize(
    "ann, message",
    [
        ({"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 2, 2]]}, "fewer than 3 points"),
        ({"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 50, 2, 3, 9]]}, "outside"),
        ({"id": 5, "image_id": 1, "category_id": 9, "segmentation": [[1, 1, 5, 1, 3, 5]]}, "category_id 9"),
        ({"id": 5, "image_id": 2, "category_id": 1, "segmentation": [[1, 1, 5, 1, 3, 5]]}, "image_id 2"),
        ({"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 1, 1, 1, 1]]}, "zero area"),
    ],
)
def test_bad_coco_is_named(ann, message):
    with pytest.raises(CellpipeError, match=message) as err:
        coco.normalise(_lc(ann), where="x.json", check_files=False)
    assert "x.json: annotation 5" in str(err.value)


def test_coco_missing_image_file(tmp_path):
    with pytest.raises(CellpipeError, match="missing"):
        coco.normalise(
            _lc({"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 1, 3, 5]]}),
            where="x.json",
            image_root=tmp_path,
        )


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, 9),
    chunk=st.integers(1, 300),
)
def test_instances_decoded_in_chunks_are_the_masks_in_c_order(shape, seed, n, chunk):
    """However many masks go through each chunk (``DECODE_PIXELS``), row k is mask k, its pixels in C order,
    each 1 — overlapping masks, empty ones and one-pixel images included."""
    h, w = shape
    masks = np.random.default_rng(seed).random((n, h, w)) < 0.3
    anns = [{"segmentation": mask_util.encode(np.asfortranarray(m.astype(np.uint8)))} for m in masks]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(coco, "DECODE_PIXELS", chunk)
        got = coco.instances(anns, h, w)
    assert got.shape == (n, h * w) and got.dtype == np.float32 and got.has_canonical_format
    assert np.array_equal(got.toarray(), masks.reshape(n, h * w).astype(np.float32))
