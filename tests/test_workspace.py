"""Tests do not depend on what the workspace's ``params.yaml`` holds.

``./run.sh profile real`` (like ``dvc exp run``) leaves the profile's values in the
workspace ``params.yaml`` (``decode.duplicates: drop``, real-data paths, other models).
Every test that runs a stage gives it a params file the test controls: its own, or the
committed one (``conftest.cli_home``). Proof: apply every profile to a copy of the
workspace and run the stage tests there.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from cellpipe import profiles
from tests.conftest import REPO, params_text
from tests.helpers import git, tracked_copy


@pytest.mark.slow
def test_stage_tests_pass_with_every_profile_applied_to_the_workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    tracked_copy(ws)
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True, capture_output=True)
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "workspace")
    if (REPO.parent / "shared").is_dir():
        (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    names = sorted(p.stem for p in (ws / "profiles").glob("*.yaml"))
    for name in names:  # every profile, as a user running them one after the other leaves the file
        profiles.apply(params, (ws / "profiles" / f"{name}.yaml").read_text())
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert params["decode"]["duplicates"] == "drop" and params != yaml.safe_load(params_text())
    env = {**os.environ, "CELLPIPE_NO_PROGRESS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_stages_data.py"],
        cwd=ws, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.split("\n")[-2], proc.stdout[-500:]


def test_cellpipe_runs_the_code_of_the_checkout_it_runs_in(tmp_path):
    """``dvc exp run --queue``/``--temp`` runs every command in a copy of the repository and
    records the copy's files as the stages' dependencies; the ``cellpipe`` script (an
    editable install of one checkout) ran the original checkout's code instead — whatever it
    held by then. Found when a queued experiment's log showed a change made after queueing."""
    import shutil

    copy = tmp_path / "copy"
    skip = shutil.ignore_patterns("__pycache__")
    for folder in ("cellpipe", "stages"):
        shutil.copytree(REPO / folder, copy / folder, ignore=skip)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, copy / name)
    init = copy / "cellpipe" / "__init__.py"
    init.write_text(init.read_text() + "\nimport sys\n\nprint('code of the copy', file=sys.stderr)\n")
    script = os.path.join(os.path.dirname(sys.executable), "cellpipe")
    if not os.path.isfile(script):
        pytest.skip("no cellpipe script beside this Python (not installed with pip install -e)")
    env = {**os.environ, "CELLPIPE_NO_PROGRESS": "1"}
    there = subprocess.run([script, "params"], cwd=copy, env=env, capture_output=True, text=True, timeout=120)
    assert there.returncode == 0 and "code of the copy" in there.stderr, there.stderr
    elsewhere = subprocess.run([script, "params", "--defaults"], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=120)  # fmt: skip
    assert elsewhere.returncode == 0 and "code of the copy" not in elsewhere.stderr, elsewhere.stderr
