"""The Chroma embedding function: vectors, query prompts, config round trips, one model load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

chromadb = pytest.importorskip("chromadb")

from tp_rag import TPEncoder  # noqa: E402
from tp_rag.chroma import TPEmbeddingFunction  # noqa: E402
from tp_rag.testing import save_tiny_model  # noqa: E402

DOCS = {
    "guitar": "A man is playing a guitar on the stage.",
    "onion": "A woman is slicing an onion in the kitchen.",
    "stocks": "Stocks fell sharply after the central bank raised interest rates.",
}
QUERY_PROMPT = 'This question : {pst}"{text}" asks in one word:"'


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (no modules or caches shared with this process)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"},
    )


@pytest.fixture(scope="module")
def ef(tiny_llama: Path) -> TPEmbeddingFunction:
    return TPEmbeddingFunction(str(tiny_llama), query_prompt=QUERY_PROMPT)


def test_chromadb_is_optional() -> None:
    """``import tp_rag`` does not import chromadb, and without chromadb importing
    ``tp_rag.chroma`` gives the exact pip command (one fresh interpreter checks both)."""
    code = """
        import sys
        import tp_rag
        print("chromadb" in sys.modules)
        sys.modules["chromadb"] = None  # what an absent package looks like to import
        try:
            import tp_rag.chroma
        except ImportError as error:
            print(error)
        """
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    imported, message = result.stdout.strip().splitlines()[-2:]
    assert imported == "False"
    assert 'pip install "tp-rag[chroma]"' in message


def test_call_returns_the_encoder_vectors(ef: TPEmbeddingFunction) -> None:
    """Documents are embedded by the encoder as one float32 vector each, in input order."""
    texts = list(DOCS.values())
    vectors = ef(texts)
    assert isinstance(vectors, list) and len(vectors) == len(texts)
    assert all(v.dtype == np.float32 and v.shape == (ef.encoder.dimension,) for v in vectors)
    np.testing.assert_allclose(np.stack(vectors), ef.encoder.encode(texts), atol=1e-6)


def test_a_bare_string_is_refused(ef: TPEmbeddingFunction) -> None:
    """Chroma's input is a list of texts; one string fails with the fix instead of a bad shape."""
    with pytest.raises(TypeError, match="list of texts"):
        ef("A man is playing a guitar.")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of texts"):
        ef.embed_query("A man is playing a guitar.")  # type: ignore[arg-type]


def test_embed_query_uses_the_query_prompt(ef: TPEmbeddingFunction) -> None:
    """Queries use ``query_prompt``; documents keep the configured prompt."""
    query = ["Who is playing music?"]
    expected = ef.encoder.encode(query, prompt=QUERY_PROMPT)
    np.testing.assert_allclose(np.stack(ef.embed_query(query)), expected, atol=1e-6)
    assert not np.allclose(np.stack(ef(query)), expected, atol=1e-4)


def test_embed_query_without_query_prompt_matches_documents(tiny_llama: Path) -> None:
    """With no ``query_prompt``, a query is embedded exactly like a document."""
    ef = TPEmbeddingFunction(str(tiny_llama))
    query = ["Who is playing music?"]
    np.testing.assert_allclose(np.stack(ef.embed_query(query)), np.stack(ef(query)), atol=1e-6)


def test_tp_setting_reaches_the_encoder(tiny_llama: Path) -> None:
    """``tp=False`` gives the vectors of the encoder with TP off, not TP on."""
    texts = list(DOCS.values())
    on, off = TPEmbeddingFunction(str(tiny_llama)), TPEmbeddingFunction(str(tiny_llama), tp=False)
    np.testing.assert_allclose(np.stack(off(texts)), on.encoder.encode(texts, tp=False), atol=1e-6)
    assert not np.allclose(np.stack(off(texts)), np.stack(on(texts)), atol=1e-4)


def test_from_encoder_shares_the_encoder_and_overrides_tp(
    tiny_llama: Path, weight_reads: list[str]
) -> None:
    """``from_encoder`` wraps an existing encoder without loading anything; ``tp`` overrides."""
    encoder = TPEncoder.from_pretrained(tiny_llama)
    before = len(weight_reads)
    ef = TPEmbeddingFunction.from_encoder(encoder, tp=False)
    assert ef.encoder is encoder and len(weight_reads) == before
    texts = list(DOCS.values())
    np.testing.assert_allclose(np.stack(ef(texts)), encoder.encode(texts, tp=False), atol=1e-6)
    assert ef.get_config()["tp"] is False


