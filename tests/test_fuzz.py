"""Fuzzing the readers: any input parses or raises CellpipeError — never another exception.

Bounded for CI (a few thousand cases in all); raise ``FUZZ_EXAMPLES`` to fuzz longer.
"""

import contextlib
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellpipe import coco, rle, tables
from cellpipe.errors import CellpipeError

N = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck))

odd_tokens = ["", " ", "x", "1.5", "1e3", "-", "+3", "\t", "99999999999999999999"]
tokens = st.one_of(st.integers(-5, 400).map(str), st.sampled_from(odd_tokens))
rle_text = st.lists(tokens, max_size=12).map(" ".join) | st.text(max_size=40)


@FUZZ
@given(st.lists(rle_text, min_size=1, max_size=4), st.integers(1, 300))
def test_rle_parser(strings, n_pixels):
    try:
        runs = rle.parse_many(strings, n_pixels, allow_empty=True)
    except CellpipeError:
        return
    # what parses is valid: inside the image, sorted, positive, round-trips
    assert (runs.starts >= 0).all() and (runs.lengths >= 1).all()
    assert (runs.starts + runs.lengths <= n_pixels).all()
    again = rle.parse_many(rle.to_strings(runs), n_pixels, allow_empty=True)
    assert rle.to_csr(again, n_pixels).nnz == rle.to_csr(runs, n_pixels).nnz


header = "id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta"
cells = st.sampled_from(
    ["a1", "", "1 5", "3 2 1 1", "x", "704", "520", "cort", "astro", "neuron", '"', "1 1\n", "0", "-1", "1.0", "\ufeff", "\r"]
)
rows = st.lists(st.lists(cells, min_size=0, max_size=11).map(",".join), max_size=6)


@FUZZ
@given(st.booleans(), rows, st.sampled_from(["\n", "\r\n"]))
def test_csv_reader(with_header, body, newline):
    import tempfile
    from pathlib import Path

    text = newline.join(([header] if with_header else []) + body)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "train.csv"
        p.write_text(text)
        try:
            df = tables.read_train_csv(p)
        except CellpipeError:
            return
        assert list(df.columns) == list(tables.COLUMNS) and len(df) > 0
        with contextlib.suppress(CellpipeError):
            tables.build_tables(df, d, check_images=False)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 20) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
segmentation = st.one_of(
    st.lists(st.lists(st.floats(-5, 15, allow_nan=False), max_size=10), max_size=2),
    st.fixed_dictionaries({"size": st.just([10, 10]), "counts": st.sampled_from(["", "0:1", "abc", [0, 5, 95]])}),
    json_values,
)
annotation = st.fixed_dictionaries(
    {
        "id": st.integers(0, 5),
        "image_id": st.sampled_from([1, 2, "1", None]),
        "category_id": st.sampled_from([1, 2, None, "1"]),
        "segmentation": segmentation,
    }
)
coco_doc = st.fixed_dictionaries(
    {
        "images": st.lists(
            st.fixed_dictionaries(
                {
                    "id": st.sampled_from([1, 2, "x"]),
                    "height": st.just(10),
                    "width": st.sampled_from([10, "w"]),
                    "file_name": st.just("a.tif"),
                }
            ),
            max_size=2,
        ),
        "categories": st.just([{"id": 1, "name": "cell"}]),
        "annotations": st.one_of(
            st.lists(annotation, max_size=3), st.dictionaries(st.text(max_size=3), annotation, max_size=3), json_values
        ),
    }
)


@FUZZ
@given(st.one_of(coco_doc, json_values))
def test_coco_reader(doc):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.json"
        p.write_text(json.dumps(doc))
        try:
            data = coco.load_json(p)
            out = coco.normalise(data, where=str(p), check_files=False)
        except CellpipeError:
            return
        assert isinstance(out["annotations"], list)
        assert all(a["area"] > 0 for a in out["annotations"])
