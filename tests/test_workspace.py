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