def test_from_encoder_rejects_other_objects() -> None:
    """A wrong object fails at once with a message naming the expected type."""
    with pytest.raises(TypeError, match="TPEncoder"):
        TPEmbeddingFunction.from_encoder("Qwen/Qwen2.5-0.5B-Instruct")  # type: ignore[arg-type]


def test_bad_settings_fail_with_clear_errors(tiny_llama: Path) -> None:
    """Misspelt settings and bad templates name the problem (checked by the core)."""
    with pytest.raises(TypeError, match=r"tp_stpo.*valid settings"):
        TPEmbeddingFunction(str(tiny_llama), tp_stpo=3)
    with pytest.raises(ValueError, match=r"\{text\}"):
        TPEmbeddingFunction(str(tiny_llama), query_prompt="no placeholders here")


def test_wrong_model_name_says_how_to_use_a_local_directory(tmp_path: Path) -> None:
    """An unloadable model names the model and explains how to point at a local directory."""
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(OSError, match="no-such-model") as info:
        TPEmbeddingFunction(missing)
    assert "local directory" in str(info.value)


def test_name_and_registration() -> None:
    """Chroma finds the class under ``tp_rag`` when it rebuilds a stored collection."""
    from chromadb.utils.embedding_functions import known_embedding_functions

    assert TPEmbeddingFunction.name() == "tp_rag"
    assert known_embedding_functions["tp_rag"] is TPEmbeddingFunction


def test_config_is_json_and_rebuilds_the_same_function(ef: TPEmbeddingFunction) -> None:
    """``get_config`` survives JSON and ``build_from_config`` gives identical vectors."""
    config = json.loads(json.dumps(ef.get_config()))
    rebuilt = TPEmbeddingFunction.build_from_config(config)
    assert rebuilt.fingerprint() == ef.fingerprint() == config["fingerprint"]
    texts = list(DOCS.values())
    np.testing.assert_allclose(np.stack(rebuilt(texts)), np.stack(ef(texts)), atol=1e-6)
    query = ["Who is playing music?"]
    np.testing.assert_allclose(
        np.stack(rebuilt.embed_query(query)), np.stack(ef.embed_query(query)), atol=1e-6
    )


