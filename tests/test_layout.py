"""The package's layers: every module imports on its own, the import graph has no cycle, and
the library never reaches up into the command line, the demo or terminal rendering. The
shipping code holds no hooks for tests, and the adapters' settings are ``TPConfig``'s."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from tp_rag.config import TPConfig

PACKAGE = Path(__file__).resolve().parents[1] / "tp_rag"
README = PACKAGE.parent / "README.md"

# What only the top layer (tp_rag.cli, tp_rag.demo) may import: argument parsing and rendering.
TOP_ONLY = ("tp_rag.cli", "tp_rag.demo", "argparse", "rich", "gradio")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_top_layer(name: str) -> bool:
    """The command line (``tp_rag.cli``, ``python -m tp_rag``) and the demo (``tp_rag.demo``)."""
    tops = ("tp_rag.cli", "tp_rag.demo")
    return name == "tp_rag.__main__" or any(name == t or name.startswith(f"{t}.") for t in tops)


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
    """config, prompts, presets, loading, sentences, tp, vectors, errors and encoder import only
    each other; errors, the bottom, imports no tp_rag module."""
    core = {
        f"tp_rag.{n}"
        for n in ("config", "prompts", "presets", "loading", "sentences", "tp", "vectors")
    }
    core |= {"tp_rag.encoder", "tp_rag.errors", "tp_rag"}
    graph = internal_graph()
    upward = {name: sorted(graph[name] - core) for name in core if graph[name] - core}
    assert not upward, upward
    assert graph["tp_rag.errors"] == set()


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


def environment_reads(source: str) -> set[str]:
    """The environment variables a module's code reads (``os.environ.get(K)``,
    ``os.environ[K]``, ``os.getenv(K)``, ``K in os.environ``), ``K`` a string or a module-level
    string constant; a key it cannot name is returned as ``?EXPRESSION``."""
    tree = ast.parse(source)
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }

    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    def name(key: ast.AST) -> str:
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return key.value
        if isinstance(key, ast.Name) and key.id in constants:
            return constants[key.id]
        return f"?{ast.unparse(key)}"

    keys = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if (node.func.attr == "get" and is_environ(node.func.value)) or (
                node.func.attr == "getenv"
            ):
                keys.append(node.args[0])
        elif isinstance(node, ast.Subscript) and is_environ(node.value):
            keys.append(node.slice)
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            keys.append(node.left)
    return {name(key) for key in keys}


def test_environment_reads_are_found() -> None:
    """The checker itself: literal keys, constants, subscripts, membership, unnamed keys."""
    source = (
        "import os\nHOOK = 'TP_RAG_TEST_HOOK'\n"
        "def f(key):\n"
        "    a = os.environ.get(HOOK); b = os.getenv('B'); c = os.environ['C']\n"
        "    return 'D' in os.environ, os.environ.get(key)\n"
    )
    assert environment_reads(source) == {"TP_RAG_TEST_HOOK", "B", "C", "D", "?key"}


def test_the_library_reads_only_documented_environment_variables() -> None:
    """An environment variable a library module reads is a user setting, named in the README;
    one read only for tests (a fault switch, a counter) is a hook that belongs in the tests."""
    readme = README.read_text(encoding="utf-8")
    undocumented = {
        name: sorted(key for key in environment_reads(path.read_text()) if key not in readme)
        for name, path in MODULES.items()
        if not is_top_layer(name)
    }
    assert not {name: keys for name, keys in undocumented.items() if keys}


def test_the_package_never_exits_the_process_abruptly() -> None:
    """No ``os._exit`` in the package: a crash for a test is the test's to cause."""
    calls = {
        name
        for name, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute) and node.attr == "_exit"
    }
    assert not calls


def test_the_adapters_fields_are_tpconfigs() -> None:
    """The shared adapter settings (written out as pydantic fields) are exactly TPConfig's
    settings (model and digest aside), the loading options, the model and ``query_prompt``;
    the LangChain and LlamaIndex adapters build on them and add only their own options."""
    pytest.importorskip("pydantic")
    from tp_rag.adapters import LOADING_OPTIONS, EncoderSettings, TPSettings

    settings = {f.name for f in dataclasses.fields(TPConfig)} - {"model", "model_digest"}
    shared = settings | set(LOADING_OPTIONS) | {"model_name", "query_prompt"}
    assert set(TPSettings.model_fields) == shared
    assert set(EncoderSettings.model_fields) == shared - {"batch_size"}

    langchain = pytest.importorskip("langchain_tp")
    assert issubclass(langchain.TPEmbeddings, TPSettings)
    assert set(langchain.TPEmbeddings.model_fields) == shared | {"show_progress"}
    llama = pytest.importorskip("llama_index.embeddings.tp")
    from llama_index.core.base.embeddings.base import BaseEmbedding

    assert issubclass(llama.TPEmbedding, EncoderSettings)
    own = set(llama.TPEmbedding.model_fields) - set(BaseEmbedding.model_fields)
    assert own == shared - {"batch_size", "model_name"} | {"show_progress"}
