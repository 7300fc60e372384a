"""No silent mix-ups and no tracebacks (issue 26 §4–§5), through the real CLI.

LIVECell images checked in ``livecell`` (headers only): two ids naming one file, a size
the COCO disagrees with, 16-bit pixels, a JPEG named .tif, several frames; checkpoint
classes named twice; repeated sample-submission ids; overlays at the chosen thresholds.
One-line errors: a 300-character id, an id whose file has a trailing space, a
sample submission in UTF-16 or Latin-1, a YAML alias bomb, a 50 MB value, Ctrl-C during
the command's imports, profiles with CRLF, comments and indentation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cellpipe import profiles
from tests.conftest import REPO, TINY_MODEL, cellpipe_checkpoint, decode_and_split, params_text, run_cli, write_params
from tests.helpers import one_line_error

# ---------------------------------------------------------------- LIVECell images


def livecell(tmp_path, images, write=None):
    folder = tmp_path / "lc"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for im in images:
        if write is None or im["file_name"] not in write:
            Image.fromarray(np.full((40, 50), 100, np.uint8)).save(folder / "images" / im["file_name"])
    for name, fn in (write or {}).items():
        fn(folder / "images" / name)
    anns = [{"id": k + 1, "image_id": im["id"], "category_id": 1, "segmentation": [[1, 1, 30, 1, 15, 25]]} for k, im in
            enumerate(images)]  # fmt: skip
    (folder / "x.json").write_text(json.dumps({"images": images, "categories": [{"id": 1, "name": "cell"}], "annotations": anns}))
    return run_cli(
        "livecell", "--livecell-json", str(folder / "x.json"), "--livecell-images", str(folder / "images"),
        "--out", str(tmp_path / "out" / "l.json"),
    )  # fmt: skip


def image(i, name, h=40, w=50):
    return {"id": i, "file_name": name, "height": h, "width": w}


def test_livecell_refuses_two_ids_naming_one_file(tmp_path):
    proc = livecell(tmp_path, [image(1, "a.tif"), image(2, "b.tif"), image(7, "a.tif")])
    one_line_error(proc, "x.json", "images 1 and 7 name the same file 'a.tif'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "case, write, message",
    [
        ("size", None, "the image is 50×40 (width×height) but the annotations say 60×40"),
        ("16bit", lambda p: Image.fromarray(np.full((40, 50), 300, np.uint16)).save(p), "expected 8-bit grey pixels, got 16-bit"),
        (
            "jpeg",
            lambda p: Image.fromarray(np.full((40, 50), 100, np.uint8)).save(p, format="JPEG"),
            "the file is JPEG, not the TIFF",
        ),
        (
            "frames",
            lambda p: Image.fromarray(np.full((40, 50), 100, np.uint8)).save(
                p, save_all=True, append_images=[Image.fromarray(np.zeros((40, 50), np.uint8))] * 2
            ),
            "the file holds 3 frames",
        ),
    ],
)
def test_livecell_checks_each_image_header(tmp_path, case, write, message):
    images = [image(1, "a.tif", w=60 if case == "size" else 50)]
    proc = livecell(tmp_path, images, write=None if write is None else {"a.tif": write})
    one_line_error(proc, "a.tif", "image 1", message)
    assert not (tmp_path / "out").exists()


def test_a_multi_frame_test_image_is_refused_with_its_frame_count(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    frames = [Image.fromarray(np.full((52, 70), v, np.uint8)) for v in (90, 120, 150)]
    frames[0].save(folder / "a.tif", save_all=True, append_images=frames[1:])
    cellpipe_checkpoint(tmp_path / "m.pt", TINY_MODEL, ["shsy5y", "astro", "cort"])
    (tmp_path / "p.yaml").write_text("predict: {}\n")
    proc = run_cli("predict", "--checkpoint", str(tmp_path / "m.pt"), "--skip-val", "--test-dir", str(folder),
                   "--test-out", str(tmp_path / "out/t.parquet"), "--params", str(tmp_path / "p.yaml"))  # fmt: skip
    one_line_error(proc, "a.tif", "holds 3 frames")


# ---------------------------------------------------------------- checkpoints, sample submissions, overlays


def test_a_checkpoint_naming_a_class_twice_is_refused(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((52, 70), 90, np.uint8)).save(folder / "a.png")
    cellpipe_checkpoint(tmp_path / "m.pt", TINY_MODEL, ["astro", "astro", "astro"])
    (tmp_path / "p.yaml").write_text("predict: {}\n")
    proc = run_cli("predict", "--checkpoint", str(tmp_path / "m.pt"), "--skip-val", "--test-dir", str(folder),
                   "--test-out", str(tmp_path / "out/t.parquet"), "--params", str(tmp_path / "p.yaml"))  # fmt: skip
    one_line_error(proc, "m.pt", "'classes' name astro more than once (3 classes, 1 distinct)")
    assert not (tmp_path / "out").exists()


def predicted_test_folder(tmp_path, tiny_kaggle):
    cellpipe_checkpoint(tmp_path / "m.pt", TINY_MODEL, ["shsy5y", "astro", "cort"])
    (tmp_path / "p.yaml").write_text("predict: {}\n")
    run_cli("predict", "--checkpoint", str(tmp_path / "m.pt"), "--skip-val", "--test-dir", str(tiny_kaggle / "test"),
            "--test-out", str(tmp_path / "test.parquet"), "--params", str(tmp_path / "p.yaml"), check=True)  # fmt: skip
    return tmp_path / "test.parquet"


def submit(tmp_path, pred, sample):
    return run_cli("submit", "--predictions", str(pred), "--sample-submission", str(sample),
                   "--thresholds", str(tmp_path / "none.json"), "--out", str(tmp_path / "sub.csv"))  # fmt: skip


def test_repeated_sample_submission_ids_are_counted_in_a_warning(tmp_path, tiny_kaggle):
    pred = predicted_test_folder(tmp_path, tiny_kaggle)
    ids = sorted(p.stem for p in (tiny_kaggle / "test").glob("*.png"))
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"id": [ids[0], ids[1], ids[0], ids[0]], "predicted": ""}).to_csv(sample, index=False)
    (tmp_path / "none.json").write_text(json.dumps({"score_threshold": {}}))
    proc = submit(tmp_path, pred, sample)
    assert proc.returncode == 0, proc.stderr
    assert "2 repeated id row(s) kept once (1 id(s)" in " ".join(proc.stderr.split())
    assert set(pd.read_csv(tmp_path / "sub.csv")["id"]) == set(ids[:2])


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_a_sample_submission_that_is_not_utf8_is_one_line(tmp_path, tiny_kaggle, encoding):
    pred = predicted_test_folder(tmp_path, tiny_kaggle)
    sample = tmp_path / "sample.csv"
    sample.write_bytes("id,predicted\nébène,\n".encode(encoding))
    (tmp_path / "none.json").write_text(json.dumps({"score_threshold": {}}))
    one_line_error(submit(tmp_path, pred, sample), "sample.csv", "not UTF-8 text", "save it as UTF-8")


def overlay_cells(tmp_path, tiny_kaggle, threshold):
    """``cellpipe visualize`` with every class at ``threshold``: each overlay's cell count (PNG text chunk)."""
    (tmp_path / "th.json").write_text(json.dumps({"score_threshold": dict.fromkeys(["shsy5y", "astro", "cort"], threshold)}))
    out = tmp_path / f"overlays{threshold}"
    proc = run_cli(
        "visualize", "--val-predictions", str(tmp_path / "val.parquet"), "--test-predictions", str(tmp_path / "test.parquet"),
        "--val", str(tmp_path / "folds.json"), "--truth", str(tiny_kaggle / "train.csv"), "--test-dir", str(tiny_kaggle / "test"),
        "--thresholds", str(tmp_path / "th.json"), "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # drawing a handful of the predicted val images is no mismatch (it warned "N predicted images not in the truth")
    assert "warning" not in proc.stderr, proc.stderr
    return {p.name: int(Image.open(p).text["cells"]) for p in sorted(out.glob("*.png"))}


def test_overlays_follow_the_chosen_thresholds(tmp_path, tiny_kaggle):
    """The bug: every overlay was drawn at 0.5 whatever the thresholds said. Low thresholds draw more cells."""
    decode_and_split(tiny_kaggle, tmp_path, write_params(tmp_path / "cv.yaml", lambda p: p["cv"].update(folds=[0, 1])))
    predicted_test_folder(tmp_path, tiny_kaggle)
    run_cli("predict", "--checkpoint", str(tmp_path / "m.pt"), "--skip-val", "--test-dir", str(tiny_kaggle / "train"),
            "--test-out", str(tmp_path / "val.parquet"), "--params", str(tmp_path / "p.yaml"), check=True)  # fmt: skip
    # an untrained model scores its detections around 1/4: thresholds 0.05 and 0.9 differ
    low, high = overlay_cells(tmp_path, tiny_kaggle, 0.05), overlay_cells(tmp_path, tiny_kaggle, 0.9)
    assert low.keys() == high.keys() and any(k.startswith("val_") for k in low) and any(k.startswith("test_") for k in low)
    assert sum(low.values()) > sum(high.values()) == 0, (low, high)


# ---------------------------------------------------------------- names and encodings


def test_a_300_character_image_id_is_one_line(kaggle_copy, tmp_path):
    df = pd.read_csv(kaggle_copy / "train.csv", dtype=str, keep_default_na=False)
    long_id = "a" * 300
    df.loc[df["id"] == df["id"].iloc[0], "id"] = long_id
    df.to_csv(kaggle_copy / "train.csv", index=False)
    proc = run_cli("decode", "--kaggle-dir", str(kaggle_copy), "--annotations-out", str(tmp_path / "o/a.parquet"),
                   "--images-out", str(tmp_path / "o/i.parquet"))  # fmt: skip
    one_line_error(proc, "train.csv", "line 2: image id", "is 300 bytes long", "limited to 255 bytes")


def test_an_image_file_with_a_space_around_its_id_is_named(kaggle_copy, tmp_path):
    first = sorted((kaggle_copy / "train").glob("*.png"))[0]
    first.rename(first.with_name(f"{first.stem} .png"))
    proc = run_cli("decode", "--kaggle-dir", str(kaggle_copy), "--annotations-out", str(tmp_path / "o/a.parquet"),
                   "--images-out", str(tmp_path / "o/i.parquet"))  # fmt: skip
    one_line_error(proc, f"'{first.stem} .png' has spaces around its image id", f"rename it to '{first.stem}.png'")


# ---------------------------------------------------------------- params files


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ["a0: &a0 [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]"]
    lines += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 10)}]" for k in range(1, 9)]
    bomb = tmp_path / "p.yaml"
    bomb.write_text("\n".join(lines) + "\ncv: {folds: *a8}\n")
    assert bomb.stat().st_size < 3000
    t = time.perf_counter()
    proc = run_cli("coco", "--params", str(bomb), "--annotations", "a", "--images", "i", "--folds-out", str(tmp_path / "f.json"),
                   "--lockbox-out", str(tmp_path / "l.json"))  # fmt: skip
    assert time.perf_counter() - t < 20
    one_line_error(proc, "p.yaml", "YAML alias *a0", "may not use anchors and aliases")
    assert len(proc.stderr) < 1000


