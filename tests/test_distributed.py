"""Data-parallel training (DDP) on CPU: 2 processes with ``gloo``, started by the stage itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TINY_MODEL, decode_and_split, run_cli, write_params


def params_for(tmp_path: Path, name: str, nproc: int, model: dict | None = None, **finetune) -> Path:
    def edit(p: dict) -> None:
        p["model"].update({**TINY_MODEL.model_dump(mode="json"), **(model or {})})
        p["finetune"].update({"init": "none", "batch_size": 2, "crop_size": 96, "warmup_iters": 1, "nproc": nproc, **finetune})

    return write_params(tmp_path / name, edit)


def finetune_cmd(tmp_path: Path, out: str, params: Path) -> list[str]:
    return [
        "finetune",
        "--train",
        str(tmp_path / "folds.json"),
        "--fold",
        "0",
        "--out",
        str(tmp_path / out),
        "--params",
        str(params),
    ]


@pytest.fixture(scope="module")
def split(tmp_path_factory, tiny_kaggle) -> Path:
    """Fold 0 of the tiny Kaggle folder, decoded once for this file's tests (each writes under names of its own)."""
    folder = tmp_path_factory.mktemp("split")
    decode_and_split(tiny_kaggle, folder, write_params(folder / "p.yaml"))
    return folder


@pytest.mark.slow
def test_two_processes_train_the_weights_one_process_trains(split):
    """Same global batch (2 images), two steps: 2 processes × 1 image vs 1 process × 2 images.

    RPN and RoI sampling take every candidate here (their random choice would differ per
    process) and norms are GroupNorm (batch norm statistics are per process). What is left
    is inherent to DDP: each process's losses are means over its own image's samples, and
    the gradients of those means are averaged, where one process takes one mean over both
    images. Tolerance: the two weight updates differ by less than 5 % of their norm
    (measured: 1.0 %).
    """
    from cellpipe import models
    from cellpipe.params_file import load

    deterministic = {"iters": 2, "eval_every": 2, "lr": 0.01}
    every = {"norm": "group", "rpn_batch_per_image": 1_000_000, "roi_batch_per_image": 1_000_000}
    for name, nproc in (("one", 1), ("two", 2)):
        p = params_for(split, f"{name}.yaml", nproc, every, **deterministic)
        proc = run_cli(*finetune_cmd(split, name, p))
        assert proc.returncode == 0, proc.stderr
    one = torch.load(split / "one/last.pt", weights_only=True)
    two = torch.load(split / "two/last.pt", weights_only=True)
    assert one["iteration"] == two["iteration"] == 2
    assert json.loads((split / "two/summary.json").read_text())["processes"] == 2
    cfg = load(split / "one.yaml", "model", "finetune")
    torch.manual_seed(cfg.finetune.seed)  # the initial weights, as training builds them
    family = models.family(cfg.model)
    start = family.build(cfg.model, 3)
    family.initialise(start, "none")
    w0 = start.state_dict()
    keys = [k for k, w in w0.items() if w.is_floating_point()]
    d1 = torch.cat([(one["model"][k] - w0[k]).ravel() for k in keys])
    d2 = torch.cat([(two["model"][k] - w0[k]).ravel() for k in keys])
    assert d1.norm() > 0
    assert float((d1 - d2).norm() / d1.norm()) < 0.05


@pytest.mark.slow
def test_two_process_training_resumes_after_termination_and_only_rank_0_writes(split):
    """Terminate a 2-process run after its first checkpoint, run it again: it resumes, runs
    every optimizer step once, the loss falls, and each evaluation is logged once (rank 0)."""
    iters, every = 12, 6
    p = params_for(split, "ddp.yaml", 2, iters=iters, eval_every=every, lr=0.01)
    env = {**os.environ, "CELLPIPE_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "stages", *finetune_cmd(split, "ft", p)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = split / "ft/last.pt"
    deadline = time.monotonic() + 300
    while not (last.is_file() and torch.load(last, weights_only=True)["iteration"] >= every):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert not (split / "ft/summary.json").exists()
    again = run_cli(*finetune_cmd(split, "ft", p))
    assert again.returncode == 0, again.stderr
    summary = json.loads((split / "ft/summary.json").read_text())
    assert summary["resumed_from"] >= every and summary["iterations"] == iters and summary["processes"] == 2
    assert torch.load(last, weights_only=True)["iteration"] == iters
    logged = again.stdout + again.stderr
    assert logged.count(f"iteration {iters}: val MAP-IoU") == 1, logged  # rank 0 alone evaluates
    steps = [line.split("\t") for line in (split / "ft/live/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    losses = {int(s): float(v) for s, v in steps}
    assert set(losses) == set(range(1, iters + 1))  # every step once, across the resume
    assert sum(losses[s] for s in range(iters - 3, iters + 1)) < sum(losses[s] for s in range(1, 5))


def test_a_global_batch_that_does_not_split_is_refused(split):
    p = params_for(split, "odd.yaml", 2, iters=2, eval_every=2, batch_size=3)
    proc = run_cli(*finetune_cmd(split, "odd", p))
    assert proc.returncode == 1 and "batch_size 3 does not split over 2 processes" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "amp, device, want",
    [("auto", "cpu", None), ("auto", "cuda", torch.float16), ("off", "cuda", None), ("bf16", "cpu", torch.bfloat16)],
)
def test_mixed_precision_follows_the_param_and_the_device(amp, device, want):
    from cellpipe.config import Finetune
    from cellpipe.training import engine as train

    assert train.precision(Finetune(amp=amp), torch.device(device)) == want


def test_fp16_on_a_cpu_is_refused_with_the_alternative():
    from cellpipe.config import Finetune
    from cellpipe.errors import CellpipeError
    from cellpipe.training import engine as train

    with pytest.raises(CellpipeError, match="fp16 needs a GPU"):
        train.precision(Finetune(amp="fp16"), torch.device("cpu"))


def test_one_process_is_not_distributed(monkeypatch):
    from cellpipe.training import distributed

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    world = distributed.from_env()
    assert not world.active and world.main and not distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert distributed.launched() and distributed.from_env().rank == 3 and not distributed.from_env().main
