"""The data stages through the real CLI: outputs on good input, one-line errors on bad."""

import json

import pandas as pd
import pytest
from PIL import Image
from pycocotools.coco import COCO

from tests.conftest import SAMPLE, requires_shared, run_cli


def decode(kaggle, tmp_path):
    return run_cli(
        "decode",
        "--kaggle-dir",
        str(kaggle),
        "--annotations-out",
        str(tmp_path / "out/a.parquet"),
        "--images-out",
        str(tmp_path / "out/i.parquet"),
    )


def test_decode_then_coco(tiny_kaggle, tmp_path):
    """Two folds and a lockbox of whole samples; every annotation lands in exactly one file."""
    decode(tiny_kaggle, tmp_path)
    (tmp_path / "p.yaml").write_text("cv: {folds: [0, 1], lockbox_fraction: 0.3}\n")
    ann = pd.read_parquet(tmp_path / "out/a.parquet")
    img = pd.read_parquet(tmp_path / "out/i.parquet")
    truth = pd.read_csv(tiny_kaggle / "train.csv")
    assert len(ann) == len(truth) and len(img) == truth["id"].nunique()
    proc = run_cli(
        "coco",
        "--annotations",
        str(tmp_path / "out/a.parquet"),
        "--images",
        str(tmp_path / "out/i.parquet"),
        "--folds-out",
        str(tmp_path / "c/folds.json"),
        "--lockbox-out",
        str(tmp_path / "c/lockbox.json"),
        "--params",
        str(tmp_path / "p.yaml"),
        check=True,
    )
    assert proc.returncode == 0
    fo, lb = COCO(str(tmp_path / "c/folds.json")), COCO(str(tmp_path / "c/lockbox.json"))
    assert len(fo.getAnnIds()) + len(lb.getAnnIds()) == len(truth)
    samples = lambda c, keep=lambda f: True: {im["sample_id"] for im in c.dataset["images"] if keep(im.get("fold"))}  # noqa: E731
    assert not samples(fo) & samples(lb) and lb.dataset["images"]
    assert not samples(fo, lambda f: f == 0) & samples(fo, lambda f: f != 0)
    assert {im["fold"] for im in fo.dataset["images"]} == {0, 1} and len(lb.dataset["images"]) == 3


def corrupt_csv(kaggle, edit):
    df = pd.read_csv(kaggle / "train.csv", dtype=str, keep_default_na=False)
    df = edit(df)
    df.to_csv(kaggle / "train.csv", index=False)


def set_cell(col, value, row=1):
    def edit(df):
        df.loc[row, col] = value
        return df

    return edit


BAD_CSV = [
    ("odd_tokens", set_cell("annotation", "1 2 3"), "line 3: RLE has an odd number"),
    ("non_integer", set_cell("annotation", "1 2 x 4"), "line 3: RLE value 'x' is not an integer"),
    ("start_zero", set_cell("annotation", "0 5"), "line 3: RLE start < 1"),
    ("past_image", set_cell("annotation", "366000 1000"), "line 3: RLE run goes past"),
    ("unsorted", set_cell("annotation", "500 3 100 2"), "line 3: RLE runs are unsorted or overlap"),
    ("zero_length", set_cell("annotation", "100 0"), "line 3: RLE run length < 1"),
    ("negative_length", set_cell("annotation", "100 -4"), "line 3: RLE"),
    ("unknown_type", set_cell("cell_type", "neuron"), "line 3: unknown cell_type 'neuron'"),
    ("bad_width", set_cell("width", "wide"), "line 3: width 'wide' is not a positive integer"),
    ("duplicate", lambda df: pd.concat([df, df.iloc[[0]]]), "duplicate of line 2"),
    ("missing_column", lambda df: df.drop(columns=["cell_type"]), "missing column(s) cell_type"),
    ("header_only", lambda df: df.iloc[:0], "header but no rows"),
]


