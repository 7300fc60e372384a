"""dvc.yaml can never let DVC reuse a stale output.

A stage is reused when its deps, params and command are unchanged. So every repo file
its command imports (the transitive closure, imports inside functions included) must
be a dep, and nothing else of ours (an edit to plotting must not retrain a model);
every file it reads must be on its command line and a dep; no stage code hard-codes
an input path. ``cellpipe deps`` prints each stage's closure (``--fix`` writes it into
``dvc.yaml``).
"""

from __future__ import annotations

import ast
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from cellpipe.imports import imported_modules
from stages.deps import closure, dvc_stages, stage_modules, subcommand
from tests.conftest import REPO

NUMERICS = "requirements.lock"  # the resolved torch/torchvision/numpy versions
MODEL_STAGES = {"pretrain", "finetune", "predict"}
REPO_FOLDERS = ("data/", "models/", "metrics/", "plots/")


def test_every_stage_depends_on_exactly_the_code_it_imports():
    modules = stage_modules()
    problems = []
    for name, stage in dvc_stages().items():
        code = closure(modules[subcommand(stage["cmd"])])
        listed = {d for d in stage.get("deps", []) if d.endswith(".py")}
        problems += [f"{name}: misses {f}" for f in sorted(code - listed)]
        problems += [f"{name}: lists {f}, which its command never imports" for f in sorted(listed - code)]
    assert not problems, "\n".join(problems)


def test_no_import_hides_from_the_closure():
    """``importlib``/``__import__`` with a computed name would make a dependency invisible to the closure."""
    hidden = []
    for f in sorted([*(REPO / "cellpipe").rglob("*.py"), *(REPO / "stages").glob("*.py")]):
        for node in ast.walk(ast.parse(f.read_text())):
            name = getattr(node.func, "attr", getattr(node.func, "id", "")) if isinstance(node, ast.Call) else ""
            if name in ("import_module", "__import__"):
                hidden.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert not hidden, hidden


def test_model_stages_depend_on_the_resolved_library_versions():
    for name, stage in dvc_stages().items():
        assert (NUMERICS in stage.get("deps", [])) == (name in MODEL_STAGES), name


def test_the_closure_follows_imports_inside_functions_and_skips_type_checking(tmp_path):
    tree = ast.parse(
        "import typing\nif typing.TYPE_CHECKING:\n    import cellpipe.inference\n"
        "def f():\n    from cellpipe import submission\n    from cellpipe.models import masks\n"
    )
    mods = imported_modules(tree)
    assert {"cellpipe.submission", "cellpipe.models.masks", "cellpipe.models", "cellpipe"} <= mods
    assert "cellpipe.inference" not in mods
    # score reaches overlap removal through thresholds (the stale-cache example of issue 13)
    assert "cellpipe/postprocess.py" in closure(REPO / "stages" / "score.py")
    assert "cellpipe/config.py" in closure(REPO / "stages" / "thresholds.py")


def resolved_stages() -> dict[str, tuple[list[str], set[str], set[str]]]:
    """name → (command words, deps, outs) as DVC resolves them (templating, quoting)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    out = {}
    with Repo(str(REPO)) as repo:
        for stage in repo.index.stages:
            if not getattr(stage, "cmd", None):
                continue
            rel = lambda o: Path(o.def_path).as_posix()  # noqa: E731
            deps = {rel(d) for d in stage.deps if not isinstance(d, ParamsDependency)}  # params: read via --params
            cmds = [stage.cmd] if isinstance(stage.cmd, str) else stage.cmd
            out[stage.name] = ([w for c in cmds for w in shlex.split(c)], deps, {rel(o) for o in stage.outs})
    return out


def covers(folder: str, paths: set[str]) -> bool:
    folder = folder.rstrip("/")
    return any(p == folder or p.startswith(folder + "/") for p in paths)


def is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def test_every_input_is_on_the_command_line_and_a_dependency():
    problems = []
    for name, (words, deps, outs) in resolved_stages().items():
        values = [words[k + 1] for k, w in enumerate(words[:-1]) if w.startswith("--")]
        paths = [v for v in values if not v.startswith("--") and not is_number(v)]  # --fold 0, --fixed-threshold 0.5
        for v in paths:  # every path on the command line is read (a dep) or written (an out)
            if not (covers(v, deps) or covers(v, outs)):
                problems.append(f"{name}: {v} is on the command line but neither a dep nor an out")
        data_deps = {d for d in deps if not d.endswith(".py") and d != NUMERICS}
        for d in data_deps:  # every data dep is named on the command line (or lies in a folder that is)
            if not any(d == v or d.startswith(v.rstrip("/") + "/") for v in paths):
                problems.append(f"{name}: dep {d} is not passed on the command line")
    assert not problems, "\n".join(problems)


def test_no_stage_hard_codes_an_input_path():
    """Repo paths in stage code appear only as option defaults (``typer.Option(Path("data/…"))``)."""
    problems = []
    for f in sorted((REPO / "stages").glob("*.py")):
        tree = ast.parse(f.read_text())
        allowed: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("Option", "Argument") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Call) and getattr(first.func, "id", None) == "Path" and first.args:
                    allowed.add(id(first.args[0]))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith(REPO_FOLDERS)
                and id(node) not in allowed
            ):
                problems.append(f"{f.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not problems, problems


@pytest.mark.parametrize("stage", ["score", "visualize", "finetune"])
def test_the_check_fails_when_a_dependency_is_missing(stage, monkeypatch):
    """The check itself can fail: drop one imported file from a stage and it is named."""
    stages = dvc_stages()
    victim = sorted(closure(stage_modules()[subcommand(stages[stage]["cmd"])]))[-1]
    stages[stage]["deps"].remove(victim)
    monkeypatch.setattr(sys.modules[__name__], "dvc_stages", lambda: stages)
    with pytest.raises(AssertionError, match=f"{stage}: misses {victim}"):
        test_every_stage_depends_on_exactly_the_code_it_imports()


def test_every_lock_entry_is_a_stage_of_the_dag():
    """``dvc.lock`` keeps no entry of a stage ``dvc.yaml`` no longer has (the pre-matrix ``finetune``/``predict``
    entries lingered with deps that no longer matched the code)."""
    from dvc.repo import Repo

    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    with Repo(str(REPO)) as repo:
        names = {stage.name for stage in repo.index.stages}
    assert set(lock) <= names, sorted(set(lock) - names)
