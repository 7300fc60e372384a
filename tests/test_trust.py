"""Issue 13's classes through the real CLI: checkpoints are data, exit codes scripts can
rely on, no silent wrong answers, data values never become code or paths, any image
size. (The cache-closure classes are in ``test_dvc_deps.py``; the DAG-level ones —
quoted paths, workspace independence — in ``test_dvc.py``.)
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cellpipe import checkpoints, prediction_table, rle, tables
from cellpipe.errors import CellpipeError
from cellpipe.images import list_images, read_grey
from tests.conftest import TINY_MODEL, cellpipe_checkpoint, decode_and_split, run_cli, score_cli, tiny_model, write_params
from tests.helpers import ann, finetune_on, livecell_folder, one_line_error, run_livecell

# ---------------------------------------------------------------- checkpoints are data, never code


class Evil:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save(
        {"model": {"w": torch.zeros(1)}, "model_config": {}, "classes": ["cell"], "iteration": 1, "payload": Evil(marker)}, path
    )
    return path


def test_the_evil_pickle_would_run_code_if_loaded_unsafely(tmp_path):
    """The test's own premise: a plain unpickle of the file creates the marker."""
    marker = tmp_path / "pwned"
    torch.load(evil_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def test_predict_refuses_a_checkpoint_holding_code(tmp_path):
    marker = tmp_path / "pwned"
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (70, 52), 90).save(images / "a.png")
    (tmp_path / "p.yaml").write_text("predict: {tta: false, tta_iou: 0.5, detections_per_img: 0}\n")
    proc = run_cli(
        "predict",
        "--checkpoint",
        str(evil_checkpoint(tmp_path / "evil.pt", marker)),
        "--skip-val",
        "--test-dir",
        str(images),
        "--test-out",
        str(tmp_path / "out/t.parquet"),
        "--params",
        str(tmp_path / "p.yaml"),
    )
    one_line_error(proc, "evil.pt", "refusing to load it", "posix.system")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_finetune_refuses_an_init_checkpoint_holding_code(tmp_path, tiny_kaggle):
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    proc = finetune_on(tiny_kaggle, tmp_path, None, "--init-checkpoint", str(evil))
    one_line_error(proc, "evil.pt", "refusing to load it")
    assert not marker.exists() and not list(tmp_path.glob("ft/*.pt"))


def test_finetune_refuses_to_resume_from_a_last_pt_holding_code(tmp_path, tiny_kaggle):
    marker = tmp_path / "pwned"
    (tmp_path / "ft").mkdir()
    evil_checkpoint(tmp_path / "ft" / "last.pt", marker)

    def edit(p):
        p["finetune"].update(init="none", iters=2, eval_every=2)

    proc = finetune_on(tiny_kaggle, tmp_path, edit)
    one_line_error(proc, "last.pt", "refusing to load it", "delete it to start this training afresh")
    assert not marker.exists() and not (tmp_path / "ft" / "best.pt").exists()


