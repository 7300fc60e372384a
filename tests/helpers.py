"""Helpers and data shared by several test files (test files never import each other)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from pycocotools import mask as mask_util

from tests.conftest import REPO, decode_and_split, params_text, run_cli, write_params


def one_line_error(proc, *needles: str) -> None:
    """Exit code 1, one ``error:`` message (last on stderr) naming what is wrong, no traceback."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    starts = [k for k, line in enumerate(lines) if line.startswith("error:")]
    assert len(starts) == 1, proc.stderr
    err = " ".join(" ".join(lines[starts[0] :]).split())
    for needle in needles:
        assert needle in err, (needle, proc.stderr)


def one_cell_coco(tmp_path: Path, grey: np.ndarray, cell: np.ndarray, category_id: int, categories: list[str]) -> dict:
    """A COCO dict of one image (``grey``, saved as ``a.png``) holding one cell (``cell``, a 0/1 mask) of ``category_id``."""
    Image.fromarray(grey).save(tmp_path / "a.png")
    rle_ = mask_util.encode(np.asfortranarray(cell.astype(np.uint8)))
    rle_["counts"] = rle_["counts"].decode()
    h, w = grey.shape
    ann = {"id": 1, "image_id": 1, "category_id": category_id, "segmentation": rle_, "area": int(cell.sum()),
           "bbox": [int(v) for v in mask_util.toBbox(rle_)], "iscrowd": 0}  # fmt: skip
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": h, "width": w, "path": str(tmp_path / "a.png")}],
        "annotations": [ann],
        "categories": [{"id": k, "name": name} for k, name in enumerate(categories, 1)],
    }


def ring_coco(tmp_path: Path) -> tuple[dict, int, int]:
    """One 40×50 image holding one 'astro' cell drawn as a ring (a filled contour with a hole):
    (COCO dict, ring pixels, pixels of the filled disc)."""
    yy, xx = np.mgrid[:40, :50]
    r = np.hypot(yy - 20, xx - 25)
    ring = ((r <= 12) & (r > 5)).astype(np.uint8)
    data = one_cell_coco(tmp_path, np.full((40, 50), 100, np.uint8), ring, 2, ["shsy5y", "astro", "cort"])
    return data, int(ring.sum()), int((r <= 12).sum())


def two_cells() -> np.ndarray:
    """A 60×80 label image of two cells, neither symmetric, so a turn or a transpose shows."""
    yy, xx = np.mgrid[:60, :80]
    labels = np.zeros((60, 80), np.int32)
    labels[((yy - 20) / 9) ** 2 + ((xx - 25) / 15) ** 2 <= 1] = 1  # an ellipse, off-centre
    labels[(yy > 35) & (yy < 55) & (xx > 40) & (xx < 48 + (yy - 35))] = 2  # a slanted blob
    return labels


def flow_targets(lab):
    """cellpose's own targets of a label image: (cell probability, dy, dx) as one float tensor."""
    import torch
    from cellpose import dynamics

    flows = dynamics.masks_to_flows(lab, device=torch.device("cpu"))
    return torch.from_numpy(np.concatenate([(lab > 0)[None], flows]).astype(np.float32))


GOOD_POLY = [[1, 1, 30, 1, 15, 25]]


def livecell_folder(tmp_path: Path, annotations, images=None, write_files=True) -> Path:
    """A LIVECell-style folder (``x.json`` + ``images/``) of ``annotations`` on blank images."""
    folder = tmp_path / "lc"
    (folder / "images").mkdir(parents=True)
    images = images or [{"id": 1, "height": 40, "width": 50, "file_name": "a.tif"}]
    if write_files:
        for im in images:
            Image.fromarray(np.full((im["height"], im["width"]), 100, np.uint8)).save(folder / "images" / im["file_name"])
    data = {"images": images, "categories": [{"id": 1, "name": "cell"}], "annotations": annotations}
    (folder / "x.json").write_text(json.dumps(data))
    return folder


def ann(**kw) -> dict:
    """A good LIVECell polygon annotation (id 5 on image 1), with ``kw`` changed."""
    return {"id": 5, "image_id": 1, "category_id": 1, "segmentation": GOOD_POLY, **kw}


def run_livecell(folder: Path, tmp_path: Path):
    """``cellpipe livecell`` on ``folder``, writing under ``tmp_path/out``."""
    return run_cli(
        "livecell",
        "--livecell-json",
        str(folder / "x.json"),
        "--livecell-images",
        str(folder / "images"),
        "--out",
        str(tmp_path / "out" / "lc.json"),
    )


