"""``cellpipe deps``: each stage's code closure, and ``dvc.yaml``'s code deps kept equal to it.

DVC reuses a stage's outputs when its deps are unchanged, so every repo file its command
imports (transitively, imports inside functions included, ``if TYPE_CHECKING`` blocks
excluded) is a dep of the stage, and nothing else of ours. ``tests/test_dvc_deps.py``
fails when ``dvc.yaml`` and the closures differ; ``cellpipe deps --fix`` rewrites the
``.py`` deps of every stage from its closure (other deps and their order kept).
"""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from cellpipe import imports

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cellpipe", "stages")
# The dispatcher every command passes through: it maps errors to exit codes and calls
# the stage's function; its module-level imports of the other stages compute nothing.
DISPATCH = {"stages/cli.py", "stages/__main__.py", "stages/entry.py", "stages/deps.py"}


def module_file(name: str) -> Path | None:
    """The repo file of module ``name`` (a package's ``__init__.py``), or None when not ours."""
    return imports.module_file(name, REPO, PACKAGES)


def closure(start: Path) -> set[str]:
    """Repo-relative paths of ``start`` and every repo file it imports, transitively."""
    seen = imports.closure(start, REPO, PACKAGES)
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


def show(
    fix: bool = typer.Option(False, "--fix", help="rewrite dvc.yaml's code deps from the closures"),
    dvc_yaml: Path = typer.Option(REPO / "dvc.yaml", help="the dvc.yaml to read (and fix)"),
) -> None:
    """Print each stage's code closure; with ``--fix``, write it into ``dvc.yaml``."""
    if fix:
        dvc_yaml.write_text(rewrite_code_deps(dvc_yaml.read_text()))
    modules = stage_modules()
    for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        typer.echo(f"{name}: {' '.join(sorted(closure(modules[subcommand(stage['cmd'])])))}")