def test_a_huge_value_is_named_not_echoed(tmp_path):
    (tmp_path / "p.yaml").write_text("synth: {seed: " + "x" * 50_000_000 + "}\n")
    proc = run_cli("synth", "--params", str(tmp_path / "p.yaml"), "--kaggle-out", str(tmp_path / "k"),
                   "--livecell-out", str(tmp_path / "l"))  # fmt: skip
    one_line_error(proc, "synth.seed must be an integer", "(50,000,002 characters)")
    assert len(proc.stderr) < 1000


# ---------------------------------------------------------------- Ctrl-C while the command is still importing


def handlers_installed(pid: int) -> bool:
    """Whether the process catches SIGTERM yet (``stages.entry`` installs its SIGINT and SIGTERM handlers first thing;
    before that the interpreter is still starting, and the signal's default action is all there can be)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True  # ended already
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the signal mask from /proc")
def test_a_signal_during_the_imports_is_one_line(tmp_path, signum, code, word):
    """Stopped once its handlers are in, then at once or 0.3 s later (typer, rich, pydantic still importing): exit
    128+signal, one line, no traceback. (A fixed delay from the start raced the interpreter's own start-up on a
    loaded machine: the default action, exit -15, before any of cellpipe's code had run.)"""
    env = {**os.environ, "CELLPIPE_NO_PROGRESS": "1"}
    for delay in (0.0, 0.3):
        proc = subprocess.Popen([sys.executable, "-m", "stages", "params", "--defaults"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        while proc.poll() is None and not handlers_installed(proc.pid):
            time.sleep(0.001)
        time.sleep(delay)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:  # it finished first: nothing to check at this delay
            continue
        assert proc.returncode == code, (delay, err)
        assert "Traceback" not in err and err.strip().splitlines()[-1] == word, (delay, err)


# ---------------------------------------------------------------- profiles: one reader for run.sh and the tests

MESSY = (
    "# a comment line\r\n"
    "model.backbone: resnet50   # a trailing comment\r\n"
    "   model.fpn_channels: 128\r\n"
    'cv.folds: "[0, 1, 2]"\r\n'
    "\r\n"
    "model.anchor_sizes: [[22, 29], [37, 48], [70, 79], [102, 115], [169, 217]]\r\n"
    'data.kaggle.kaggle-dir: "my data\'s; dir"\r\n'
)


def test_a_profile_reads_the_same_through_dvc_as_through_cellpipe(tmp_path):
    """``cellpipe profile`` (what ``run.sh profile`` passes to ``dvc exp run -S``) applied by DVC's own override code
    gives the params ``cellpipe.profiles.apply`` gives: CRLF, comments, indentation, quoting."""
    from dvc.utils.hydra import apply_overrides

    (tmp_path / "messy.yaml").write_bytes(MESSY.encode())
    proc = run_cli("profile", str(tmp_path / "messy.yaml"), "--null")
    assert proc.returncode == 0, proc.stderr
    args = [a for a in proc.stdout.split("\0") if a]
    (tmp_path / "params.yaml").write_text(params_text())
    apply_overrides(tmp_path / "params.yaml", args)
    expected = yaml.safe_load(params_text())
    applied = profiles.apply(expected, MESSY)
    assert yaml.safe_load((tmp_path / "params.yaml").read_text()) == expected
    assert applied["cv.folds"] == [0, 1, 2] and applied["model.fpn_channels"] == 128
    assert applied["data.kaggle.kaggle-dir"] == "my data's; dir"


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")))
def test_run_sh_profile_hands_dvc_what_cellpipe_reads(tmp_path, name):
    """``./run.sh profile NAME`` with a recording ``dvc``: the -S arguments are the profile's, one per line."""
    recorder = tmp_path / "dvc"
    recorder.write_text(f'#!/bin/sh\n[ "$1" = exp ] && printf "%s\\0" "$@" > {tmp_path}/args\nexit 0\n')
    recorder.chmod(0o755)
    env = {**os.environ, "DVC": str(recorder)}
    proc = subprocess.run([str(REPO / "run.sh"), "profile", name], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "args").read_text().split("\0")[:-1]
    assert args[:2] == ["exp", "run"] and args[2::2] == ["-S"] * len(args[3::2])
    text = (REPO / "profiles" / f"{name}.yaml").read_text()
    assert args[3::2] == profiles.overrides(text)
    assert len(args[3::2]) == len(profiles.values(text)) > 0


def test_a_queued_or_temporary_profile_gets_the_paths_leaving_the_repo_absolute(tmp_path):
    """``./run.sh profile real-sample --queue`` / ``--temp``: DVC runs the experiment in a copy of the repo under
    ``.dvc/tmp/exps/``, where ``../shared/...`` points nowhere, so those paths go over absolute; everything
    else as the profile says; without either flag, as written."""
    recorder = tmp_path / "dvc"
    recorder.write_text(f'#!/bin/sh\n[ "$1" = exp ] && printf "%s\\0" "$@" > {tmp_path}/args\nexit 0\n')
    recorder.chmod(0o755)
    env = {**os.environ, "DVC": str(recorder)}
    text = (REPO / "profiles" / "real-sample.yaml").read_text()
    for flag in ("--queue", "--temp"):
        proc = subprocess.run([str(REPO / "run.sh"), "profile", "real-sample", flag], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        args = (tmp_path / "args").read_text().split("\0")[:-1]
        assert args[-1] == flag and args[3:-1:2] == profiles.overrides(text, root=REPO)
        sample = os.path.normpath(REPO.parent / "shared" / "data" / "sartorius-sample")
        assert f"data.kaggle.kaggle-dir='{sample}'" in args
    assert profiles.overrides(text) != profiles.overrides(text, root=REPO)  # the profile's paths do leave the repo


def test_only_relative_paths_that_leave_the_repo_are_made_absolute():
    root = Path("/home/u/repo")
    made = {v: profiles.outside_made_absolute(v, root) for v in ("../shared/x", "./../y", "data/../../z", "data/raw", "/abs/w")}
    assert made == {"../shared/x": "/home/u/shared/x", "./../y": "/home/u/y", "data/../../z": "/home/u/z",
                    "data/raw": "data/raw", "/abs/w": "/abs/w"}  # fmt: skip
    assert profiles.outside_made_absolute(3, root) == 3
    text = "data.kaggle.kaggle-dir: ../k\nfinetune.init_checkpoint.init-checkpoint: models/x.pt\ncv.folds: [0]\n"
    assert profiles.overrides(text, root=root) == [
        "data.kaggle.kaggle-dir='/home/u/k'",
        "finetune.init_checkpoint.init-checkpoint='models/x.pt'",
        "cv.folds=[0]",
    ]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in profiles.PATH_KEYS:  # each names a path of params.yaml
        node = params
        for part in key.split("."):
            node = node[part]
        assert isinstance(node, str), key
