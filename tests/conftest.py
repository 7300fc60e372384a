from __future__ import annotations

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


def run_cli(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``cellpipe`` command in a subprocess."""
    env = {**os.environ, "CELLPIPE_NO_PROGRESS": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "stages", *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=600)
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
        return {prefix + k for k in d} | {x for k, v in d.items() if isinstance(v, dict) and k not in ("images_per_type",)
                                          for x in keys(v, f"{prefix}{k}.")}

    return head.stdout if keys(yaml.safe_load(head.stdout)) == keys(yaml.safe_load(work)) else work


def write_params(path: Path, edit=None) -> Path:
    """Write the committed params (see :func:`params_text`), edited by ``edit(dict)``, to ``path``."""
    import yaml

    params = yaml.safe_load(params_text())
    if edit is not None:
        edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def requires_shared():
    return pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/data is not beside the repo")
