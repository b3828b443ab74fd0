"""Ingestion on Ray into a Chroma server (tp_rag.distributed, ``tp-rag ingest --ray``).

A local Ray (2 CPUs) and a real ``chroma run`` server are started once for the module; each
test writes its own collections.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import servers
from corpus import CHUNKING, expected_ids, ids, write_corpus

from tp_rag import TPEncoder
from tp_rag.cli import main
from tp_rag.ingest import ingest
from tp_rag.record import encoder_record
from tp_rag.store import ConfigMismatchError, TPStore, connect

ray = pytest.importorskip("ray", reason='needs Ray Data: pip install "tp-rag[ray]"')

from faults import KILL_FILE_ENV, DyingEmbedder  # noqa: E402

from tp_rag import distributed  # noqa: E402
from tp_rag.distributed import (  # noqa: E402
    LOOPBACK,
    _Embedder,
    import_ray,
    ingest_ray,
    start_local_ray,
)

REPO = Path(__file__).resolve().parents[1]
SINGLE_MACHINE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Ray's switch for a Ray on the loopback address (its default on macOS and Windows): what
another process needs in its environment to join the Ray that ``start_local_ray`` started."""

pytestmark = pytest.mark.skipif(
    servers.CHROMA is None, reason="chromadb's `chroma` command is absent"
)


