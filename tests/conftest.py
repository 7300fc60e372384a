from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SAMPLE = SHARED / "sartorius-sample"
os.environ.setdefault("CELLPIPE_NO_PROGRESS", "1")
# One compute thread per process: the suite runs as 2 workers on 2 cores, each starting
# subprocesses (stages, dvc); torch's default of one thread per core oversubscribes the
# cores and OpenMP's spin-waiting then makes a 2 s training test take a minute. Set
# before torch is imported anywhere (tests that compare thread counts set their own).
os.environ.setdefault("OMP_NUM_THREADS", "1")


_CLI_HOME: Path | None = None


def cli_home() -> Path:
    """The folder commands run in when a test names none: it holds the *committed* ``params.yaml`` and nothing
    else, so a stage that reads its default ``params.yaml`` never sees what ``dvc exp run`` or
    ``./run.sh profile`` left in the workspace (``decode.duplicates: drop``, real-data paths)."""
    global _CLI_HOME
    if _CLI_HOME is None:
        import tempfile

        _CLI_HOME = Path(tempfile.mkdtemp(prefix="cellpipe-cli-"))
        atexit.register(shutil.rmtree, _CLI_HOME, ignore_errors=True)
        (_CLI_HOME / "params.yaml").write_text(params_text())
    return _CLI_HOME


def cli_env() -> dict[str, str]:
    """The environment every ``cellpipe`` command of the tests runs with: no progress bars, wide lines."""
    return {**os.environ, "CELLPIPE_NO_PROGRESS": "1", "COLUMNS": "200"}


