"""The README's Python examples run as written: every ```python block is executed against a tiny
local model, with only the model (a hub name, or the default when none is given) replaced by
that model's path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import tp_rag_serve

from tp_rag.testing import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Where a block names a model, and what it becomes: (pattern, replacement with {model}).
MODEL_PLACES = [
    (r"TPEncoder\.from_pretrained\(\)", "TPEncoder.from_pretrained({model!r})"),
    (r"TPEmbeddings\(\)", "TPEmbeddings(model={model!r})"),
    (r"TPEmbedding\(\)", "TPEmbedding({model!r})"),
    (r"TPEmbeddingFunction\(\)", "TPEmbeddingFunction(model={model!r})"),
    (r'"/models/[^"]+"', "{model!r}"),
    (r'"meta-llama/[^"]+"', "{model!r}"),
]


SERVED_URL = "http://127.0.0.1:8080"
"""Where the "Serving" blocks reach ``tp-rag serve``; the test points them at its own server."""


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def with_model(block: str, model: str, url: str = SERVED_URL) -> str:
    for pattern, replacement in MODEL_PLACES:
        block = re.sub(pattern, replacement.format(model=model).replace("\\", "\\\\"), block)
    return block.replace(SERVED_URL, url)


@pytest.fixture(scope="module")
def readme_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-shaped model as deep as the default (24 layers), so layer numbers in the
    examples are valid."""
    return save_tiny_model(tmp_path_factory.mktemp("readme") / "qwen2", "qwen2", num_layers=24)


@pytest.fixture(scope="module")
def readme_server(readme_model: Path) -> Iterator[str]:
    """``tp-rag serve`` over the tiny model under the name the "Serving" blocks use."""
    with tp_rag_serve(["--model", str(readme_model), "--served-model-name", "qwen"]) as (url, _):
        yield url


def run_blocks(blocks: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run each block in a fresh namespace, in order, in one new Python process in ``cwd``."""
    script = (
        "import sys\n"
        "for number, block in enumerate(BLOCKS, 1):\n"
        "    print(f'--- block {number}', flush=True)\n"
        "    exec(compile(block, f'README block {number}', 'exec'), {'__name__': '__main__'})\n"
    ).replace("BLOCKS", repr(blocks))
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_readme_python_block_runs(
    readme_model: Path, readme_server: str, tmp_path: Path
) -> None:
    """All blocks run without error, and each one that loads a model names it where the test
    can swap in the tiny one (so none would silently reach for the hub); the "Serving" blocks
    talk to a real ``tp-rag serve`` of that model."""
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 7
    runnable = [with_model(block, str(readme_model), readme_server) for block in blocks]
    for original, changed in zip(blocks, runnable, strict=True):
        if "from_pretrained" in original or "Embedding" in original:
            assert changed != original, f"no model to replace in:\n{original}"
    result = run_blocks(runnable, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"--- block {len(blocks)}" in result.stdout
    # The Chroma block that reopens the collection does it "in a new process": do exactly that.
    reopen = run_blocks([next(b for b in runnable if "get_collection(" in b)], tmp_path)
    assert reopen.returncode == 0, reopen.stderr[-3000:]
    assert "Cairo" in reopen.stdout
