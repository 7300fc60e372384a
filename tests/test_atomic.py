"""Atomic outputs: a stage killed (SIGKILL) at any moment leaves the old output or none."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from cellpipe.atomic import atomic_path
from tests.conftest import REPO, SAMPLE, requires_shared


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_path(tmp_path / "d", directory=True) as tmp:
        (tmp / "a").write_text("x")
    assert (tmp_path / "d" / "a").read_text() == "x"


@pytest.mark.slow
@requires_shared()
def test_decode_killed_at_random_moments(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "stages",
        "decode",
        "--kaggle-dir",
        str(SAMPLE),
        "--annotations-out",
        str(out / "a.parquet"),
        "--images-out",
        str(out / "i.parquet"),
        "--params",
        str(tmp_path / "p.yaml"),
    ]
    (tmp_path / "p.yaml").write_text("decode: {duplicates: error}\n")
    env = {**os.environ, "CELLPIPE_NO_PROGRESS": "1"}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True)
    full = time.perf_counter() - t
    expected = len(pd.read_parquet(out / "a.parquet"))
    for p in out.iterdir():
        p.unlink()
    import random

    rng = random.Random(0)
    points = [rng.uniform(0.3, 1.1) * full for _ in range(8)]
    for delay in points:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for name in ("a.parquet", "i.parquet"):
            path = out / name
            if path.exists():  # complete or absent, never partial
                assert len(pd.read_parquet(path)) == (expected if name == "a.parquet" else 6)
