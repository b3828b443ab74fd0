"""Real servers on 127.0.0.1 for the tests: ``chroma run`` (store, ingest, Ray) and
``tp-rag demo`` (the demo and the real-shape run)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from tp_rag.store import connect

CHROMA = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
"""The ``chroma`` server command, which ships with chromadb next to this Python (or ``None``)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(path: Path, port: int) -> subprocess.Popen:
    """Start ``chroma run`` on ``127.0.0.1:port`` with its data in ``path``; return once it
    answers (raise if it exits or takes over 60 s)."""
    assert CHROMA is not None, "chromadb's `chroma` command is absent"
    command = [CHROMA, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            connect(host="127.0.0.1", port=port).heartbeat()
            return server
        except Exception:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.2)


def stop(server: subprocess.Popen) -> None:
    """Stop a server from ``start`` (a no-op if it already exited)."""
    server.terminate()
    server.wait(timeout=30)


@contextmanager
def running(path: Path) -> Iterator[tuple[str, int]]:
    """A server for the duration of the ``with`` block: ``(host, port)``."""
    port = free_port()
    server = start(path, port)
    try:
        yield "127.0.0.1", port
    finally:
        stop(server)


@contextmanager
def demo(
    args: Sequence[str], port: int, *, env: Mapping[str, str] | None = None, timeout: float = 120
) -> Iterator[str]:
    """``tp-rag demo ARGS`` in a subprocess that serves on ``port``; yields its URL once the page
    answers (fails if the command exits or takes over ``timeout`` seconds), then stops it."""
    import httpx

    server = subprocess.Popen(
        [sys.executable, "-m", "tp_rag", "demo", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=None if env is None else dict(env),
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, "tp-rag demo exited"
            assert time.monotonic() < deadline, f"tp-rag demo did not start in {timeout:.0f} s"
            time.sleep(0.5)
        yield url
    finally:
        stop(server)


@contextmanager
def tp_rag_serve(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``tp-rag serve ARGS`` on 127.0.0.1 and a free port; yields ``(url, process)`` once
    ``/health`` says 200 (fails if the command exits or takes over ``timeout`` seconds), then
    stops it with SIGTERM."""
    import tempfile

    import httpx

    port = free_port()
    # A file, not a pipe: a full pipe would stall the server. Closed in the finally below.
    log = tempfile.TemporaryFile()  # noqa: SIM115
    # float32 as the tests' in-process encoders (conftest): dtype="auto" would be bfloat16 on a
    # CPU with native bfloat16, and the tests compare vectors to 1e-6. ARGS may override it.
    server = subprocess.Popen(
        [sys.executable, "-m", "tp_rag", "serve", "--port", str(port), "--dtype", "float32", *args],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=None if env is None else dict(env),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                log.seek(0)
                raise AssertionError(f"tp-rag serve exited:\n{log.read().decode()[-3000:]}")
            assert time.monotonic() < deadline, f"tp-rag serve did not start in {timeout:.0f} s"
            time.sleep(0.2)
        yield url, server
    finally:
        if server.poll() is None:
            stop(server)
        log.close()