def test_config_stores_resolved_layers_and_an_absolute_path(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored config pins the layers and does not depend on the working directory."""
    monkeypatch.chdir(tiny_llama.parent)
    config = TPEmbeddingFunction(tiny_llama.name).get_config()
    assert config["model"] == str(tiny_llama.resolve())
    assert all(isinstance(config[k], int) for k in ("tp_start", "tp_stop", "output_layer"))


def test_rebuild_with_other_weights_is_refused(ef: TPEmbeddingFunction) -> None:
    """A stored fingerprint that the rebuilt function does not match raises, naming the fix."""
    config = {**ef.get_config(), "fingerprint": "0000000000000000"}
    with pytest.raises(ValueError, match="re-embed the collection"):
        TPEmbeddingFunction.build_from_config(config)


def test_unstorable_model_kwargs_are_reported(tiny_llama: Path, tmp_path: Path) -> None:
    """Values Chroma cannot store as JSON fail in ``get_config`` with the fix in the message."""
    ef = TPEmbeddingFunction(str(tiny_llama), model_kwargs={"cache_dir": tmp_path})
    with pytest.raises(ValueError, match="JSON values"):
        ef.get_config()


def test_functions_with_different_tp_load_the_weights_once(
    tmp_path: Path, weight_reads: list[str]
) -> None:
    """TP on and TP off over the same model, device and dtype share one loaded model."""
    path = save_tiny_model(tmp_path / "fresh", "qwen2")  # not loaded by any other test
    before = len(weight_reads)
    on = TPEmbeddingFunction(str(path), tp=True)
    off = TPEmbeddingFunction(str(path), tp=False)
    assert len(weight_reads) == before + 1
    assert on.fingerprint() != off.fingerprint()


def test_collection_retrieves_the_expected_document(tiny_llama: Path, tmp_path: Path) -> None:
    """A collection built with the function returns the matching document for a query."""
    ef = TPEmbeddingFunction(str(tiny_llama))
    client = chromadb.PersistentClient(str(tmp_path / "db"))
    collection = client.create_collection("docs", embedding_function=ef)
    collection.add(ids=list(DOCS), documents=list(DOCS.values()))
    for doc_id, text in DOCS.items():
        # A query equal to a document (same prompt, no query_prompt) must find that document.
        assert collection.query(query_texts=[text], n_results=1)["ids"] == [[doc_id]]
    assert collection.configuration_json["embedding_function"]["name"] == "tp_rag"


def test_persisted_collection_is_rebuilt_in_a_new_process(tiny_llama: Path, tmp_path: Path) -> None:
    """Reopening a stored collection in a fresh process rebuilds the same function from its
    config: same vectors, same query prompt, the right neighbour, and the weights read once."""
    # float32: the new process must give the same vectors to 1e-5, whatever its CPU
    ef = TPEmbeddingFunction(str(tiny_llama), query_prompt=QUERY_PROMPT, dtype="float32")
    db = tmp_path / "db"
    collection = chromadb.PersistentClient(str(db)).create_collection("docs", embedding_function=ef)
    collection.add(ids=list(DOCS), documents=list(DOCS.values()))
    code = """
        import json, sys
        import chromadb
        import tp_rag.chroma  # registers "tp_rag" with Chroma
        from transformers import AutoModel

        reads = []  # every read of a model's weights
        original = AutoModel.from_pretrained.__func__
        def counted(cls, *args, **kwargs):
            reads.append(args[0])
            return original(cls, *args, **kwargs)
        AutoModel.from_pretrained = classmethod(counted)

        collection = chromadb.PersistentClient(sys.argv[1]).get_collection("docs")
        stored = collection.get(ids=["onion"], include=["embeddings"])["embeddings"][0]
        hits = collection.query(query_texts=[sys.argv[2]], n_results=1)
        collection.add(ids=["cat"], documents=["The cat sleeps on the warm windowsill."])
        function = collection.configuration["embedding_function"]
        print(json.dumps({
            "class": type(function).__name__,
            "fingerprint": function.fingerprint(),
            "stored": [float(x) for x in stored],
            "document": [float(x) for x in function([sys.argv[3]])[0]],
            "query": [float(x) for x in function.embed_query([sys.argv[2]])[0]],
            "hits": hits["ids"],
            "loads": len(reads),
        }))
        """
    result = _run_python(code, str(db), "Who is slicing vegetables?", DOCS["onion"])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["class"] == "TPEmbeddingFunction"
    assert out["fingerprint"] == ef.fingerprint()
    np.testing.assert_allclose(out["document"], ef([DOCS["onion"]])[0], atol=1e-5)
    np.testing.assert_allclose(out["stored"], ef([DOCS["onion"]])[0], atol=1e-5)
    np.testing.assert_allclose(
        out["query"], ef.embed_query(["Who is slicing vegetables?"])[0], atol=1e-5
    )
    # The top hit must be the document nearest to the query as embedded in this process.
    query = ef.embed_query(["Who is slicing vegetables?"])[0]
    nearest = max(DOCS, key=lambda k: float(np.dot(ef([DOCS[k]])[0], query)))
    assert out["hits"] == [[nearest]]
    # Chroma rebuilds the function on every add and query; the weights must be read only once.
    assert out["loads"] == 1


def test_from_encoder_keeps_how_the_model_was_loaded(tiny_llama: Path) -> None:
    """A function wrapping an encoder stores its revision/trust_remote_code for the rebuild."""
    encoder = TPEncoder.from_pretrained(tiny_llama, revision="main")
    config = TPEmbeddingFunction.from_encoder(encoder).get_config()
    assert (config["revision"], config["trust_remote_code"]) == ("main", False)
    assert "model_kwargs" not in config  # nothing was passed to AutoModel
    rebuilt = TPEmbeddingFunction.build_from_config(config)
    assert rebuilt.encoder.load_kwargs["revision"] == "main"


def test_records_of_an_earlier_tp_rag_are_refused_with_the_re_ingest_advice(
    tiny_llama: Path,
) -> None:
    """Records laid out as a never-released tp-rag wrote them (loading options nested in
    ``model_kwargs``, no format or method version), or of another method version, are not
    migrated: the rebuild refuses them and says how to re-ingest."""
    encoder = TPEncoder.from_pretrained(tiny_llama, revision="main")
    current = TPEmbeddingFunction.from_encoder(encoder).get_config()
    nested = {k: v for k, v in current.items() if k not in ("revision", "trust_remote_code")}
    nested = {k: v for k, v in nested.items() if k not in ("format", "scheme")}
    nested["model_kwargs"] = {"revision": "main", "trust_remote_code": False}
    other_method = {**current, "scheme": "tp-rag/0"}
    for old in (nested, other_method):
        with pytest.raises(ValueError, match=r"Re-ingest the documents.*--collection") as info:
            TPEmbeddingFunction.build_from_config(old)
        assert not isinstance(info.value, PermissionError)


def test_loading_options_inside_model_kwargs_are_refused(tiny_llama: Path) -> None:
    """``model_kwargs`` is for ``AutoModel`` only: a loading option inside it is named."""
    with pytest.raises(TypeError, match=r"trust_remote_code.*pass them directly"):
        TPEmbeddingFunction(str(tiny_llama), model_kwargs={"trust_remote_code": False})


# A model folder with its own Python: loading it with trust_remote_code=True imports these
# files, which leave a marker file behind (the path comes from the environment).
_REMOTE_CONFIG = """
import os
from pathlib import Path

from transformers import LlamaConfig

Path(os.environ["TP_RAG_TEST_MARKER"]).write_text(str(os.getpid()))


class RemoteConfig(LlamaConfig):
    pass
"""
_REMOTE_MODEL = """
from transformers import LlamaModel

from .configuration_remote import RemoteConfig


class RemoteModel(LlamaModel):
    config_class = RemoteConfig
"""


@pytest.fixture
def remote_code_model(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the tiny Llama whose config points at Python files in its folder."""
    import shutil

    folder = tmp_path / "remote-model"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_remote.RemoteConfig",
        "AutoModel": "modeling_remote.RemoteModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_remote.py").write_text(_REMOTE_CONFIG)
    (folder / "modeling_remote.py").write_text(_REMOTE_MODEL)
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.setenv("TP_RAG_TEST_MARKER", str(tmp_path / "ran"))
    return folder


