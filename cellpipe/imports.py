"""Which source files a module runs: its transitive imports within named packages.

Two things depend on knowing exactly which of our files shape a result: DVC's code deps
(``cellpipe deps`` lists them per stage, so an edit reruns the stage) and the training
resume fingerprint (a persisted ``last.pt`` may be resumed only by the code that wrote it,
or an edit that reruns a stage would hand back the old weights). Both use this one walk,
so they cannot drift apart. Found by reading the source (``ast``), not by importing it:
imports inside functions count, those under ``if TYPE_CHECKING`` do not.
"""

from __future__ import annotations

import ast
from pathlib import Path


def module_file(name: str, root: Path, packages: tuple[str, ...]) -> Path | None:
    """The file under ``root`` of module ``name`` (a package's ``__init__.py``), or None when not in ``packages``."""
    parts = name.split(".")
    if parts[0] not in packages:
        return None
    base = root.joinpath(*parts)
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


def closure(start: Path, root: Path, packages: tuple[str, ...]) -> set[Path]:
    """``start`` and every file under ``root`` of ``packages`` it imports, transitively."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in imported_modules(ast.parse(f.read_text(), str(f))):
            dep = module_file(name, root, packages)
            if dep is not None and dep not in seen:
                todo.append(dep)
    return seen