@pytest.fixture(scope="module")
def encoder(tiny_llama: Path) -> TPEncoder:
    # float32: the Ray actors (other processes) must give the same vectors to 1e-6
    return TPEncoder.from_pretrained(tiny_llama, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A `chroma run` server on 127.0.0.1: ``(host, port)``."""
    with servers.running(tmp_path_factory.mktemp("chroma-server")) as address:
        yield address


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray on 127.0.0.1 with 2 CPUs whose workers import this checkout's tp_rag and
    the tests' ``faults``. Yields the file that, once created, makes the next
    ``DyingEmbedder`` die."""
    kill_file = tmp_path_factory.mktemp("faults") / "kill-embedder"
    paths = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH")]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, paths)), KILL_FILE_ENV: str(kill_file)}
    start_local_ray(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        yield kill_file
    finally:
        ray.shutdown()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


def remote_store(server: tuple[str, int], name: str, encoder: TPEncoder) -> TPStore:
    host, port = server
    return TPStore(connect(host=host, port=port), name, encoder)


def records(collection) -> dict[str, tuple[np.ndarray, str, dict]]:
    got = collection.get(include=["embeddings", "documents", "metadatas"])
    rows = zip(got["embeddings"], got["documents"], got["metadatas"], strict=True)
    return dict(zip(got["ids"], rows, strict=True))


def listening(root: int) -> dict[tuple[str, int], str]:
    """``{(address, port): process name}`` for the TCP sockets that process ``root`` and its
    descendants listen on right now (IPv4-mapped IPv6 addresses given as IPv4)."""
    found = {}
    try:
        processes = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for process in processes:
        try:
            for socket in process.net_connections(kind="tcp"):
                if socket.status == psutil.CONN_LISTEN:
                    address = ipaddress.ip_address(socket.laddr.ip)
                    address = getattr(address, "ipv4_mapped", None) or address
                    found[str(address), socket.laddr.port] = process.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_the_test_cluster_binds_and_reports_loopback_only(cluster: Path) -> None:
    """The tests' Ray (started as `--ray` starts one) reports 127.0.0.1 as its node, GCS and
    worker address, and every Ray process listens on 127.0.0.1 only."""
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {LOOPBACK}
    assert ray.get_runtime_context().gcs_address.rpartition(":")[0] == LOOPBACK
    assert ray.get(ray.remote(ray.util.get_node_ip_address).remote()) == LOOPBACK
    sockets = listening(os.getpid())
    assert {"gcs_server", "raylet"} <= set(sockets.values()), sockets  # Ray was seen
    assert {address for address, _ in sockets} == {LOOPBACK}, sockets


def test_ray_without_an_address_starts_on_loopback_only(
    corpus: Path, tiny_llama: Path, encoder: TPEncoder, server: tuple[str, int]
) -> None:
    """`tp-rag ingest --ray` with no address starts its own Ray: while it runs, every socket
    its Ray processes listen on (GCS, raylet, workers, agents, dashboard) is on 127.0.0.1,
    and the ingestion completes."""
    host, port = server
    args = ["ingest", str(corpus), "--collection", "local-ray", "--model", str(tiny_llama)]
    args += ["--device", "cpu", "--chroma-host", host, "--chroma-port", str(port)]
    args += ["--chunk-size", "24", "--chunk-overlap", "4", "--ray"]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "tp_rag", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    sockets: dict[tuple[str, int], str] = {}
    try:
        while process.poll() is None:
            sockets.update(listening(process.pid))
            time.sleep(0.1)
    finally:
        process.kill()
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-3000:]
    assert "3 files (" in out
    assert {"gcs_server", "raylet"} <= set(sockets.values()), sockets  # Ray was seen
    assert {address for address, _ in sockets} == {LOOPBACK}, sockets
    store = remote_store(server, "local-ray", encoder)
    assert ids(store.on) == ids(store.off) == expected_ids(corpus, encoder, **CHUNKING)


def test_the_same_store_as_single_machine_ingest(
    tmp_path: Path, corpus: Path, encoder: TPEncoder, server: tuple[str, int], cluster: Path
) -> None:
    """Two embedding actors and two writers on Ray give the store `ingest` gives: the same
    ids, vectors (to 1e-6), texts and metadata in both collections, the same recorded chunking,
    and the same summary, with the same unreadable files skipped and named."""
    (corpus / "empty.md").write_bytes(b"")
    (corpus / "photo.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj <<")
    inputs = [corpus, tmp_path / "missing.txt"]
    local = TPStore(connect(tmp_path / "db"), "docs", encoder)
    remote = remote_store(server, "same", encoder)

    want = ingest(inputs, local, **CHUNKING)
    got = ingest_ray(inputs, remote, **CHUNKING, actors=2, batch_size=3, writers=2)

    assert str(got).rsplit(",", 1)[0] == str(want).rsplit(",", 1)[0]  # all but the seconds
    assert got.skipped == want.skipped
    assert {Path(path).name for path, _ in got.skipped} == {
        "empty.md",
        "photo.txt",
        "broken.pdf",
        "missing.txt",
    }
    assert got.chunks > 3
    assert remote.count() == local.count() == (got.chunks, got.chunks)
    assert remote.chunking() == local.chunking() == (24, 4)
    for ours, theirs in ((remote.on, local.on), (remote.off, local.off)):
        a, b = records(ours), records(theirs)
        assert set(a) == set(b)
        for key, (vector, text, meta) in a.items():
            np.testing.assert_allclose(vector, b[key][0], atol=1e-6)
            assert (text, meta) == b[key][1:]


def test_rerun_half_written_chunks_and_an_edited_file(
    corpus: Path, encoder: TPEncoder, server: tuple[str, int], cluster: Path
) -> None:
    """Re-running adds nothing; chunks found in the TP-on collection only (a writer stopped
    between its two upserts) are written again; an edited file's old chunks are removed from
    both collections and the other files are left as they were."""
    store = remote_store(server, "rerun", encoder)
    first = ingest_ray([corpus], store, **CHUNKING)
    want = expected_ids(corpus, encoder, **CHUNKING)
    assert ids(store.on) == ids(store.off) == want
    assert store.count() == (first.chunks, first.chunks) == (len(want), len(want))

    again = ingest_ray([corpus], store)
    assert (again.files, again.unchanged, again.updated) == (3, 3, 0)
    assert again.chunks == again.removed == 0
    assert store.count() == (len(want), len(want))

    tides, bread = str((corpus / "tides.md").resolve()), str((corpus / "bread.txt").resolve())
    bread_before, tides_before = ids(store.on, bread), ids(store.on, tides)
    half = sorted(bread_before)[:2]
    assert len(half) == 2
    store.off.delete(ids=half)  # as if a writer had stopped between its two upserts
    (corpus / "tides.md").write_text(
        "# Tides\n\nTwo high waters a day come from the Moon's pull on the sea.", encoding="utf-8"
    )
    edited = ingest_ray([corpus], store)
    new = expected_ids(corpus, encoder, **CHUNKING)
    assert (edited.updated, edited.unchanged) == (2, 1)
    assert edited.chunks == len(half) + len(ids(store.on, tides) - tides_before)
    assert edited.removed == len(tides_before - ids(store.on, tides)) > 0
    assert ids(store.on) == ids(store.off) == new
    assert store.count() == (len(new), len(new))
    tides_texts = store.on.get(where={"source": tides}, include=["documents"])["documents"]
    assert not any("Spring tides" in text for text in tides_texts)
    assert ids(store.on, bread) == ids(store.off, bread) == bread_before


def test_a_killed_embedding_actor_loses_and_duplicates_nothing(
    tmp_path: Path,
    encoder: TPEncoder,
    server: tuple[str, int],
    cluster: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An embedding actor that dies mid-run (after embedding a batch, before handing it on) is
    restarted by Ray, which retries the batch: every chunk ends up in both collections once."""
    monkeypatch.setattr(distributed, "_Embedder", DyingEmbedder)
    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(6):
        text = f"Document {i}. " + " ".join(f"fact{i}-{j} is noted here." for j in range(4))
        (corpus / f"doc{i}.txt").write_text(text)
    chunking = {"chunk_size": 16, "chunk_overlap": 0}
    want = expected_ids(corpus, encoder, **chunking)
    store = remote_store(server, "killed-actor", encoder)
    cluster.touch()  # armed: the first actor to embed a batch removes it and exits

    summary = ingest_ray([corpus], store, **chunking, batch_size=2)

    assert not cluster.exists(), "no embedding actor died"
    assert summary.chunks == len(want) > 8
    assert ids(store.on) == ids(store.off) == want
    assert store.count() == (len(want), len(want))


def test_a_killed_driver_then_rerun_completes(
    tmp_path: Path,
    tiny_llama: Path,
    encoder: TPEncoder,
    server: tuple[str, int],
    cluster: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Kill `tp-rag ingest --ray` (a second driver on the running cluster) while it writes;
    re-running ends with exactly the chunks of an uninterrupted ingestion in both
    collections. The command prints the usual summary."""
    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(12):
        text = f"Document {i}. " + " ".join(f"fact{i}-{j} is noted here." for j in range(4))
        (corpus / f"doc{i:02d}.txt").write_text(text)
    chunking = {"chunk_size": 32, "chunk_overlap": 0}
    want = expected_ids(corpus, encoder, **chunking)
    assert len(want) > 24
    host, port = server
    args = ["ingest", str(corpus), "--collection", "killed-driver", "--model", str(tiny_llama)]
    args += ["--device", "cpu", "--chroma-host", host, "--chroma-port", str(port)]
    args += ["--chunk-size", "32", "--chunk-overlap", "0"]
    address = ray.get_runtime_context().gcs_address
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "tp_rag", *args, "--ray", address, "--ray-batch-size", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A second driver joins the loopback-only test cluster in Ray's single-machine mode.
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **SINGLE_MACHINE},
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # not a terminal: a line per written batch
            if line.startswith("chunks written:"):
                process.kill()
                break
        else:
            pytest.fail("the ingestion ended without reporting written chunks")
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode != 0  # it was killed, not finished
    store = remote_store(server, "killed-driver", encoder)
    partial = store.count()
    assert max(partial) < len(want)

    assert main([*args, "--ray", "--ray-batch-size", "4"]) == 0
    assert ids(store.on) == ids(store.off) == want
    assert store.count() == (len(want), len(want))
    out = capsys.readouterr().out
    assert "12 files (" in out
    assert f"'killed-driver': {len(want)} chunks" in out


def test_two_ingest_processes_into_one_server(
    tmp_path: Path, tiny_llama: Path, encoder: TPEncoder, server: tuple[str, int]
) -> None:
    """Two `tp-rag ingest` processes started together into one new collection of one server,
    on overlapping file lists (files 0-5 and 3-8, so both write files 3-5): both succeed and
    the store holds each chunk of every file once, in both collections."""
    folder = tmp_path / "notes"
    folder.mkdir()
    files = []
    for i in range(9):
        files.append(folder / f"n{i}.txt")
        text = f"Note {i}. " + " ".join(f"point{i}-{j} is written down." for j in range(3))
        files[-1].write_text(text)
    want = expected_ids(folder, encoder, **CHUNKING)
    host, port = server
    common = ["--collection", "together", "--model", str(tiny_llama), "--device", "cpu"]
    common += ["--chroma-host", host, "--chroma-port", str(port), "--chunk-size", "24"]
    common += ["--chunk-overlap", "4"]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tp_rag", "ingest", *map(str, part), *common],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": path},
        )
        for part in (files[:6], files[3:])
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    store = remote_store(server, "together", encoder)
    assert ids(store.on) == ids(store.off) == want
    assert store.count() == (len(want), len(want))