def test_model_zoo_pickles_load_numpy_only(tmp_path):
    """detectron2 ``.pkl`` files: numpy arrays load, anything callable is refused."""
    good = tmp_path / "zoo.pkl"
    good.write_bytes(pickle.dumps({"model": {"w": np.arange(6.0).reshape(2, 3)}, "__author__": "x"}))
    assert checkpoints.load_pickle(good)["model"]["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"model": Evil(marker)}))
    with pytest.raises(CellpipeError, match="evil.pkl: checkpoint holds Python objects .*posix.system"):
        checkpoints.load_pickle(bad)
    assert not marker.exists()


# ---------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--bogus"],
        ["decode", "--nope"],
        ["check-submission"],
        ["check-submission", "a", "b"],
        ["score", "--duplicates", "maybe"],
    ],
    ids=["bare", "unknown_option", "unknown_stage_option", "missing_argument", "extra_argument", "bad_choice"],
)
def test_usage_mistakes_print_usage_only_and_exit_2(args):
    proc = run_cli(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    out = proc.stdout + proc.stderr
    assert "Usage:" in out and "Traceback" not in out
    assert len(out.splitlines()) < 60


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "CELLPIPE_NO_PROGRESS": "1", "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "stages", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def interrupt_after(proc: subprocess.Popen, needle: str, signum: int, delay: float = 0.0) -> tuple[int, str]:
    """Send ``signum`` once ``needle`` appears on the command's stderr; its exit code and whole stderr."""
    import time

    seen = []
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            time.sleep(delay)
            proc.send_signal(signum)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    return proc.returncode, "".join(seen) + rest


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_an_interrupted_data_stage_exits_non_zero_and_leaves_no_output(tmp_path, signum, code, word):
    """synth is stopped while it writes the LIVECell folder: exit 128+signal, one line, neither folder (its two
    outputs are replaced together or not at all: the finished Kaggle folder is not committed alone)."""
    params = tmp_path / "p.yaml"
    params.write_text(
        json.dumps(
            {
                "synth": {
                    "seed": 0,
                    "images_per_type": {"shsy5y": 1, "astro": 0, "cort": 0},
                    "images_per_sample": 1,
                    "cells_scale": 0.1,
                    "test_images": 0,
                    "livecell_images": 400,
                    "livecell_cells_scale": 0.3,
                }
            }
        )
    )
    proc = start(["synth", "--kaggle-out", "k", "--livecell-out", "l", "--params", str(params)], tmp_path)
    rc, err = interrupt_after(proc, "training images", signum, delay=0.5)
    assert rc == code, err
    assert err.strip().splitlines()[-1].strip() == word and "Traceback" not in err
    assert not (tmp_path / "k").exists() and not (tmp_path / "l").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_interrupted_training_exits_130_without_a_summary(tmp_path, tiny_kaggle):
    p = write_params(tmp_path / "p.yaml", lambda d: d["finetune"].update(init="none", iters=5000, eval_every=5000))
    for stage, out in (
        ("decode", ["--annotations-out", "a.parquet", "--images-out", "i.parquet"]),
        (
            "coco",
            ["--annotations", "a.parquet", "--images", "i.parquet", "--folds-out", "folds.json", "--lockbox-out", "lb.json"],
        ),
    ):
        extra = ["--kaggle-dir", str(tiny_kaggle)] if stage == "decode" else []
        run_cli(stage, *extra, *out, "--params", str(p), cwd=tmp_path, check=True)
    proc = start(["finetune", "--train", "folds.json", "--fold", "0", "--out", "ft", "--params", str(p)], tmp_path)
    rc, err = interrupt_after(proc, "iterations", signal.SIGINT, delay=2.0)
    assert rc == 130 and "interrupted" in err and "Traceback" not in err, err
    assert not (tmp_path / "ft" / "summary.json").exists()
    assert not list((tmp_path / "ft").glob(".*.tmp"))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "params section 'cv' is missing (the file holds no sections)"),
        (b"# only a comment\n", "params section 'cv' is missing"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not UTF-8 text"),
        (b"cv: 3\n", "cv must be a mapping"),
    ],
    ids=["empty", "comment_only", "binary", "section_not_a_mapping"],
)
def test_params_files_that_say_nothing_useful(tmp_path, content, message):
    (tmp_path / "p.yaml").write_bytes(content)
    one_line_error(run_cli("coco", "--params", str(tmp_path / "p.yaml")), "p.yaml", message)


def test_threshold_grid_rejects_booleans(tmp_path):
    write_params(tmp_path / "p.yaml", lambda d: d["thresholds"].update(grid=[True, 0.5]))
    one_line_error(run_cli("thresholds", "--params", str(tmp_path / "p.yaml")), "thresholds.grid must be")


# ---------------------------------------------------------------- no silent wrong answers


def predict_folder(tmp_path: Path, folder: Path, *extra: str):
    """``cellpipe predict --skip-val`` of ``tmp_path/m.pt`` on ``folder`` → ``tmp_path/t.parquet``."""
    (tmp_path / "p.yaml").write_text("predict: {tta: false, tta_iou: 0.5, detections_per_img: 0}\n")
    return run_cli("predict", "--checkpoint", str(tmp_path / "m.pt"), "--skip-val", "--test-dir", str(folder),
                   "--test-out", str(tmp_path / "t.parquet"), "--params", str(tmp_path / "p.yaml"), *extra)  # fmt: skip


