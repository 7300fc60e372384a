"""SIGKILL at random moments on the shared tiny DAG (``conftest.trained_dag``, built once per session and
shared with test_dvc.py, which conftest's ``LONG_FILES`` order gives the other worker): every stage leaves
complete outputs or none, and ``dvc repro`` resumes an interrupted fine-tune to the result an uninterrupted
one reaches."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import SHARED_DAG, copy_repo, dvc, dvc_env, ran_stages, stale_stages

# ---------------------------------------------------------------- SIGKILL at random moments: every stage leaves
# complete outputs or none; training resumes. Each stage's command is replayed exactly as dvc.lock recorded it.

# per stage; one kill each keeps the test within the suite's budget, the two ways of starting (with and
# without the old output) alternating over the stages; KILL_POINTS=5 for a deeper search by hand
KILL_POINTS = int(os.environ.get("KILL_POINTS", "1"))
TRAINING = {"pretrain", "finetune"}


FINETUNE_ITERS = SHARED_DAG["finetune"]["iters"]


@pytest.fixture
def killable_dag(trained_dag, tmp_path) -> tuple[Path, dict]:
    """A copy of the shared tiny repo after an uninterrupted ``dvc repro`` and its final fine-tune weights."""
    repo = copy_repo(trained_dag[0], tmp_path / "repo")
    shutil.copy(trained_dag[0].parent / "stage_seconds.json", tmp_path)
    weights = torch.load(repo / "models/finetune/fold0/last.pt", weights_only=True)["model"]
    return repo, weights


def digest(path: Path) -> dict[str, str] | None:
    """Content of an output: {relative file: sha256}; None when absent."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)) if p != path else ".": hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def check_training_folder(folder: Path) -> list[str]:
    """What is wrong in a (possibly interrupted) checkpoint folder: every checkpoint loads."""
    problems = []
    if not folder.exists():
        return problems
    for p in folder.glob("*.pt"):
        try:
            ckpt = torch.load(p, weights_only=True)
            assert "model" in ckpt and "iteration" in ckpt
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            problems.append(f"{p.name}: {exc.__class__.__name__}")
    if (folder / "summary.json").exists():
        json.loads((folder / "summary.json").read_text())
    return problems


def run_killed(cmd: str, cwd: Path, delay: float) -> int:
    proc = subprocess.Popen(
        cmd, shell=True, cwd=cwd, env=dvc_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


@pytest.mark.slow
def test_every_stage_killed_at_random_moments_leaves_complete_outputs_or_none(killable_dag, tmp_path):
    repo = killable_dag[0]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    built_in = json.loads((repo.parent / "stage_seconds.json").read_text())  # each stage's time in the shared build
    rng = random.Random(0)
    tried, problems = 0, []
    for i, (key, stage) in enumerate(lock.items()):
        name = key.split("@")[0]  # a matrix stage (finetune@0) is its stage's kind
        cmd = stage["cmd"] if isinstance(stage["cmd"], str) else " && ".join(stage["cmd"])
        outs = [repo / o["path"] for o in stage.get("outs", [])]
        complete = {o: digest(o) for o in outs}
        backup = tmp_path / "backup" / name
        for o in outs:
            (backup / o.relative_to(repo)).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", str(o), str(backup / o.relative_to(repo))], check=True)
        if name in TRAINING:  # killed while it trains from scratch, in its time in the shared build (a rerun
            full = built_in[key]  # here would only resume the finished run: no checkpoint written to be cut)
        else:  # timed here, and a rerun on the same inputs writes the same bytes
            t = time.perf_counter()
            subprocess.run(cmd, shell=True, cwd=repo, env=dvc_env(), check=True, capture_output=True)
            full = time.perf_counter() - t
            assert {o: digest(o) for o in outs} == complete, f"{name} is not deterministic"
        for k in range(KILL_POINTS):
            if name in TRAINING or (i + k) % 2 == 0:  # half the other tries start without the old output
                for o in outs:
                    subprocess.run(["rm", "-rf", str(o)], check=True)
            # most of a short stage's time is Python importing: aim at the second half
            rc = run_killed(cmd, repo, rng.uniform(0.4, 1.0) * full)
            tried += 1
            for o in outs:
                if name in TRAINING:
                    problems += [f"{name} ({rc}): {p}" for p in check_training_folder(o)]
                elif digest(o) not in (None, complete[o]):
                    problems.append(f"{name} (rc {rc}): {o.relative_to(repo)} is partial or different")
        for o in outs:  # complete outputs again for the stages after it
            subprocess.run(["rm", "-rf", str(o)], check=True)
            subprocess.run(["cp", "-a", str(backup / o.relative_to(repo)), str(o)], check=True)
    assert not problems, problems
    assert tried == KILL_POINTS * len(lock)
    # stale temporaries of killed writers never sit inside an output folder
    assert not [p for p in (repo / "models").rglob("*.tmp")]
    assert "up to date" in dvc(repo, "status").stdout


def wait_for_checkpoint(path: Path, at_least: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError("dvc repro ended before it could be interrupted")
        if path.is_file():
            try:
                it = torch.load(path, weights_only=True)["iteration"]
            except Exception:  # noqa: BLE001 - being replaced right now
                it = 0
            if it >= at_least:
                return it
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at iteration ≥ {at_least} within {timeout} s")


@pytest.mark.slow
def test_finetune_killed_then_dvc_repro_resumes_to_the_same_result(killable_dag):
    """Kill ``dvc repro`` during finetune, rerun it: it resumes and ends where an uninterrupted run ends."""
    repo, weights = killable_dag
    iters = FINETUNE_ITERS

    subprocess.run(["rm", "-rf", str(repo / "models/finetune/fold0")], check=True)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dvc"), "repro"],
        cwd=repo,
        env=dvc_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    killed_at = wait_for_checkpoint(repo / "models/finetune/fold0/last.pt", 8, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 8 <= killed_at < iters

    # the stage alone: what follows it only re-derives predictions from these weights (deterministic, as the
    # test above checks for every stage), and rerunning it cost this test half its time
    second = dvc(repo, "repro", "finetune@0")
    assert ran_stages(second.stdout) == ["finetune@0"]
    summary = json.loads((repo / "models/finetune/fold0/summary.json").read_text())
    assert summary["resumed_from"] >= killed_at and summary["iterations"] == iters
    resumed = torch.load(repo / "models/finetune/fold0/last.pt", weights_only=True)
    assert resumed["iteration"] == iters
    assert resumed["model"].keys() == weights.keys()
    for key, value in weights.items():
        assert torch.allclose(resumed["model"][key].float(), value.float(), atol=1e-5), key
    assert "finetune@0" not in stale_stages(repo)  # recorded in dvc.lock: the stages after it see the new outputs
