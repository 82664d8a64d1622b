"""The layers, read from the source: steps (components/) never import the KFP wiring or the CLI, serving/ imports
nothing of ours above it (it travels alone inside the .mar), and library modules log instead of printing."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIRING = ("platepipe.pipeline.pipeline", "platepipe.pipeline.steps", "platepipe.pipeline.tasks",
          "platepipe.pipeline.cli", "platepipe.pipeline.commands", "platepipe.pipeline.local_run",
          "platepipe.pipeline.kfp_")
# programs rather than library modules: what they print is their output
PROGRAMS = {"serving/container.py"}


def modules(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text())


def imported(tree: ast.AST) -> list[tuple[str, int]]:
    """(module, level) of every import; level > 0: relative."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", node.level))
    return out


def test_steps_never_import_the_wiring_or_the_cli():
    bad = [(path, name) for path, tree in modules("components") for name, level in imported(tree)
           if level == 0 and name.startswith(WIRING)]
    assert not bad, bad


def test_serving_imports_nothing_of_ours_above_it():
    bad = [(path, name) for path, tree in modules("serving") for name, level in imported(tree)
           if level == 0 and (name.startswith("platepipe") or name.split(".")[0] in ("pipeline", "components", "configs"))
           or level > 1]
    assert not bad, bad


def test_library_modules_log_instead_of_printing():
    printing = [f"{path}:{node.lineno}" for folder in ("components", "serving") for path, tree in modules(folder)
                if path not in PROGRAMS for node in ast.walk(tree)
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
    assert not printing, f"print() in library modules (log with logging.getLogger(__name__)): {printing}"