def test_a_stored_collection_cannot_switch_on_remote_code(
    remote_code_model: Path, tmp_path: Path
) -> None:
    """A collection written with ``trust_remote_code=True`` does not run the model folder's
    Python in a reader's process: reopening it is refused with the way to opt in, and the
    opt-in (``TP_RAG_TRUST_REMOTE_CODE=1``) works."""
    marker = tmp_path / "ran"
    writer = TPEmbeddingFunction(str(remote_code_model), trust_remote_code=True)
    assert marker.exists()  # the writer asked for it, in its own process
    marker.unlink()
    db = tmp_path / "db"
    collection = chromadb.PersistentClient(str(db)).create_collection(
        "docs", embedding_function=writer
    )
    collection.add(ids=list(DOCS), documents=list(DOCS.values()))
    code = """
        import sys
        import chromadb
        import tp_rag.chroma

        collection = chromadb.PersistentClient(sys.argv[1]).get_collection("docs")
        print(collection.query(query_texts=["Who plays music?"], n_results=1)["ids"])
        """
    refused = _run_python(code, str(db))
    assert refused.returncode != 0
    assert not marker.exists(), "the reader's process ran the model folder's code"
    assert "trust_remote_code=True" in refused.stderr
    assert "TP_RAG_TRUST_REMOTE_CODE=1" in refused.stderr

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TP_RAG_TRUST_REMOTE_CODE": "1"}
    allowed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(db)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert marker.exists()


