"""The Makefile's set-up: which torch build `make install` asks pip for, on which machine.

`make install` runs here for real, against a stand-in virtual environment whose `python`
only records its arguments, so no package is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

pytestmark = [
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU default is Linux's"),
]


def _path_without_nvidia_smi(tmp_path: Path, *, gpu: bool) -> str:
    """PATH with the system's folders, minus any real nvidia-smi, plus a fake one if ``gpu``."""
    bin_dir = tmp_path / ("bin-gpu" if gpu else "bin")
    if bin_dir.is_dir():
        return str(bin_dir)
    bin_dir.mkdir()
    for tool in ("sh", "uname", "grep", "awk", "touch", "test", "echo"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    if gpu:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\nexit 0\n")
        smi.chmod(0o755)
    return str(bin_dir)


def make(tmp_path: Path, *args: str, gpu: bool = False, **env: str) -> str:
    """Run make in the project with only ``args`` and ``env`` chosen by the test."""
    environment = {
        "PATH": _path_without_nvidia_smi(tmp_path, gpu=gpu),
        "HOME": str(tmp_path),
        **env,
    }
    result = subprocess.run(
        [shutil.which("make") or "make", "-s", "-C", str(ROOT), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def fake_venv(tmp_path: Path, *, has_torch: bool) -> tuple[Path, Path]:
    """A venv folder whose bin/python logs each call; `import torch` works iff ``has_torch``."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "python-calls.log"
    python = venv / "bin" / "python"
    python.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        f'if [ "$1 $2" = "-c import torch" ]; then exit {0 if has_torch else 1}; fi\n'
        "exit 0\n"
    )
    python.chmod(0o755)
    return venv, log


def test_cpu_machine_gets_the_cpu_index(tmp_path: Path) -> None:
    """Without nvidia-smi, `make print-torch` names PyTorch's CPU index and says why."""
    out = make(tmp_path, "print-torch")
    assert CPU_INDEX in out and "without nvidia-smi" in out


def test_gpu_machine_gets_the_default_index(tmp_path: Path) -> None:
    """With nvidia-smi on PATH, pip's default index (the CUDA build) is kept."""
    out = make(tmp_path, "print-torch", gpu=True)
    assert "pip's default index" in out and CPU_INDEX not in out


def test_user_overrides_index_and_version(tmp_path: Path) -> None:
    """TORCH_INDEX and TORCH, on the command line or in the environment, win over detection."""
    cu = "https://download.pytorch.org/whl/cu126"
    out = make(tmp_path, "print-torch", f"TORCH_INDEX={cu}", "TORCH=torch==2.6.0")
    assert out.startswith(f"torch==2.6.0 from {cu}") and "TORCH_INDEX given" in out
    assert "pip's default index" in make(tmp_path, "print-torch", "TORCH_INDEX=")
    assert cu in make(tmp_path, "print-torch", TORCH_INDEX=cu)


def test_install_asks_pip_for_the_cpu_build_first(tmp_path: Path) -> None:
    """`make install` on a CPU machine installs torch from the CPU index before tp-rag."""
    venv, log = fake_venv(tmp_path, has_torch=False)
    make(tmp_path, "install", f"VENV={venv}")
    calls = log.read_text().splitlines()
    torch_call = calls.index(f"-m pip install -q torch --index-url {CPU_INDEX}")
    project_call = calls.index("-m pip install -q -e .[dev]")
    assert torch_call < project_call
    assert (venv / ".tp-rag-installed").exists()


def test_install_keeps_a_torch_already_there(tmp_path: Path) -> None:
    """A torch already in the venv (what .ci/run puts there) is not reinstalled."""
    venv, log = fake_venv(tmp_path, has_torch=True)
    out = make(tmp_path, "install", f"VENV={venv}")
    assert "already in" in out
    assert not [call for call in log.read_text().splitlines() if "install -q torch" in call]


def test_demo_tells_the_program_how_it_was_started() -> None:
    """`make demo` passes TP_RAG_MODEL_HINT, so a failed model load says `MODEL=`."""
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "demo", "MODEL=/m", "VENV=/nonexistent-venv"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": os.environ.get("PATH", "")},
        timeout=60,
    ).stdout
    assert "TP_RAG_MODEL_HINT='make demo MODEL={path}'" in out
    assert "tp-rag demo --model /m" in out
