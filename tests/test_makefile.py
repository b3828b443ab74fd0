"""The Makefile's set-up: which torch build `make install` asks pip for, on which machine; what
`.ci/run` installs through it; and `make dist`, the packages ready for publishing.

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


TOOLS = ("sh", "uname", "grep", "awk", "touch", "test", "echo")


def _path_without_nvidia_smi(tmp_path: Path, *, gpu: bool, tools: tuple[str, ...] = TOOLS) -> str:
    """PATH: only ``tools`` from the system (no nvidia-smi), and a fake nvidia-smi if ``gpu``."""
    bin_dir = tmp_path / ("bin-gpu" if gpu else "bin")
    if bin_dir.is_dir():
        return str(bin_dir)
    bin_dir.mkdir()
    for tool in tools:
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


def ci_checkout(tmp_path: Path, *, cuda_torch: bool) -> tuple[Path, Path]:
    """A folder with the project's `.ci/run`, Makefile and pyproject.toml, and a stand-in
    `.venv` whose python logs its arguments, has no torch yet, and answers the CPU-build check
    as a CUDA build would if ``cuda_torch``."""
    root = tmp_path / "checkout"
    (root / ".ci").mkdir(parents=True)
    for name in (".ci/run", "Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, root / name)
    (root / ".venv" / "bin").mkdir(parents=True)
    log = tmp_path / "python-calls.log"
    python = root / ".venv" / "bin" / "python"
    python.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        'if [ "$1 $2" = "-c import torch" ]; then exit 1; fi\n'
        'case "$2" in *torch.version.cuda*) '
        f"exit {1 if cuda_torch else 0};; esac\n"
        "exit 0\n"
    )
    python.chmod(0o755)
    return root, log


def run_ci(root: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`bash .ci/run print-torch` in ``root``, on a machine without nvidia-smi or apt-get."""
    tools = (*TOOLS, "bash", "make", "dirname", "id")
    return subprocess.run(
        ["bash", str(root / ".ci" / "run"), "print-torch"],
        env={
            "PATH": _path_without_nvidia_smi(tmp_path, gpu=False, tools=tools),
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ci_installs_the_makefiles_torch_choice_without_long_retries(tmp_path: Path) -> None:
    """`.ci/run` installs torch through `make install` (the CPU index here, as `make
    print-torch` says), with one retry and a short timeout, before anything else; no pinned
    `pip install torch==...` of pip's default (CUDA) build."""
    root, log = ci_checkout(tmp_path, cuda_torch=False)
    result = run_ci(root, tmp_path)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    torch_call = calls.index(
        f"-m pip install -q --retries 1 --timeout 15 torch --index-url {CPU_INDEX}"
    )
    assert torch_call < calls.index("-m pip install -q -e .[dev]")
    assert not [call for call in calls if "torch==" in call]
    assert any("torch.version.cuda" in call for call in calls)  # the CPU-build check ran
    assert f"installing torch from {CPU_INDEX} (Linux without nvidia-smi)" in result.stdout


def test_ci_fails_when_a_cuda_torch_arrives_instead_of_the_cpu_build(tmp_path: Path) -> None:
    """Should pip resolve a CUDA build despite the CPU choice, `.ci/run` stops and says so."""
    root, _ = ci_checkout(tmp_path, cuda_torch=True)
    result = run_ci(root, tmp_path)
    assert result.returncode == 1
    assert "CUDA build of torch was installed although the CPU build was chosen" in result.stderr


@pytest.mark.slow
def test_dist_builds_and_checks_the_three_packages(tmp_path: Path) -> None:
    """`make dist` builds an sdist and a wheel (the wheel from the sdist) of tp-rag and of each
    integration with `python -m build`, and `twine check --strict` passes them. The sdists hold
    their own package only (no other package, tests of the root, caches or virtualenvs); the
    tp-rag wheel has the CLI and the demo app; each integration accepts the tp-rag built."""
    import re
    import tarfile
    import zipfile

    from packaging.requirements import Requirement

    venv = Path(sys.prefix)  # this test's own environment: it has build and twine (dev extra)
    dist = tmp_path / "dist"
    stamp = venv / ".tp-rag-installed"  # -o: never reinstall the environment running this test
    command = ["make", "-C", str(ROOT), "-o", str(stamp), "dist", f"VENV={venv}", f"DIST={dist}"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    built = sorted(path.name for path in dist.iterdir())
    assert built == [
        "langchain_tp-0.1.0-py3-none-any.whl",
        "langchain_tp-0.1.0.tar.gz",
        "llama_index_embeddings_tp-0.1.0-py3-none-any.whl",
        "llama_index_embeddings_tp-0.1.0.tar.gz",
        "tp_rag-0.1.0-py3-none-any.whl",
        "tp_rag-0.1.0.tar.gz",
    ]
    assert result.stdout.count("PASSED") == 6 and "FAILED" not in result.stdout

    junk = re.compile(r"(^|/)(\.venv|__pycache__|\.pytest_cache|\.ruff_cache|chroma_db|dist)(/|$)")
    for sdist in dist.glob("*.tar.gz"):
        with tarfile.open(sdist) as archive:
            names = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]
        assert {"LICENSE", "README.md", "pyproject.toml", "PKG-INFO"} <= set(names), sdist.name
        assert not [name for name in names if junk.search(name) or name.endswith(".pyc")]
        if sdist.name.startswith("tp_rag"):
            assert not [n for n in names if n.startswith(("integrations/", "tests/", ".ci/"))]

    with zipfile.ZipFile(dist / "tp_rag-0.1.0-py3-none-any.whl") as wheel:
        names = wheel.namelist()
        entry_points = wheel.read("tp_rag-0.1.0.dist-info/entry_points.txt").decode()
    assert "tp_rag/cli/__init__.py" in names and "tp-rag = tp_rag.cli:main" in entry_points
    assert [name for name in names if re.fullmatch(r"tp_rag/demo/app\.py", name)]
    for integration in ("langchain_tp", "llama_index_embeddings_tp"):
        with zipfile.ZipFile(dist / f"{integration}-0.1.0-py3-none-any.whl") as wheel:
            metadata = wheel.read(f"{integration}-0.1.0.dist-info/METADATA").decode()
        needs = [
            Requirement(line.split(":", 1)[1].strip())
            for line in metadata.splitlines()
            if line.startswith("Requires-Dist: tp-rag")
        ]
        assert needs and all(need.specifier.contains("0.1.0") for need in needs), metadata