class Zygote:
    """This worker's ``tests/zygote.py``: commands run in processes forked from an interpreter that
    imported the stack once (see there why). ``CELLPIPE_TEST_FRESH=1`` starts a fresh
    ``python -m stages`` per command instead, as the suite did before."""

    _proc: subprocess.Popen | None = None

    @classmethod
    def server(cls) -> subprocess.Popen:
        if cls._proc is None or cls._proc.poll() is not None:
            cls._proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "zygote.py")], cwd=cli_home(), env=cli_env(),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
            atexit.register(cls._proc.kill)
            cls.reply(None)  # {"ready": …} once everything is imported
        return cls._proc

    @classmethod
    def reply(cls, deadline: float | None) -> dict:
        import select
        import time

        out = cls._proc.stdout
        if deadline is not None and not select.select([out], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError
        line = out.readline()
        if not line:
            raise RuntimeError(f"tests/zygote.py ended (exit {cls._proc.wait()})")
        return json.loads(line)

    @classmethod
    def run(cls, args: tuple[str, ...], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        import signal
        import tempfile
        import time

        server = cls.server()
        with tempfile.TemporaryDirectory(prefix="cellpipe-run-") as tmp:
            out, err = Path(tmp) / "out", Path(tmp) / "err"
            request = {"args": list(args), "cwd": str(cwd), "env": env, "out": str(out), "err": str(err),
                       "argv0": str(REPO / "stages" / "__main__.py")}  # fmt: skip
            server.stdin.write(json.dumps(request) + "\n")
            server.stdin.flush()
            pid = cls.reply(None)["pid"]
            try:
                rc = cls.reply(time.monotonic() + timeout)["rc"]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                cls.reply(None)
                raise subprocess.TimeoutExpired(["cellpipe", *args], timeout) from None
            return subprocess.CompletedProcess(["cellpipe", *args], rc, out.read_text(), err.read_text())


def run_cli(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``cellpipe`` command in its own process (in :func:`cli_home` unless ``cwd`` is given):
    forked from this worker's :class:`Zygote`, or a fresh interpreter with ``CELLPIPE_TEST_FRESH=1``."""
    env = cli_env()
    if os.environ.get("CELLPIPE_TEST_FRESH") == "1":
        proc = subprocess.run(
            [sys.executable, "-m", "stages", *args], cwd=cwd or cli_home(), env=env, capture_output=True, text=True, timeout=600
        )
    else:
        proc = Zygote.run(args, Path(cwd or cli_home()).absolute(), env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"cellpipe {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_kaggle(tmp_path_factory) -> Path:
    """A small synthetic Kaggle-layout folder (2 images per type, few cells)."""
    from cellpipe import synth

    out = tmp_path_factory.mktemp("kaggle")
    synth.write_kaggle(out, {"shsy5y": 2, "astro": 2, "cort": 2}, 2, 0.1, seed=1, images_per_sample=1)
    return out


@pytest.fixture
def kaggle_copy(tmp_path, tiny_kaggle) -> Path:
    """A writable copy of the tiny Kaggle folder, for corrupting."""
    dst = tmp_path / "kaggle"
    shutil.copytree(tiny_kaggle, dst)
    return dst


def params_text(repo: Path = REPO) -> str:
    """The repo's params.yaml as committed, whatever experiment the workspace holds.

    ``dvc exp run`` / ``./run.sh profile`` rewrite the workspace's params.yaml (real-data
    paths, ``decode.duplicates: drop``); tests must not inherit that. Experiments change
    values, development changes keys: when the workspace file has the committed file's
    keys, the committed one is used; when its keys differ (a new knob not committed
    yet), the workspace one.
    """
    import yaml

    work = (repo / "params.yaml").read_text()
    head = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=repo, capture_output=True, text=True)
    if head.returncode != 0:
        return work

    def keys(d, prefix=""):
        return {prefix + k for k in d} | {
            x for k, v in d.items() if isinstance(v, dict) and k not in ("images_per_type",) for x in keys(v, f"{prefix}{k}.")
        }

    return head.stdout if keys(yaml.safe_load(head.stdout)) == keys(yaml.safe_load(work)) else work


def write_params(path: Path, edit=None) -> Path:
    """Write the committed params (see :func:`params_text`), edited by ``edit(dict)``, to ``path``."""
    import yaml

    params = yaml.safe_load(params_text())
    if edit is not None:
        edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# a model small enough to train a few steps in seconds
TINY_MODEL = None  # set below (imports torch-free config only)
CLASSES = ["shsy5y", "astro", "cort"]


def tiny_model(**kw):
    """The tiny model config, with ``kw`` changed."""
    from cellpipe.config import Model

    base = dict(
        min_size=130,
        max_size=176,
        fpn_channels=16,
        box_head_dim=32,
        mask_head_channels=16,
        mask_head_layers=1,
        norm="batch",
        detections_per_img=50,
        rpn_pre_nms_test=200,
        rpn_post_nms_test=100,
        anchor_sizes=[4, 8, 16, 32, 64],
    )
    return Model(**{**base, **kw})


TINY_MODEL = tiny_model()
# the flow family's tiny U-Net (4 levels, 8…64 channels, 100 flow steps)
TINY_CP = tiny_model(arch="cellpose", cellpose={"nbase": [8, 16, 32, 64], "niter": 100})


def cellpipe_checkpoint(path: Path, cfg, classes: list[str], seed: int = 0) -> None:
    """A checkpoint as cellpipe's training writes it, of an untrained ``cfg`` model (initialised from ``seed``)."""
    import torch

    from cellpipe import models

    torch.manual_seed(seed)
    model = models.build(cfg, len(classes))
    torch.save(
        {"model": model.state_dict(), "model_config": cfg.model_dump(mode="json"), "classes": classes, "iteration": 1}, path
    )


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> dict:
    """A COCO dict of 4 tiny synthetic images (paths usable from here)."""
    from cellpipe import coco, synth, tables

    out = tmp_path_factory.mktemp("coco")
    synth.write_kaggle(out, {"shsy5y": 1, "astro": 1, "cort": 2}, 0, 0.05, seed=2, images_per_sample=1)
    ann, images = tables.build_tables(tables.read_train_csv(out / "train.csv"), out / "train")
    return coco.build(images, ann)


@pytest.fixture(scope="session")
def trained_dag(tmp_path_factory) -> tuple[Path, str]:
    """The tiny DAG after ``dvc repro`` from clean, built once per session and shared by every worker
    (test_dvc.py and test_dvc_kills.py may run on different ones): the first worker to ask builds it under a
    lock, each worker then works on a copy of its own (and tests that change it on a further copy:
    ``helpers.copy_repo``). Beside the copy, ``stage_seconds.json``: each stage's wall time in the build."""
    import fcntl

    from tests.helpers import SHARED_DAG, copy_repo, dvc_timed, repo_from_applied_workspace

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's folder, above each worker's
    with open(root / "trained_dag.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = root / "trained_dag"
        if not (built / "done").is_file():
            shutil.rmtree(built, ignore_errors=True)
            built.mkdir()
            repo = repo_from_applied_workspace(built, SHARED_DAG)
            out, seconds = dvc_timed(repo, "repro")
            (built / "repro.out").write_text(out)
            (built / "stage_seconds.json").write_text(json.dumps(seconds))
            (built / "done").write_text("")
    repo = copy_repo(built / "repo", tmp_path_factory.mktemp("dag") / "repo")
    shutil.copy(built / "stage_seconds.json", repo.parent)  # beside the copy: how long each stage ran in the build
    return repo, (built / "repro.out").read_text()


def requires_shared():
    return pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/data is not beside the repo")


def decode_and_split(kaggle: Path, tmp_path: Path, params: Path) -> None:
    """``cellpipe decode`` then ``cellpipe coco`` into ``tmp_path`` (a/i.parquet, folds/lockbox.json),
    and fold 0's split of folds.json as two plain COCO files (train/val.json)."""
    import json

    from cellpipe import folds

    run_cli("decode", "--kaggle-dir", str(kaggle), "--annotations-out", str(tmp_path / "a.parquet"),
            "--images-out", str(tmp_path / "i.parquet"), "--params", str(params), check=True)  # fmt: skip
    run_cli("coco", "--annotations", str(tmp_path / "a.parquet"), "--images", str(tmp_path / "i.parquet"),
            "--folds-out", str(tmp_path / "folds.json"), "--lockbox-out", str(tmp_path / "lockbox.json"),
            "--params", str(params), check=True)  # fmt: skip
    train, val = folds.select(json.loads((tmp_path / "folds.json").read_text()), 0, where="folds.json")
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "val.json").write_text(json.dumps(val))


def score_cli(tmp_path: Path, predictions: Path, truth: Path, *extra: str, thresholds: dict | None = None):
    """``cellpipe score`` of ``predictions`` against every image of ``truth``; metrics in ``tmp_path/s.json``."""
    import json

    (tmp_path / "th.json").write_text(json.dumps(thresholds or {"score_threshold": {}}))
    return run_cli("score", "--predictions", str(predictions), "--truth", str(truth), "--all-truth-images",
                   "--thresholds", str(tmp_path / "th.json"), "--out", str(tmp_path / "s.json"),
                   "--per-image-out", str(tmp_path / "pi.csv"), "--per-iou-out", str(tmp_path / "piou.csv"),
                   *extra)  # fmt: skip


# The files holding the long DAG and training tests, longest first: ``--dist loadfile --no-loadscope-reorder``
# (run.sh) hands files to the two workers in collection order (xdist's default order is by test count, which
# left these few-test files for the end), so they start at once and the short files fill in around them. Each
# worker starts with two files (the 1st and 3rd, the 2nd and 4th): the two files on the shared DAG go to different
# workers, test_dvc_kills.py after test_cellpose.py, by when the DAG is built.
LONG_FILES = ("test_dvc.py", "test_cellpose.py", "test_real_dag.py", "test_dvc_kills.py", "test_distributed.py",
              "test_gpu_recipe.py", "test_workspace.py")  # fmt: skip


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: k for k, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: the rest keep their order