@pytest.mark.parametrize(
    "stored",
    [
        {"trust_remote_code": True},  # the current, flat layout
        {"model_kwargs": {"trust_remote_code": True}},  # tp-rag 0.1: nested in model_kwargs
        {"model_kwargs": {"code_revision": "x", "trust_remote_code": False}},
        {"model_kwargs": {"weights_only": False}},  # pickled weights run code when unpickled
        {"model_kwargs": {"use_kernels": True}},
        # a hub kernel named as the attention implementation: fetches and runs its code
        {"model_kwargs": {"attn_implementation": "kernels-community/flash-attn2"}},
        {"model_kwargs": {"a_future_option": 1}},  # unknown: not on the allowlist
        {"revision": {"not": "a string"}},
    ],
)
def test_stored_options_that_run_code_need_the_readers_opt_in(
    remote_code_model: Path,
    tiny_llama: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stored: dict,
) -> None:
    """Every stored way to enable code (any model_kwargs that runs or fetches code, any the
    allowlist does not know) is refused before anything is loaded, unless the reader opted in."""
    monkeypatch.delenv("TP_RAG_TRUST_REMOTE_CODE", raising=False)
    config = {**TPEmbeddingFunction(str(tiny_llama)).get_config(), **stored}
    config["model"] = str(remote_code_model)
    with pytest.raises(PermissionError, match="TP_RAG_TRUST_REMOTE_CODE=1"):
        TPEmbeddingFunction.build_from_config(config)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    "model_kwargs",
    [{"attn_implementation": "eager"}, {"attn_implementation": "sdpa", "use_safetensors": True}],
)
def test_stored_options_on_the_allowlist_need_no_opt_in(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch, model_kwargs: dict
) -> None:
    """The allowlisted loading options (built-in attention, safetensors) rebuild without the
    reader's opt-in, and reach the model."""
    monkeypatch.delenv("TP_RAG_TRUST_REMOTE_CODE", raising=False)
    config = TPEmbeddingFunction(str(tiny_llama), model_kwargs=model_kwargs).get_config()
    rebuilt = TPEmbeddingFunction.build_from_config(json.loads(json.dumps(config)))
    assert rebuilt.encoder.load_kwargs["model_kwargs"] == model_kwargs
    model = rebuilt.encoder._loaded.model
    assert model.config._attn_implementation == model_kwargs["attn_implementation"]


def test_the_reader_opts_in_by_passing_trust_remote_code(
    remote_code_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``TPStore.open(..., trust_remote_code=True)`` (``--trust-remote-code``) is the reader's
    opt-in: a store written with remote code opens, and without it the same call is refused
    before anything runs."""
    from tp_rag.cli import main
    from tp_rag.store import TPStore, connect

    monkeypatch.delenv("TP_RAG_TRUST_REMOTE_CODE", raising=False)
    db = tmp_path / "db"
    code = """
        import sys
        from tp_rag import TPEncoder
        from tp_rag.store import TPStore, connect

        encoder = TPEncoder.from_pretrained(sys.argv[2], trust_remote_code=True)
        TPStore(connect(sys.argv[1]), "remote", encoder)
        """
    written = _run_python(code, str(db), str(remote_code_model))
    assert written.returncode == 0, written.stderr
    (tmp_path / "ran").unlink()
    with pytest.raises(PermissionError, match="trust_remote_code=True when you open the store"):
        TPStore.open(connect(db), "remote", create=False)
    assert not (tmp_path / "ran").exists()
    query = ["query", "Who plays music?", "--collection", "remote", "--db", str(db)]
    assert main(query) == 2
    assert "TP_RAG_TRUST_REMOTE_CODE=1" in capsys.readouterr().err
    assert main([*query, "--trust-remote-code"]) == 0
    store = TPStore.open(connect(db), "remote", create=False, trust_remote_code=True)
    assert store.encoder.load_kwargs["trust_remote_code"] is True
    assert type(store.encoder._loaded.model).__name__ == "RemoteModel"  # the folder's own code


def test_a_preset_file_cannot_carry_loading_options(tiny_llama: Path, tmp_path: Path) -> None:
    """A preset file holds settings only: loading options in it are refused, not obeyed."""
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"tp_stop": 2, "trust_remote_code": True}))
    with pytest.raises(TypeError, match="trust_remote_code"):
        TPEncoder.from_pretrained(tiny_llama, preset=preset)