def finetune_on(kaggle: Path, tmp_path: Path, edit, *extra: str):
    """decode → coco → ``cellpipe finetune`` on ``kaggle`` with the committed params edited by ``edit``."""
    p = write_params(tmp_path / "p.yaml", edit)
    decode_and_split(kaggle, tmp_path, p)
    return run_cli(
        "finetune",
        "--train",
        str(tmp_path / "train.json"),
        "--val",
        str(tmp_path / "val.json"),
        "--out",
        str(tmp_path / "ft"),
        "--params",
        str(p),
        *extra,
    )


# ---------------------------------------------------------------- DAG tests: repositories under DVC

TINY = {
    "synth": {
        "images_per_type": {"shsy5y": 3, "astro": 3, "cort": 3},  # 1 lockbox, 1 val, 1 train image per type
        "cells_scale": 0.1,
        "images_per_sample": 1,
        "test_images": 2,
        "livecell_images": 3,
        "livecell_cells_scale": 0.1,
    },
    "model": {
        "fpn_channels": 16,
        "box_head_dim": 32,
        "mask_head_channels": 16,
        "mask_head_layers": 1,
        "min_size": 130,
        "max_size": 176,
        "anchor_sizes": [4, 8, 16, 32, 64],
        "detections_per_img": 50,
        "rpn_pre_nms_test": 200,
        "rpn_post_nms_test": 100,
    },
    "pretrain": {"iters": 2, "eval_every": 2, "val_images": 1, "warmup_iters": 1},
    "finetune": {"iters": 2, "eval_every": 2, "warmup_iters": 1},
    "thresholds": {"grid": [0.05, 0.5]},
}


def tracked_copy(dst: Path, source: Path = REPO) -> None:
    """The files git tracks (or would: untracked, not ignored) of ``source``, params.yaml as committed."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=source, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for rel in filter(None, files):
        src = source / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "params.yaml").write_text(params_text(source))


def shrink_params(path: Path, overrides: dict) -> None:
    params = yaml.safe_load(path.read_text())
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def dvc_env() -> dict[str, str]:
    """The environment every DVC command (and a stage command run by hand) gets in these tests: this venv's
    ``cellpipe`` and ``dvc`` first on PATH, no progress bars, no analytics."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "CELLPIPE_NO_PROGRESS": "1",
        "DVC_NO_ANALYTICS": "1",
    }


def dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, env=dvc_env(), capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def dvc_timed(cwd: Path, *args: str) -> tuple[str, dict[str, float]]:
    """``dvc(cwd, *args)`` with its output read as it comes: the output and each stage's wall seconds (from its
    "Running stage" line to the next one or the end, DVC's own bookkeeping for it included)."""
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=cwd,
        env=dvc_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, seconds, stage, since = [], {}, None, time.monotonic()
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Running stage"):
            now = time.monotonic()
            if stage:
                seconds[stage] = now - since
            stage, since = line.split("'")[1], now
    rc = proc.wait(timeout=1800)
    if stage:
        seconds[stage] = time.monotonic() - since
    assert rc == 0, f"dvc {' '.join(args)} failed:\n{''.join(lines)}"
    return "".join(lines), seconds


def make_repo(root: Path, overrides: dict | None = None, source: Path = REPO) -> Path:
    """A git repo at ``root/repo`` holding the tracked files, tiny params (+ ``overrides``), no dvc.lock.

    Built from the committed params, never the workspace's (which ``dvc exp run`` changes).
    """
    dst = root / "repo"
    dst.mkdir()
    tracked_copy(dst, source)
    (dst / "dvc.lock").unlink(missing_ok=True)
    params = {section: dict(values) for section, values in TINY.items()}
    for section, values in (overrides or {}).items():
        params.setdefault(section, {}).update(values)
    shrink_params(dst / "params.yaml", params)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)
    return dst


def apply_profile(workspace: Path, name: str) -> dict:
    """Set ``profiles/NAME.yaml``'s values in ``workspace``'s params.yaml, as ``dvc exp run -S`` leaves it."""
    from cellpipe import profiles

    params = yaml.safe_load((workspace / "params.yaml").read_text())
    applied = profiles.apply(params, (workspace / "profiles" / f"{name}.yaml").read_text())
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return applied


def repo_from_applied_workspace(root: Path, overrides: dict | None = None) -> Path:
    """A tiny repo made from a workspace where an experiment was applied (``./run.sh profile real-sample``):
    what the DAG tests see must not depend on what the workspace holds."""
    workspace = root / "workspace"
    workspace.mkdir()
    tracked_copy(workspace)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "workspace"],
    ):
        subprocess.run(cmd, cwd=workspace, check=True, capture_output=True)
    applied = apply_profile(workspace, "real-sample")
    assert applied["decode.duplicates"] == "drop"
    repo = make_repo(root, overrides, source=workspace)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["decode"]["duplicates"] == "error" and params["data"]["kaggle"]["kaggle-dir"] == "data/raw/kaggle"
    return repo


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True)