def truth_predictions(
    train_csv: Path, ids: list[str], extra: dict[str, tuple[int, int]] | None = None
) -> prediction_table.Predictions:
    """Perfect predictions (the true masks, score 0.9) of ``ids``, plus empty images ``extra``."""
    df = tables.read_train_csv(train_csv)
    df = df[df["id"].isin(ids)]
    rows = pd.DataFrame(
        {
            "image_id": df["id"],
            "label": df["cell_type"],
            "score": np.float32(0.9),
            "height": df["height"],
            "width": df["width"],
            "rle": df["annotation"],
        }
    )
    sizes = {i: (int(g["height"].iloc[0]), int(g["width"].iloc[0])) for i, g in df.groupby("id", sort=False)}
    return prediction_table.Predictions(rows.reset_index(drop=True), {**sizes, **(extra or {})}, "<test>")


def score(tmp_path: Path, preds: Path, truth: Path, *extra: str):
    return score_cli(tmp_path, preds, truth, *extra)


def test_score_with_no_image_in_common_is_an_error(tmp_path, tiny_kaggle):
    prediction_table.write(truth_predictions(tiny_kaggle / "train.csv", [], {"0123456789ab": (520, 704)}), tmp_path / "p.parquet")
    one_line_error(score(tmp_path, tmp_path / "p.parquet", tiny_kaggle / "train.csv"), "p.parquet", "no image of the truth")
    assert not (tmp_path / "s.json").exists()


def test_score_with_some_images_in_common_warns_with_counts(tmp_path, tiny_kaggle):
    ids = list(dict.fromkeys(pd.read_csv(tiny_kaggle / "train.csv")["id"]))
    pred = truth_predictions(tiny_kaggle / "train.csv", ids[:4], {"0123456789ab": (520, 704)})
    prediction_table.write(pred, tmp_path / "p.parquet")
    proc = score(tmp_path, tmp_path / "p.parquet", tiny_kaggle / "train.csv")
    assert proc.returncode == 0, proc.stderr
    err = " ".join(proc.stderr.split())
    assert f"{len(ids) - 4} truth image(s) were not predicted" in err and "1 predicted image(s) are not in the truth" in err
    metrics = json.loads((tmp_path / "s.json").read_text())
    assert metrics["images"] == 4 and metrics["map_iou"] == 1.0  # the 4 perfect images, nothing silently at 0
    assert metrics["truth_images_not_predicted"] == len(ids) - 4 and metrics["predicted_images_without_truth"] == 1


def test_an_image_predicted_without_detections_is_scored_not_dropped(tmp_path, tiny_kaggle):
    ids = list(dict.fromkeys(pd.read_csv(tiny_kaggle / "train.csv")["id"]))
    pred = truth_predictions(tiny_kaggle / "train.csv", ids[:1], {ids[1]: (520, 704)})  # ids[1]: no detections
    prediction_table.write(pred, tmp_path / "p.parquet")
    proc = score(tmp_path, tmp_path / "p.parquet", tiny_kaggle / "train.csv")
    metrics = json.loads((tmp_path / "s.json").read_text())
    assert metrics["images"] == 2 and metrics["map_iou"] == pytest.approx(0.5), proc.stderr


def test_score_accepts_the_duplicates_policy(tmp_path, tiny_kaggle):
    df = pd.read_csv(tiny_kaggle / "train.csv", dtype=str, keep_default_na=False)
    pd.concat([df, df.iloc[[0]]]).to_csv(tmp_path / "dup.csv", index=False)
    prediction_table.write(truth_predictions(tiny_kaggle / "train.csv", list(df["id"].unique())), tmp_path / "p.parquet")
    one_line_error(score(tmp_path, tmp_path / "p.parquet", tmp_path / "dup.csv"), "dup.csv", "--duplicates drop")
    proc = score(tmp_path, tmp_path / "p.parquet", tmp_path / "dup.csv", "--duplicates", "drop")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "s.json").read_text())["map_iou"] == 1.0


