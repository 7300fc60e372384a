"""No value DVC pastes into a command reaches the shell unquoted (matrix items included).

DVC runs each stage's ``cmd`` through a shell after replacing every ``${…}`` with a value
from ``params.yaml``. A scalar is pasted as it is, so ``cv.folds: ['0; touch X']`` used
to run ``touch X`` through ``--fold ${item.fold}``; a *mapping* is pasted as
``--key 'value'`` pairs, each value shell-quoted. So every interpolation in ``dvc.yaml``
must be a mapping (``${data.kaggle}``, the matrix's ``${item}``): the static test finds
every ``${…}`` (a new one cannot slip in), the DVC test puts a hostile value in each and
runs the stages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, params_text

EXPRESSION = re.compile(r"\$\{\s*([^}]*?)\s*\}")
HOSTILE = "x'; touch PWNED; echo '"


def commands() -> dict[str, list[str]]:
    """Stage → its command(s) as written in dvc.yaml."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: s["cmd"] if isinstance(s["cmd"], list) else [s["cmd"]] for name, s in stages.items()}


def interpolations() -> dict[str, set[str]]:
    """Stage → every ``${…}`` expression its command(s) use."""
    return {name: {e for c in cmds for e in EXPRESSION.findall(c)} for name, cmds in commands().items()}


def lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node


def test_every_interpolation_in_a_command_is_a_mapping_dvc_quotes():
    """A scalar ``${a.b}`` (or ``${item.fold}``, ``${key}``) in a command is pasted unquoted: none may exist."""
    params = yaml.safe_load(params_text())
    found = interpolations()
    assert any(found.values()), "the walk finds no interpolation: the pattern is broken"
    problems = []
    for stage, exprs in found.items():
        for e in sorted(exprs):
            if e == "item":  # the matrix item, a mapping {name: value}: DVC writes --name 'value'
                continue
            if e.startswith(("item.", "key")):
                problems.append(f"{stage}: ${{{e}}} is a matrix scalar, pasted unquoted (use ${{item}})")
                continue
            try:
                value = lookup(params, e)
            except (KeyError, TypeError):
                problems.append(f"{stage}: ${{{e}}} is not a params key")
                continue
            if not isinstance(value, dict):
                problems.append(f"{stage}: ${{{e}}} is a {type(value).__name__}, pasted unquoted (use a mapping)")
    assert not problems, "\n".join(problems)


def test_the_static_check_catches_a_scalar(monkeypatch):
    """The check itself can fail: a bare ``${item.fold}`` or ``${cv.seed}`` in a command is named."""
    monkeypatch.setattr(
        sys.modules[__name__], "commands", lambda: {"x": ["cellpipe x --fold ${item.fold}"], "y": ["cellpipe y ${cv.seed}"]}
    )
    with pytest.raises(AssertionError, match=r"x: \$\{item.fold\} is a matrix scalar[\s\S]*y: \$\{cv.seed\} is a int"):
        test_every_interpolation_in_a_command_is_a_mapping_dvc_quotes()


def hostile_params() -> tuple[dict, list[str]]:
    """The committed params with a hostile string in every value an interpolation reaches; and the keys set."""
    params = yaml.safe_load(params_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    keys = []
    for stage, exprs in interpolations().items():
        for e in exprs:
            if e == "item":
                for source in stages[stage]["matrix"].values():  # ${cv.folds}: a list of items
                    key = EXPRESSION.fullmatch(source).group(1)
                    lookup(params, key.rsplit(".", 1)[0])[key.rsplit(".", 1)[1]] = ["0; touch PWNED; echo"]
                    keys.append(key)
                continue
            for leaf in lookup(params, e):
                lookup(params, e)[leaf] = HOSTILE
                keys.append(f"{e}.{leaf}")
    return params, sorted(set(keys))


@pytest.mark.slow
def test_hostile_values_in_every_interpolated_key_never_run(tmp_path):
    """Every interpolated key set to shell syntax; each stage using one is run by ``dvc repro -s`` with its
    inputs present: the stages fail (cellpipe refuses the values) and nothing is executed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for rel in (".dvc/config", ".dvcignore", "dvc.yaml"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes((REPO / rel).read_bytes())
    params, keys = hostile_params()
    assert {
        "cv.folds",
        "data.kaggle.kaggle-dir",
        "data.livecell.livecell-json",
        "finetune.init_checkpoint.init-checkpoint",
    } <= set(keys), keys
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    from dvc.repo import Repo

    targets = []
    with Repo(str(repo)) as r:
        for stage in r.index.stages:
            if not any(interpolations()[stage.name.split("@")[0]]):
                continue
            targets.append(stage.name)
            for dep in stage.deps:  # code files too: DVC only hashes them; the command runs the installed cellpipe
                path = Path(dep.fs_path)
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("placeholder\n")
    assert len(targets) >= 6, targets  # decode, livecell, finetune@…, predict@…, submit, visualize
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    for name in targets:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "dvc"), "repro", "-s", "-f", name],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode != 0, (name, proc.stdout, proc.stderr)  # cellpipe refused the value
        assert not list(tmp_path.rglob("PWNED")), (name, proc.stdout, proc.stderr)
