"""A stage's outputs are replaced together or not at all, and readers check that what belongs together matches.

Library level: :class:`cellpipe.atomic.Outputs` (all or none on an error, a failing rename
rolls the others back, SIGTERM during the renames is delivered after them). Through the
real CLI: a mixed decode pair is refused by ``coco``, a fold whose tables come from two
models by ``ensemble``, a ``score`` whose third output cannot be written leaves the first
two as they were, and write errors are one line.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest

from cellpipe import atomic, prediction_table
from cellpipe.atomic import Outputs
from tests.conftest import SAMPLE, TINY_MODEL, cellpipe_checkpoint, requires_shared, run_cli, score_cli
from tests.helpers import one_line_error


def write_set(tmp_path, texts: dict[str, str], fail: bool = False) -> None:
    with Outputs() as out:
        for name, text in texts.items():
            out(tmp_path / name).write_text(text)
        if fail:
            raise RuntimeError("stage failed after writing its temporaries")


def test_outputs_replace_all_or_none_on_error(tmp_path):
    write_set(tmp_path, {"a": "old a", "b": "old b"})
    with pytest.raises(RuntimeError):
        write_set(tmp_path, {"a": "new a", "b": "new b"}, fail=True)
    assert (tmp_path / "a").read_text() == "old a" and (tmp_path / "b").read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporaries
    write_set(tmp_path, {"a": "new a", "b": "new b"})
    assert (tmp_path / "a").read_text() == "new a" and (tmp_path / "b").read_text() == "new b"


def test_a_failing_rename_puts_the_old_set_back(tmp_path, monkeypatch):
    write_set(tmp_path, {"a": "old a", "b": "old b", "c": "old c"})
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if str(dst) == str(tmp_path / "c"):
            raise OSError(28, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", flaky)
    with pytest.raises(atomic.CellpipeError, match="no space left"):
        write_set(tmp_path, {"a": "new a", "b": "new b", "c": "new c"})
    monkeypatch.undo()
    assert [(tmp_path / n).read_text() for n in "abc"] == ["old a", "old b", "old c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    assert any(str(d) == str(tmp_path / "a") for d in calls)  # a was replaced, then rolled back


def test_sigterm_during_the_renames_is_delivered_after_them(tmp_path, monkeypatch):
    """A signal arriving between two renames waits for the last one: the set is never split."""

    class Stop(BaseException):
        pass

    def handler(signum, frame):
        raise Stop

    old_handler = signal.signal(signal.SIGTERM, handler)
    real = os.replace

    def replace_and_signal(src, dst):
        real(src, dst)
        if str(dst) == str(tmp_path / "a"):
            os.kill(os.getpid(), signal.SIGTERM)  # between a's rename and b's

    try:
        write_set(tmp_path, {"a": "old a", "b": "old b"})
        monkeypatch.setattr(atomic.os, "replace", replace_and_signal)
        with pytest.raises(Stop):
            write_set(tmp_path, {"a": "new a", "b": "new b"})
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    assert (tmp_path / "a").read_text() == "new a" and (tmp_path / "b").read_text() == "new b"


def decode(kaggle, out, params, **kw):
    return run_cli(
        "decode", "--kaggle-dir", str(kaggle), "--annotations-out", str(out / "a.parquet"),
        "--images-out", str(out / "i.parquet"), "--params", str(params), **kw,
    )  # fmt: skip


@requires_shared()
def test_coco_refuses_annotations_and_images_of_different_decode_runs(tmp_path, tiny_kaggle):
    """The issue's case: a new annotations table beside an old images table (6 real images)."""
    (tmp_path / "p.yaml").write_text("decode: {duplicates: drop}\ncv: {folds: [0]}\n")
    decode(SAMPLE, tmp_path / "old", tmp_path / "p.yaml", check=True)
    decode(tiny_kaggle, tmp_path / "new", tmp_path / "p.yaml", check=True)
    n_new = len(pd.read_parquet(tmp_path / "new/a.parquet"))
    proc = run_cli(
        "coco", "--annotations", str(tmp_path / "new/a.parquet"), "--images", str(tmp_path / "old/i.parquet"),
        "--folds-out", str(tmp_path / "c/folds.json"), "--lockbox-out", str(tmp_path / "c/lockbox.json"),
        "--params", str(tmp_path / "p.yaml"),
    )  # fmt: skip
    one_line_error(proc, "new/a.parquet", f"{n_new} cells of 6 image(s) absent from", "lists 6 images", "rerun decode")
    assert not (tmp_path / "c").exists()
    # the same images with another cell count per image
    ann = pd.read_parquet(tmp_path / "old/a.parquet")
    ann.iloc[1:].to_parquet(tmp_path / "old/a2.parquet")
    proc = run_cli(
        "coco", "--annotations", str(tmp_path / "old/a2.parquet"), "--images", str(tmp_path / "old/i.parquet"),
        "--folds-out", str(tmp_path / "c/folds.json"), "--lockbox-out", str(tmp_path / "c/lockbox.json"),
        "--params", str(tmp_path / "p.yaml"),
    )  # fmt: skip
    one_line_error(proc, "old/i.parquet", "cells here but", "1 image(s) differ")