def test_thresholds_with_no_image_in_common_is_an_error(tmp_path, tiny_kaggle):
    decode_and_split(tiny_kaggle, tmp_path, write_params(tmp_path / "p.yaml"))
    prediction_table.write(truth_predictions(tiny_kaggle / "train.csv", [], {"0123456789ab": (520, 704)}), tmp_path / "v.parquet")
    proc = run_cli(
        "thresholds",
        "--predictions",
        str(tmp_path / "v.parquet"),
        "--val",
        str(tmp_path / "val.json"),
        "--truth",
        str(tmp_path / "a.parquet"),
        "--out",
        str(tmp_path / "th.json"),
        "--sweep-out",
        str(tmp_path / "s.csv"),
        "--counts-out",
        str(tmp_path / "c.csv"),
        "--params",
        str(tmp_path / "p.yaml"),
    )
    one_line_error(proc, "v.parquet", "no image of the truth")
    assert not (tmp_path / "th.json").exists()


def submit(tmp_path: Path, sample_ids: list[str] | None, *extra: str):
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("id,predicted\n" + "".join(f"{i},\n" for i in sample_ids or []))
    return run_cli(
        "submit",
        "--predictions",
        str(tmp_path / "t.parquet"),
        "--sample-submission",
        str(sample),
        "--thresholds",
        str(tmp_path / "none.json"),
        "--out",
        str(tmp_path / "sub.csv"),
        *extra,
    )


def test_submit_refuses_sample_ids_that_were_not_predicted(tmp_path, tiny_kaggle):
    ids = list(dict.fromkeys(pd.read_csv(tiny_kaggle / "train.csv")["id"]))[:2]
    prediction_table.write(truth_predictions(tiny_kaggle / "train.csv", ids), tmp_path / "t.parquet")
    (tmp_path / "none.json").write_text(json.dumps({"score_threshold": {}, "min_size": 0}))
    one_line_error(
        submit(tmp_path, [*ids, "0123456789ab"]),
        "sample_submission.csv",
        "1 of its 3 image(s) were not predicted",
        "0123456789ab",
        "--allow-missing",
    )
    assert not (tmp_path / "sub.csv").exists()
    proc = submit(tmp_path, [*ids, "0123456789ab"], "--allow-missing")
    assert proc.returncode == 0 and "1 image(s) were not predicted and get an empty row" in proc.stderr, proc.stderr
    sub = pd.read_csv(tmp_path / "sub.csv", keep_default_na=False)
    assert sub.loc[sub["id"] == "0123456789ab", "predicted"].tolist() == [""]


def test_submit_refuses_a_header_only_sample_submission(tmp_path, tiny_kaggle):
    prediction_table.write(truth_predictions(tiny_kaggle / "train.csv", []), tmp_path / "t.parquet")
    (tmp_path / "none.json").write_text(json.dumps({"score_threshold": {}, "min_size": 0}))
    one_line_error(submit(tmp_path, []), "sample_submission.csv", "no image ids")
    assert not (tmp_path / "sub.csv").exists()


def test_two_files_of_one_id_in_the_test_folder_are_an_error(tmp_path):
    folder = tmp_path / "test"
    folder.mkdir()
    Image.new("L", (70, 52)).save(folder / "a.png")
    Image.new("L", (70, 52)).save(folder / "a.tif")
    cellpipe_checkpoint(tmp_path / "m.pt", TINY_MODEL, ["shsy5y", "astro", "cort"])
    proc = predict_folder(tmp_path, folder)
    one_line_error(proc, "test", "two files for image a: a.png and a.tif")


