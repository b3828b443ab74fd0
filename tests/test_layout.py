"""The package's layers: every module imports on its own, the import graph has no cycle, and
the library never reaches up into the command line, the demo or terminal rendering."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tp_rag"

# What only the top layer (tp_rag.cli) may import: argument parsing and terminal rendering.
TOP_ONLY = ("tp_rag.cli", "argparse", "rich", "gradio")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_top_layer(name: str) -> bool:
    """The command line: ``tp_rag.cli`` and ``python -m tp_rag`` (``tp_rag.__main__``)."""
    return name == "tp_rag.__main__" or name == "tp_rag.cli" or name.startswith("tp_rag.cli.")


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports, at the top or inside a function (lazy imports count)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(MODULES)
            # `from tp_rag import loading` imports the module tp_rag.loading, not tp_rag's names
            found.update(submodules if len(submodules) == len(node.names) else {base})
            found.update(submodules)
    return found


def internal_graph() -> dict[str, set[str]]:
    """Module -> the tp_rag modules it imports directly."""
    return {name: {t for t in imports_of(name) if t in MODULES and t != name} for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    """No chain of imports, eager or lazy, leads from a module back to itself."""
    assert find_cycle(internal_graph()) is None, " -> ".join(find_cycle(internal_graph()) or [])


def test_find_cycle_finds_one() -> None:
    """The checker itself: a two-module loop is reported as a path."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_does_not_import_the_command_line_or_the_ui() -> None:
    """Only ``tp_rag.cli`` imports the CLI, argparse, rich or gradio."""

    def top_only(target: str) -> bool:
        return any(target == top or target.startswith(f"{top}.") for top in TOP_ONLY)

    offenders = {
        name: sorted(filter(top_only, imports_of(name)))
        for name in MODULES
        if not is_top_layer(name)
    }
    assert not {name: found for name, found in offenders.items() if found}


def test_the_core_does_not_import_the_library_above_it() -> None:
    """The core modules (config, prompts, presets, loading, sentences, tp, vectors, encoder)
    import only each other."""
    core = {
        f"tp_rag.{n}"
        for n in ("config", "prompts", "presets", "loading", "sentences", "tp", "vectors")
    }
    core |= {"tp_rag.encoder", "tp_rag"}
    graph = internal_graph()
    upward = {name: sorted(graph[name] - core) for name in core if graph[name] - core}
    assert not upward, upward


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"tp_rag.__main__"}))  # that one runs
def test_each_module_imports_alone(name: str) -> None:
    """Importing a module in a fresh interpreter works (no hidden order dependence)."""
    if name == "tp_rag.chroma":
        pytest.importorskip("chromadb")
    result = subprocess.run(
        [sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_command_line_help_does_not_load_torch() -> None:
    """``tp-rag --help`` stays fast: the command modules import no model code at the top."""
    code = (
        "import sys, tp_rag.cli; tp_rag.cli.build_parser();"
        "print(sorted(m for m in ('torch', 'transformers', 'chromadb', 'ray') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