def predict_folder(tmp_path, checkpoint, images, out):
    (tmp_path / "p.yaml").write_text("predict: {}\n")
    return run_cli(
        "predict", "--checkpoint", str(checkpoint), "--skip-val", "--test-dir", str(images),
        "--test-out", str(out), "--params", str(tmp_path / "p.yaml"), check=True,
    )  # fmt: skip


def test_ensemble_refuses_a_fold_whose_tables_come_from_two_models(tmp_path, tiny_kaggle):
    """A new val.parquet beside an old test.parquet of another checkpoint: named, not mixed."""
    for seed, name in ((0, "a.pt"), (1, "b.pt")):
        cellpipe_checkpoint(tmp_path / name, TINY_MODEL, ["shsy5y", "astro", "cort"], seed=seed)
    fold = tmp_path / "folds" / "fold0"
    predict_folder(tmp_path, tmp_path / "a.pt", tiny_kaggle / "test", fold / "val.parquet")
    predict_folder(tmp_path, tmp_path / "a.pt", tiny_kaggle / "test", fold / "lockbox.parquet")
    predict_folder(tmp_path, tmp_path / "b.pt", tiny_kaggle / "test", fold / "test.parquet")
    assert prediction_table.read(fold / "val.parquet").model == prediction_table.model_digest(tmp_path / "a.pt")
    (tmp_path / "e.yaml").write_text("cv: {folds: [0]}\nensemble: {}\n")
    proc = run_cli(
        "ensemble", "--folds-dir", str(tmp_path / "folds"), "--oof-out", str(tmp_path / "o/oof.parquet"),
        "--lockbox-out", str(tmp_path / "o/lockbox.parquet"), "--test-out", str(tmp_path / "o/test.parquet"),
        "--params", str(tmp_path / "e.yaml"),
    )  # fmt: skip
    one_line_error(proc, "fold0/test.parquet", "predicted by another model", prediction_table.model_digest(tmp_path / "b.pt"))
    assert not (tmp_path / "o").exists()


def scored(tmp_path, tiny_kaggle):
    """A predictions table of the tiny folder's training images (an untrained model) to score."""
    cellpipe_checkpoint(tmp_path / "m.pt", TINY_MODEL, ["shsy5y", "astro", "cort"])
    predict_folder(tmp_path, tmp_path / "m.pt", tiny_kaggle / "train", tmp_path / "pred.parquet")
    return tmp_path / "pred.parquet"


def test_score_writes_all_its_reports_or_none(tmp_path, tiny_kaggle):
    """The third output cannot be written (a folder is in its way): the first two keep their old bytes."""
    pred = scored(tmp_path, tiny_kaggle)
    first = score_cli(tmp_path, pred, tiny_kaggle / "train.csv")
    assert first.returncode == 0, first.stderr
    before = {n: (tmp_path / n).read_bytes() for n in ("s.json", "pi.csv")}
    (tmp_path / "piou.csv").unlink()
    (tmp_path / "piou.csv").mkdir()
    (tmp_path / "th.json").write_text(json.dumps({"score_threshold": {"shsy5y": 0.9, "astro": 0.9, "cort": 0.9}}))
    proc = run_cli(
        "score", "--predictions", str(pred), "--truth", str(tiny_kaggle / "train.csv"), "--all-truth-images",
        "--thresholds", str(tmp_path / "th.json"), "--out", str(tmp_path / "s.json"),
        "--per-image-out", str(tmp_path / "pi.csv"), "--per-iou-out", str(tmp_path / "piou.csv"),
    )  # fmt: skip
    one_line_error(proc, "piou.csv", "it is a folder, not a file")
    assert {n: (tmp_path / n).read_bytes() for n in ("s.json", "pi.csv")} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", ["parent_is_a_file", "output_is_a_folder", "file_size_limit"])
def test_write_errors_are_one_line_and_leave_the_old_outputs(tmp_path, tiny_kaggle, case):
    """Through ``cellpipe decode``: a parent that is a file, an output that is a folder, and a write that runs out of
    room (the file-size limit stands in for a full disk: the same ``write`` failure, without root)."""
    out = tmp_path / "out"
    (tmp_path / "p.yaml").write_text("decode: {duplicates: error}\n")
    decode(tiny_kaggle, out, tmp_path / "p.yaml", check=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    args = ["--annotations-out", str(out / "a.parquet"), "--images-out", str(out / "i.parquet")]
    if case == "parent_is_a_file":
        (tmp_path / "file").write_text("x")
        args[3] = str(tmp_path / "file" / "i.parquet")
        needle = "a parent of it is a file"
    elif case == "output_is_a_folder":
        shutil.rmtree(out / "i.parquet", ignore_errors=True)
        (out / "i.parquet").unlink()
        (out / "i.parquet").mkdir()
        before.pop("i.parquet")
        needle = "it is a folder, not a file"
    else:
        needle = "cannot write this output"
    cmd = [
        sys.executable,
        "-m",
        "stages",
        "decode",
        "--kaggle-dir",
        str(tiny_kaggle),
        *args,
        "--params",
        str(tmp_path / "p.yaml"),
    ]

    def limit():  # writes past 20 kB fail with EFBIG (SIGXFSZ ignored), as a full disk fails them with ENOSPC
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    env = {**os.environ, "CELLPIPE_NO_PROGRESS": "1", "COLUMNS": "200"}
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit if case == "file_size_limit" else None
    )
    one_line_error(proc, needle)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