def test_a_mismatching_configuration_is_refused(
    corpus: Path,
    tiny_llama: Path,
    encoder: TPEncoder,
    server: tuple[str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Other encoder settings are refused before any work, naming both configurations, as
    without --ray; an actor whose weights give another embedding space refuses to start."""
    store = remote_store(server, "mismatch", encoder)
    host, port = server
    args = ["ingest", str(corpus), "--collection", "mismatch", "--model", str(tiny_llama)]
    args += ["--device", "cpu", "--chroma-host", host, "--chroma-port", str(port), "--ray"]

    assert main([*args, "--tp-stop", "3"]) == 2
    error = capsys.readouterr().err
    assert "tp_stop 2 vs 3" in error
    assert encoder.config.replace(tp_stop=3).fingerprint() in error
    assert store.count() == (0, 0)

    record = {**encoder_record(encoder), "fingerprint": "0" * 16}  # another node's weights
    with pytest.raises(ConfigMismatchError, match="every node must see the same weights"):
        _Embedder(record, threads=1)


def test_ray_into_an_embedded_database_folder_is_refused(
    tmp_path: Path, corpus: Path, tiny_llama: Path, encoder: TPEncoder, capsys
) -> None:
    """Several writers must not share a PersistentClient folder: --ray with --db (or with no
    server) fails, says to use --chroma-host, and creates nothing."""
    db = tmp_path / "db"
    model = ["--model", str(tiny_llama), "--device", "cpu"]
    assert (
        main(["ingest", str(corpus), "--collection", "docs", "--db", str(db), *model, "--ray"]) == 2
    )
    assert "--chroma-host" in capsys.readouterr().err
    assert not db.exists()
    with pytest.raises(ValueError, match="chroma run"):
        ingest_ray([corpus], TPStore(connect(db), "docs", encoder))


def test_bad_options_are_refused_before_any_work(
    corpus: Path, encoder: TPEncoder, server: tuple[str, int], cluster: Path
) -> None:
    """Counts that cannot work, and more actors than the cluster has room for, are errors that
    name the problem; nothing is written."""
    store = remote_store(server, "options", encoder)
    with pytest.raises(ValueError, match="actors=0 must be a positive integer"):
        ingest_ray([corpus], store, actors=0)
    with pytest.raises(ValueError, match=r"need 3 CPUs.*has 2"):
        ingest_ray([corpus], store, actors=3, threads=1)
    with pytest.raises(ValueError, match="GPUs, the Ray cluster has 0"):
        ingest_ray([corpus], store, gpus_per_actor=1)
    assert store.count() == (0, 0)


def test_without_ray_the_command_says_what_to_install(
    corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the extra, --ray fails with the pip command (and the library raises
    ImportError with it)."""
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    args = ["ingest", str(corpus), "--collection", "docs", "--chroma-host", "h", "--ray"]
    assert main(args) == 2
    assert 'pip install "tp-rag[ray]"' in capsys.readouterr().err
    with pytest.raises(ImportError, match=r'pip install "tp-rag\[ray\]"'):
        import_ray()


def test_the_command_line_does_not_import_ray() -> None:
    """`tp-rag --help` and `tp-rag ingest --help` stay cheap: Ray is imported by --ray only."""
    code = (
        "import sys, contextlib, io\n"
        "from tp_rag.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "    main(['ingest', '--help'])\n"
        "assert '--ray-actors' in out.getvalue(), out.getvalue()\n"
        "assert 'ray' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
