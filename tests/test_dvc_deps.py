"""dvc.yaml can never let DVC reuse a stale output.

A stage is reused when its deps, params and command are unchanged. So every repo file
its command imports (the transitive closure, imports inside functions included) must
be a dep, and nothing else of ours (an edit to plotting must not retrain a model);
every file it reads must be on its command line and a dep; no stage code hard-codes
an input path. Run ``python -m tests.test_dvc_deps`` to print each stage's closure.
"""

from __future__ import annotations

import ast
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGES = ("cellpipe", "stages")
# The dispatcher every command passes through: it maps errors to exit codes and calls
# the stage's function; its module-level imports of the other stages compute nothing.
DISPATCH = {"stages/cli.py", "stages/__main__.py", "stages/entry.py"}
NUMERICS = "requirements.lock"  # the resolved torch/torchvision/numpy versions
MODEL_STAGES = {"pretrain", "finetune", "predict"}
REPO_FOLDERS = ("data/", "models/", "metrics/", "plots/")


def module_file(name: str) -> Path | None:
    """The repo file of module ``name`` (a package's ``__init__.py``), or None when not ours."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module an AST imports when run, anywhere (functions too), except under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules; others drop out
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first
    return {".".join(m.split(".")[:k]) for m in found for k in range(1, m.count(".") + 2)}


def closure(start: Path) -> set[str]:
    """Repo-relative paths of ``start`` and every repo file it imports, transitively."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in imported_modules(ast.parse(f.read_text(), str(f))):
            dep = module_file(name)
            if dep is not None and dep not in seen:
                todo.append(dep)
    # the stages package's __init__ runs too, as the stage module is stages.<name>
    seen.add(REPO / "stages" / "__init__.py")
    return {p.relative_to(REPO).as_posix() for p in seen} - DISPATCH


def stage_modules() -> dict[str, Path]:
    """``cellpipe`` subcommand → the file of the function it runs."""
    from stages.cli import app

    out = {}
    for command in app.registered_commands:
        module = command.callback.__module__
        out[command.name] = module_file(module)
    return out


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def subcommand(cmd: str | list[str]) -> str:
    """The one ``cellpipe`` subcommand a stage runs (a list of commands: all the same subcommand)."""
    names = set()
    for one in [cmd] if isinstance(cmd, str) else cmd:
        words = one.split()
        assert words[0] == "cellpipe", f"stage command does not start with cellpipe: {one}"
        names.add(words[1])
    assert len(names) == 1, f"a stage's commands run different subcommands: {sorted(names)}"
    return names.pop()


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


def rewrite_code_deps(text: str) -> str:
    """``dvc.yaml`` text with each stage's ``.py`` deps replaced by its closure (other deps and order kept)."""
    stages, modules = yaml.safe_load(text)["stages"], stage_modules()
    out, stage, in_deps = [], None, False
    for line in text.split("\n"):
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":") and line.strip()[:-1] in stages:
            stage = line.strip()[:-1]
        if in_deps and not line.startswith("      - "):
            out += [f"      - {f}" for f in sorted(closure(modules[subcommand(stages[stage]["cmd"])]))]
            in_deps = False
        if in_deps and line.endswith(".py"):
            continue
        in_deps = in_deps or line == "    deps:"
        out.append(line)
    return "\n".join(out)


if __name__ == "__main__":  # python -m tests.test_dvc_deps [--fix]
    if "--fix" in sys.argv:
        (REPO / "dvc.yaml").write_text(rewrite_code_deps((REPO / "dvc.yaml").read_text()))
    mods = stage_modules()
    for name, stage in dvc_stages().items():
        print(name, sorted(closure(mods[subcommand(stage["cmd"])])))