def stale_stages(repo: Path) -> set[str]:
    return set(json.loads(dvc(repo, "status", "--json").stdout or "{}"))


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


# the tiny DAG every DAG test shares: fine-tuned long enough (12 iterations, evaluated every 4) for the
# kill test to interrupt it after its second checkpoint and resume
SHARED_DAG = {"finetune": {"iters": 12, "eval_every": 4}}


def copy_repo(repo: Path, dst: Path) -> Path:
    """A copy of a reproduced repo (git, DVC cache, outputs) for a test that changes it."""
    shutil.copytree(repo, dst, symlinks=True)
    return dst


def train_one_step(cfg, ds) -> None:
    """A tiny model of ``cfg`` (seeded) takes one training step on the first two windows of ``ds``: the losses
    are finite and positive, and so is every gradient."""
    import torch

    from cellpipe import models

    torch.manual_seed(0)
    model = models.build(cfg, 3)
    model.train()
    batch = [ds[k] for k in range(2)]
    losses = models.family(cfg).train_step(model, [b[0] for b in batch], [b[1] for b in batch])
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    assert all(np.isfinite(p.grad.abs().sum().item()) for p in model.parameters() if p.grad is not None)


def same_draws(plain, switched_off, n: int, seeds=range(5)) -> None:
    """Two training datasets give the same windows, images and masks seed by seed: an augmentation switched
    off draws nothing from torch's random stream, so runs without it keep their windows and flips."""
    import torch

    for seed in seeds:
        torch.manual_seed(seed)
        a = [plain[k] for k in range(n)]
        torch.manual_seed(seed)
        b = [switched_off[k] for k in range(n)]
        for (ia, ta), (ib, tb) in zip(a, b):
            assert torch.equal(ia, ib) and torch.equal(ta["masks"], tb["masks"])


def thresholds_on_truth(tmp_path: Path, kaggle: Path, predict, thresholds_params: str) -> dict:
    """The ``thresholds`` stage on predictions made from a Kaggle folder's true cells: ``predict(truth, h, w)`` →
    (masks, scores) per image, every detection of its image's type, every image in fold 0 of ``val.json``;
    ``thresholds_params``: the params file's ``thresholds`` mapping (YAML flow style). Returns the choice."""
    from cellpipe import prediction_table, rle, tables
    from cellpipe.config import CELL_TYPES
    from cellpipe.instances import Instances

    df = tables.read_train_csv(kaggle / "train.csv")
    items = []
    for image_id, g in df.groupby("id"):
        h, w = int(g["height"].iloc[0]), int(g["width"].iloc[0])
        masks, scores = predict(rle.to_csr(rle.parse_many(g["annotation"].tolist(), h * w), h * w), h, w)
        labels = np.full(masks.shape[0], list(CELL_TYPES).index(g["cell_type"].iloc[0]) + 1)
        items.append((image_id, Instances(masks, scores, labels, (h, w))))
    prediction_table.write(prediction_table.to_frame(items, list(CELL_TYPES)), tmp_path / "p.parquet")
    (tmp_path / "p.yaml").write_text(f"thresholds: {thresholds_params}\npostprocess: {{}}\n")
    ids = sorted(df["id"].unique())
    (tmp_path / "val.json").write_text(json.dumps({
        "images": [{"id": k + 1, "file_name": f"{i}.png", "kaggle_id": i, "height": 520, "width": 704, "fold": 0,
                    "cell_type": df.loc[df["id"] == i, "cell_type"].iloc[0], "path": str(kaggle / "train" / f"{i}.png")}
                   for k, i in enumerate(ids)], "annotations": [], "categories": []}))  # fmt: skip
    proc = run_cli("thresholds", "--predictions", str(tmp_path / "p.parquet"), "--val", str(tmp_path / "val.json"),
                   "--truth", str(kaggle / "train.csv"), "--out", str(tmp_path / "th.json"),
                   "--sweep-out", str(tmp_path / "sw.csv"), "--counts-out", str(tmp_path / "c.csv"),
                   "--params", str(tmp_path / "p.yaml"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp_path / "th.json").read_text())


def score_on_truth(tmp_path: Path, kaggle: Path, choice: dict, name: str = "s") -> float:
    """``cellpipe score`` of :func:`thresholds_on_truth`'s predictions under ``choice`` (a thresholds file's content)."""
    (tmp_path / f"{name}.th.json").write_text(json.dumps(choice))
    proc = run_cli("score", "--predictions", str(tmp_path / "p.parquet"), "--val", str(tmp_path / "val.json"),
                   "--truth", str(kaggle / "train.csv"), "--thresholds", str(tmp_path / f"{name}.th.json"),
                   "--out", str(tmp_path / f"{name}.json"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp_path / f"{name}.json").read_text())["map_iou"]