@pytest.mark.parametrize("name, edit, message", BAD_CSV, ids=[b[0] for b in BAD_CSV])
def test_bad_train_csv(kaggle_copy, tmp_path, name, edit, message):
    corrupt_csv(kaggle_copy, edit)
    proc = decode(kaggle_copy, tmp_path)
    assert proc.returncode == 1, proc.stderr
    err = " ".join(proc.stderr.split())
    assert message in err and "train.csv" in err
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def first_image(kaggle):
    return sorted((kaggle / "train").glob("*.png"))[0]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("empty_file", "annotation file is empty"),
        ("missing_image", "image file is missing"),
        ("corrupt_png", "unreadable or truncated image"),
        ("wrong_size", "but the annotations say 704×520"),
        ("colour_png", "expected a grey image"),
        ("unannotated_image", "has no annotations"),
    ],
)
def test_bad_files(kaggle_copy, tmp_path, damage, message):
    img = first_image(kaggle_copy)
    if damage == "empty_file":
        (kaggle_copy / "train.csv").write_text("")
    elif damage == "missing_image":
        img.unlink()
    elif damage == "corrupt_png":
        img.write_bytes(img.read_bytes()[:300])
    elif damage == "wrong_size":
        Image.new("L", (700, 520)).save(img)
    elif damage == "colour_png":
        Image.new("RGB", (704, 520), (10, 200, 30)).save(img)
    elif damage == "unannotated_image":
        Image.new("L", (704, 520)).save(kaggle_copy / "train" / "0000deadbeef.png")
    proc = decode(kaggle_copy, tmp_path)
    assert proc.returncode == 1
    assert message in " ".join(proc.stderr.split()), proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bom_crlf_and_grey_rgb_are_accepted(kaggle_copy, tmp_path):
    text = (kaggle_copy / "train.csv").read_text()
    (kaggle_copy / "train.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    img = first_image(kaggle_copy)
    Image.open(img).convert("RGB").save(img)
    proc = decode(kaggle_copy, tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_bad_params_name_the_key(tmp_path):
    (tmp_path / "p.yaml").write_text("cv: {val_fraction: 1.5, seed: 0}\n")
    proc = run_cli("coco", "--params", str(tmp_path / "p.yaml"))
    assert proc.returncode == 1 and "cv.val_fraction must be < 1 (got 1.5)" in proc.stderr
    (tmp_path / "p.yaml").write_text("cv: {val_fraction: 0.2, seed: 0, sede: 1}\n")
    proc = run_cli("coco", "--params", str(tmp_path / "p.yaml"))
    assert proc.returncode == 1 and "unknown params key cv.sede" in proc.stderr


@requires_shared()
def test_decode_real_sample(tmp_path):
    proc = decode(SAMPLE, tmp_path)
    assert proc.returncode == 0, proc.stderr
    ann = pd.read_parquet(tmp_path / "out/a.parquet")
    assert len(ann) == 356
    assert ann.groupby("image_id").size().to_dict()["98fd9ed43654"] == 176


def test_synth_is_deterministic_and_in_kaggle_layout(tmp_path):
    (tmp_path / "p.yaml").write_text(
        json.dumps(
            {
                "synth": {
                    "seed": 3,
                    "images_per_type": {"shsy5y": 1, "astro": 1, "cort": 1},
                    "images_per_sample": 2,
                    "cells_scale": 0.2,
                    "test_images": 2,
                    "livecell_images": 2,
                    "livecell_cells_scale": 0.2,
                }
            }
        )
    )
    for run in ("a", "b"):
        run_cli(
            "synth",
            "--kaggle-out",
            str(tmp_path / run / "k"),
            "--livecell-out",
            str(tmp_path / run / "l"),
            "--params",
            str(tmp_path / "p.yaml"),
            check=True,
        )
    for rel in ("k/train.csv", "k/sample_submission.csv", "l/annotations/LIVECell/livecell_coco_train.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    df = pd.read_csv(tmp_path / "a/k/train.csv")
    assert list(df.columns) == [
        "id",
        "annotation",
        "width",
        "height",
        "cell_type",
        "plate_time",
        "sample_date",
        "sample_id",
        "elapsed_timedelta",
    ]
    assert set(df["cell_type"]) == {"shsy5y", "astro", "cort"}
    assert len(list((tmp_path / "a/k/test").glob("*.png"))) == 2
    im = Image.open(next((tmp_path / "a/k/train").glob("*.png")))
    assert im.size == (704, 520) and im.mode == "L"
    lc = json.loads((tmp_path / "a/l/annotations/LIVECell/livecell_coco_train.json").read_text())
    assert isinstance(lc["annotations"], dict)
    assert all(im["file_name"].endswith(".tif") for im in lc["images"])


def test_cli_lists_stages_and_version():
    out = run_cli("--help").stdout
    assert out.index("synth") < out.index("decode") < out.index("coco")
    assert run_cli("--version").stdout.startswith("cellpipe ")