def grey_variants(folder: Path, grey: np.ndarray) -> None:
    """The same grey pixels as a plain PNG, a palette PNG (palette reversed), grey+alpha, upper-case suffix."""
    folder.mkdir()
    Image.fromarray(grey).save(folder / "plain.png")
    palette = Image.fromarray((255 - grey).astype(np.uint8), mode="L").convert("P")  # index k ↔ grey k
    palette.putpalette([c for k in range(256) for c in (255 - k,) * 3])  # index k now means grey 255 - k
    palette.save(folder / "palette.png")
    Image.fromarray(np.stack([grey, np.full_like(grey, 200)], -1), mode="LA").save(folder / "alpha.png")
    Image.fromarray(grey).save(folder / "upper.PNG")
    (folder / "._plain.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS resource fork, not an image
    (folder / ".DS_Store").write_bytes(b"junk")


def test_palette_alpha_and_upper_case_images_read_as_their_grey_values(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (52, 70), dtype=np.uint8)
    grey_variants(tmp_path / "f", grey)
    found = list_images(tmp_path / "f")
    assert sorted(found) == ["alpha", "palette", "plain", "upper"]
    for path in found.values():
        assert np.array_equal(read_grey(path), grey), path.name


def test_predict_sees_the_same_pixels_in_every_grey_encoding(tmp_path):
    """Through the CLI: a random model's detections depend on every pixel, and are the same for all four files."""
    grey = (np.random.default_rng(1).normal(128, 30, (104, 140)).clip(0, 255)).astype(np.uint8)
    grey_variants(tmp_path / "f", grey)
    cellpipe_checkpoint(tmp_path / "m.pt", tiny_model(box_score_thresh=0.0), ["shsy5y", "astro", "cort"])
    proc = predict_folder(tmp_path, tmp_path / "f")
    assert proc.returncode == 0, proc.stderr
    pred = prediction_table.read(tmp_path / "t.parquet")
    assert sorted(pred.sizes) == ["alpha", "palette", "plain", "upper"]
    det = pred.detections
    plain = det[det["image_id"] == "plain"].drop(columns="image_id").reset_index(drop=True)
    assert len(plain) > 0
    for other in ("palette", "alpha", "upper"):
        pd.testing.assert_frame_equal(
            det[det["image_id"] == other].drop(columns="image_id").reset_index(drop=True), plain, obj=other
        )


def test_decode_ignores_hidden_files_and_reads_upper_case_suffixes(kaggle_copy, tmp_path):
    first = sorted((kaggle_copy / "train").glob("*.png"))[0]
    first.rename(first.with_suffix(".PNG"))
    (kaggle_copy / "train" / f"._{first.name}").write_bytes(b"\x00\x05\x16\x07")
    (kaggle_copy / "train" / ".DS_Store").write_bytes(b"junk")
    proc = run_cli(
        "decode",
        "--kaggle-dir",
        str(kaggle_copy),
        "--annotations-out",
        str(tmp_path / "a.parquet"),
        "--images-out",
        str(tmp_path / "i.parquet"),
        "--params",
        str(write_params(tmp_path / "p.yaml")),
    )
    assert proc.returncode == 0, proc.stderr
    images = pd.read_parquet(tmp_path / "i.parquet")
    assert first.stem in set(images["image_id"]) and f"{first.stem}.PNG" in set(images["file_name"])


# ---------------------------------------------------------------- data values are not paths


@pytest.mark.parametrize("bad_id", ["../../etc/x", "a/b", "a\\b", "..", ".hidden"])
def test_image_ids_that_would_leave_their_folder_are_rejected(kaggle_copy, tmp_path, bad_id):
    df = pd.read_csv(kaggle_copy / "train.csv", dtype=str, keep_default_na=False)
    df.loc[df["id"] == df["id"].iloc[-1], "id"] = bad_id
    df.to_csv(kaggle_copy / "train.csv", index=False)
    proc = run_cli(
        "decode",
        "--kaggle-dir",
        str(kaggle_copy),
        "--annotations-out",
        str(tmp_path / "o/a.parquet"),
        "--images-out",
        str(tmp_path / "o/i.parquet"),
        "--params",
        str(write_params(tmp_path / "p.yaml")),
    )
    line = int(np.flatnonzero(df["id"].to_numpy() == bad_id)[0]) + 2
    one_line_error(proc, "train.csv", f"line {line}: image id", "not a plain name")
    assert not (tmp_path / "o").exists()


def test_coco_file_names_that_would_leave_their_folder_are_rejected(tmp_path):
    folder = livecell_folder(tmp_path, [ann()])
    data = json.loads((folder / "x.json").read_text())
    data["images"][0]["file_name"] = "../secret.tif"
    (folder / "x.json").write_text(json.dumps(data))
    one_line_error(run_livecell(folder, tmp_path), "x.json", "image 1: file_name '../secret.tif' is not a plain name")


def test_stages_run_from_another_working_directory(tmp_path, tiny_kaggle):
    """COCO image paths are stored relative to the JSON: predict run elsewhere finds every val image."""
    work = tmp_path / "work"
    work.mkdir()
    p = write_params(work / "p.yaml")
    run_cli(
        "decode",
        "--kaggle-dir",
        os.path.relpath(tiny_kaggle, work),
        "--annotations-out",
        "i/a.parquet",
        "--images-out",
        "i/i.parquet",
        "--params",
        "p.yaml",
        cwd=work,
        check=True,
    )
    run_cli(
        "coco",
        "--annotations",
        "i/a.parquet",
        "--images",
        "i/i.parquet",
        "--folds-out",
        "c/folds.json",
        "--lockbox-out",
        "c/lockbox.json",
        "--params",
        "p.yaml",
        cwd=work,
        check=True,
    )
    stored = {im["path"] for im in json.loads((work / "c/folds.json").read_text())["images"]}
    assert all(not Path(s).is_absolute() and s.startswith("../") for s in stored), stored
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    cellpipe_checkpoint(tmp_path / "m.pt", TINY_MODEL, ["shsy5y", "astro", "cort"])
    (elsewhere / "p.yaml").write_text("predict: {tta: false, tta_iou: 0.5, detections_per_img: 0}\n")
    proc = run_cli(
        "predict",
        "--checkpoint",
        "../../m.pt",
        "--val",
        "../../work/c/folds.json",
        "--kaggle-dir",
        os.path.relpath(tiny_kaggle, elsewhere),
        "--val-out",
        "v.parquet",
        "--test-out",
        "t.parquet",
        "--params",
        "p.yaml",
        cwd=elsewhere,
    )
    assert proc.returncode == 0, proc.stderr
    val_ids = {im["kaggle_id"] for im in json.loads((work / "c/folds.json").read_text())["images"]}
    assert set(prediction_table.read(elsewhere / "v.parquet").sizes) == val_ids
    assert p.is_file()


# ---------------------------------------------------------------- any image size


def test_predict_score_and_check_submission_on_images_of_other_sizes(tmp_path):
    """A folder of a 720×704 and a 400×600 (height × width) image, truth in train.csv format."""
    folder = tmp_path / "test"
    folder.mkdir()
    rng = np.random.default_rng(3)
    sizes = {"tall": (720, 704), "small": (400, 600)}
    rows = []
    for name, (h, w) in sizes.items():
        grey = rng.normal(120, 10, (h, w))
        mask = np.zeros((h, w), bool)
        mask[h - 60 : h - 20, w - 70 : w - 20] = True  # a cell near the far corner: past 520×704 for "tall"
        grey[mask] += 60
        Image.fromarray(grey.clip(0, 255).astype(np.uint8)).save(folder / f"{name}.png")
        rows.append(
            {
                "id": name,
                "annotation": rle.encode(mask),
                "width": w,
                "height": h,
                "cell_type": "cort",
                "plate_time": "",
                "sample_date": "",
                "sample_id": name,
                "elapsed_timedelta": "",
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "truth.csv", index=False)
    (tmp_path / "sample_submission.csv").write_text("id,predicted\ntall,\nsmall,\n")
    cellpipe_checkpoint(tmp_path / "m.pt", tiny_model(box_score_thresh=0.0), ["shsy5y", "astro", "cort"])
    sub, none = str(tmp_path / "sub.csv"), str(tmp_path / "none.json")
    proc = predict_folder(tmp_path, folder, "--submission-out", sub, "--thresholds", none)
    assert proc.returncode == 0, proc.stderr
    assert prediction_table.read(tmp_path / "t.parquet").sizes == sizes
    proc = run_cli("check-submission", str(tmp_path / "sub.csv"), "--sample-submission", str(tmp_path / "sample_submission.csv"))
    assert proc.returncode == 0 and "is valid" in proc.stderr, proc.stderr
    # the truth scored against itself at these sizes: exactly 1 (a fixed shape would fail or misplace it)
    prediction_table.write(truth_predictions(tmp_path / "truth.csv", list(sizes)), tmp_path / "perfect.parquet")
    proc = score(tmp_path, tmp_path / "perfect.parquet", tmp_path / "truth.csv")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "s.json").read_text())
    assert metrics["images"] == 2 and metrics["map_iou"] == 1.0
    proc = score(tmp_path, tmp_path / "t.parquet", tmp_path / "truth.csv")
    assert proc.returncode == 0 and json.loads((tmp_path / "s.json").read_text())["images"] == 2, proc.stderr


def test_predictions_written_by_another_tool_are_refused(tmp_path):
    pd.DataFrame({c: [] for c in prediction_table.COLUMNS}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(CellpipeError, match="does not list its images"):
        prediction_table.read(tmp_path / "p.parquet")
