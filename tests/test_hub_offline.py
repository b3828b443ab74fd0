"""Loading a hub name when the Hugging Face Hub cannot be reached: one fast, clear error that
names the right way to pass a local model, or the local cache when it has the model.

The hub is made unreachable for real: ``HF_ENDPOINT`` points at a closed port on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: connections are refused


def run_offline(
    tmp_path: Path, args: list[str], **env: str
) -> tuple[subprocess.CompletedProcess, float]:
    environment = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        "HF_HOME": str(tmp_path / "hf-home"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **env,
    }
    environment.pop("HF_HUB_OFFLINE", None)
    environment.pop("TRANSFORMERS_OFFLINE", None)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, *args], env=environment, capture_output=True, text=True, timeout=120
    )
    return result, time.monotonic() - started


def test_cli_fails_fast_and_names_its_own_option(tmp_path: Path) -> None:
    """`tp-rag embed` with an unreachable hub: no retries, exit 2, a message that says the hub
    cannot be reached and to pass `--model /path` (not the Python call)."""
    result, seconds = run_offline(
        tmp_path, ["-m", "tp_rag", "embed", "--model", "some-org/some-model", "A cat."]
    )
    assert result.returncode == 2, result.stderr
    assert "Retry" not in result.stderr
    assert "cannot be reached and the model is not in the local cache" in result.stderr
    assert "e.g. tp-rag embed --model /models/" in result.stderr
    assert seconds < 25  # the imports; huggingface_hub's backoff alone took ~30 s


def test_make_demo_user_is_told_model_equals(tmp_path: Path) -> None:
    """Started by `make demo` (which sets TP_RAG_MODEL_HINT), the fix reads `MODEL=/path`."""
    result, _ = run_offline(
        tmp_path,
        ["-m", "tp_rag", "demo", "--db", str(tmp_path / "db")],
        TP_RAG_MODEL_HINT="make demo MODEL={path}",
    )
    assert result.returncode == 2
    assert "e.g. make demo MODEL=/models/Qwen2.5-0.5B-Instruct" in result.stderr
    assert "--model" not in result.stderr and "Retry" not in result.stderr


def test_python_caller_is_told_from_pretrained(tmp_path: Path) -> None:
    """From Python, the error is a ModelUnavailableError (an OSError) naming from_pretrained."""
    code = (
        "from tp_rag import TPEncoder\n"
        "from tp_rag.loading import ModelUnavailableError\n"
        "try:\n"
        "    TPEncoder.from_pretrained('some-org/some-model')\n"
        "except ModelUnavailableError as error:\n"
        "    assert isinstance(error, OSError)\n"
        "    print(error)\n"
    )
    result, _ = run_offline(tmp_path, ["-c", code])
    assert result.returncode == 0, result.stderr
    assert "TPEncoder.from_pretrained('/models/Qwen2.5-0.5B-Instruct')" in result.stdout
    assert "Retry" not in result.stderr


def test_a_cached_model_loads_without_the_hub(tmp_path: Path, tiny_llama: Path) -> None:
    """A hub name already in the local cache loads from it at once when the hub is down."""
    snapshot = tmp_path / "hf-home" / "hub" / "models--some-org--tiny" / "snapshots" / "abc123"
    shutil.copytree(tiny_llama, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    code = (
        "from tp_rag import TPEncoder\n"
        "enc = TPEncoder.from_pretrained('some-org/tiny', device='cpu')\n"
        "print(enc.encode(['A cat.']).shape)\n"
    )
    result, _ = run_offline(tmp_path, ["-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("(1, ")
    assert "Retry" not in result.stderr
