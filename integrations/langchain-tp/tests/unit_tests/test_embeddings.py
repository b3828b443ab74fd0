"""``TPEmbeddings``: fields reach the encoder, outputs are plain lists, errors are clear."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from langchain_tp import TPEmbeddings
from pydantic import ValidationError

from tp_rag import DEFAULT_MODEL, TPEncoder
from tp_rag.testing import save_tiny_model

TEXTS = [
    "A man is playing a guitar on the stage.",
    "A woman is slicing an onion in the kitchen.",
    "Stocks fell sharply after the central bank raised interest rates.",
]
QUERY_PROMPT = 'This question : {pst}"{text}" asks in one word:"'


@pytest.fixture(scope="module")
def embeddings(tiny_model: Path) -> TPEmbeddings:
    return TPEmbeddings(model=str(tiny_model), device="cpu")


def test_every_field_is_documented() -> None:
    """Each field carries its docstring as its description (shown in IDEs and API docs)."""
    missing = [name for name, f in TPEmbeddings.model_fields.items() if not f.description]
    assert not missing


def test_default_model_is_the_packages_default() -> None:
    """``TPEmbeddings()`` asks for tp_rag's documented default model, with TP on."""
    fields = TPEmbeddings.model_fields
    assert fields["model_name"].default == DEFAULT_MODEL
    assert fields["tp"].default is None  # None: the core's default, TP on


def test_no_arguments_without_network_names_the_model_and_the_fix(tmp_path: Path) -> None:
    """Offline with an empty cache, ``TPEmbeddings()`` says which model failed and how to
    point at a local directory (a fresh process, so no cached download can hide it)."""
    code = """
        from langchain_tp import TPEmbeddings
        try:
            TPEmbeddings()
        except OSError as error:
            print(error)
        """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert DEFAULT_MODEL in result.stdout
    assert "local directory" in result.stdout


def test_wrong_model_name_names_the_model_and_the_fix() -> None:
    """A model that cannot be found fails with its name and the local-directory hint."""
    with pytest.raises(OSError, match="no-such-org/no-such-model") as info:
        TPEmbeddings(model="no-such-org/no-such-model")
    assert "local directory" in str(info.value)


def test_misspelt_keyword_fails(tiny_model: Path) -> None:
    """``extra="forbid"``: a typo is reported by name instead of being ignored."""
    with pytest.raises(ValidationError, match="tp_stpo"):
        TPEmbeddings(model=str(tiny_model), tp_stpo=3)


def test_bad_values_fail_with_the_valid_choices(tiny_model: Path) -> None:
    """Bad settings name the valid values (field types, then the core's checks)."""
    with pytest.raises(ValidationError, match="'last' or 'mean'"):
        TPEmbeddings(model=str(tiny_model), pooling="max")
    with pytest.raises(ValueError, match="tp_start=3 must be smaller than tp_stop=2"):
        TPEmbeddings(model=str(tiny_model), tp_start=3, tp_stop=2)
    with pytest.raises(ValueError, match=r"\{text\} and \{pst\}"):
        TPEmbeddings(model=str(tiny_model), query_prompt="Represent this query:")


def test_model_name_and_model_alias_are_the_same_field(tiny_model: Path) -> None:
    """``model=`` (the alias) and ``model_name=`` both set the model."""
    by_alias = TPEmbeddings(model=str(tiny_model))
    by_name = TPEmbeddings(model_name=str(tiny_model))
    assert by_alias.model_name == by_name.model_name == str(tiny_model)
    assert by_alias.encoder.config.fingerprint() == by_name.encoder.config.fingerprint()


def test_fields_are_frozen(embeddings: TPEmbeddings) -> None:
    """The encoder is built once from the fields, so changing a field afterwards is refused."""
    with pytest.raises(ValidationError, match="frozen"):
        embeddings.tp = False  # type: ignore[misc]


def test_settings_reach_the_encoder(tiny_model: Path) -> None:
    """Every TP setting given to ``TPEmbeddings`` ends up in the encoder's config."""
    embeddings = TPEmbeddings(
        model=str(tiny_model),
        tp=False,
        prompt="pcot",
        clean_text=False,
        tp_start=1,
        tp_stop=3,
        output_layer=-2,
        pooling="mean",
        normalize=False,
        max_length=128,
        batch_size=4,
        device="cpu",
        dtype="float32",
    )
    config = embeddings.encoder.config
    assert (config.tp, config.prompt, config.clean_text) == (False, "pcot", False)
    assert (config.tp_start, config.tp_stop, config.output_layer) == (1, 3, 3)  # 4 layers: -2 -> 3
    assert (config.pooling, config.normalize, config.max_length) == ("mean", False, 128)
    assert (config.batch_size, config.device, config.dtype) == (4, "cpu", "float32")


def test_unset_settings_keep_the_encoders_defaults(embeddings: TPEmbeddings) -> None:
    """Fields left at ``None`` do not override the core's model-dependent defaults."""
    reference = TPEncoder.from_pretrained(embeddings.model_name, device="cpu")
    assert embeddings.encoder.config == reference.config


def test_loading_options_reach_from_pretrained(tiny_model: Path, tmp_path: Path) -> None:
    """``preset`` and ``revision`` are ``TPEncoder.from_pretrained``'s own options;
    ``model_kwargs`` reach ``AutoModel.from_pretrained`` (here the attention implementation)."""
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"tp_start": 2, "tp_stop": 4, "output_layer": 2}))
    embeddings = TPEmbeddings(
        model=str(tiny_model),
        preset=str(preset),
        revision="main",
        model_kwargs={"attn_implementation": "eager"},
    )
    config = embeddings.encoder.config
    assert (config.tp_start, config.tp_stop, config.output_layer) == (2, 4, 2)
    assert embeddings.encoder.load_kwargs["revision"] == "main"
    assert embeddings.encoder._loaded.model.config._attn_implementation == "eager"


def test_loading_options_inside_model_kwargs_are_refused(tiny_model: Path) -> None:
    """The 0.1 spelling ``model_kwargs={"preset": ...}`` names the option to pass directly."""
    with pytest.raises(TypeError, match=r"preset.*pass them directly"):
        TPEmbeddings(model=str(tiny_model), model_kwargs={"preset": "p.json"})


def test_embed_documents_returns_plain_float_lists(embeddings: TPEmbeddings) -> None:
    """Vectors leave as ``list[list[float]]`` equal to the encoder's, in input order."""
    vectors = embeddings.embed_documents(TEXTS)
    assert type(vectors) is list and all(type(v) is list for v in vectors)
    assert all(type(x) is float for v in vectors for x in v)
    np.testing.assert_allclose(vectors, embeddings.encoder.encode(TEXTS), atol=1e-6)
    assert embeddings.embed_documents([]) == []


def test_embed_documents_refuses_a_single_string(embeddings: TPEmbeddings) -> None:
    """A bare string is not split into characters or embedded as one vector by mistake."""
    with pytest.raises(TypeError, match="embed_query"):
        embeddings.embed_documents("A man is playing a guitar.")  # type: ignore[arg-type]


def test_embed_query_refuses_a_list(embeddings: TPEmbeddings) -> None:
    """``embed_query(["a"])`` is a TypeError that points at embed_documents (sync and async),
    as in the LlamaIndex adapter, not a list of vectors where one vector is promised."""
    with pytest.raises(TypeError, match=r"takes one string, not list.*embed_documents"):
        embeddings.embed_query(["a"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes one string, not list"):
        asyncio.run(embeddings.aembed_query(["a"]))  # type: ignore[arg-type]


def test_embed_query_falls_back_to_the_document_prompt(embeddings: TPEmbeddings) -> None:
    """Without ``query_prompt`` a query is embedded exactly like a document."""
    query = embeddings.embed_query(TEXTS[0])
    assert type(query) is list and all(type(x) is float for x in query)
    np.testing.assert_allclose(query, embeddings.embed_documents(TEXTS[:1])[0], atol=1e-6)


def test_query_prompt_is_used_for_queries_only(tiny_model: Path) -> None:
    """``query_prompt`` changes query vectors and leaves document vectors alone."""
    plain = TPEmbeddings(model=str(tiny_model))
    asymmetric = TPEmbeddings(model=str(tiny_model), query_prompt=QUERY_PROMPT)
    np.testing.assert_allclose(
        asymmetric.embed_query(TEXTS[0]),
        asymmetric.encoder.encode(TEXTS[0], prompt=QUERY_PROMPT),
        atol=1e-6,
    )
    assert not np.allclose(asymmetric.embed_query(TEXTS[0]), plain.embed_query(TEXTS[0]))
    np.testing.assert_allclose(
        asymmetric.embed_documents(TEXTS), plain.embed_documents(TEXTS), atol=1e-6
    )


def test_tp_off_changes_the_vectors(tiny_model: Path) -> None:
    """``tp=False`` reaches the encoder: the vectors are those of the prompt without TP."""
    on = TPEmbeddings(model=str(tiny_model), tp=True)
    off = TPEmbeddings(model=str(tiny_model), tp=False)
    np.testing.assert_allclose(
        off.embed_documents(TEXTS), on.encoder.encode(TEXTS, tp=False), atol=1e-6
    )
    assert not np.allclose(off.embed_documents(TEXTS), on.embed_documents(TEXTS))


def test_tp_on_and_off_load_the_weights_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two instances over the same model, device and dtype share one loaded model."""
    from transformers import AutoModel

    path = save_tiny_model(tmp_path / "fresh", "qwen2")  # loaded by no other test
    reads = []  # every read of a model's weights
    original = AutoModel.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        reads.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", classmethod(counted))
    on = TPEmbeddings(model=str(path), tp=True)
    off = TPEmbeddings(model=str(path), tp=False)
    assert reads == [str(path)]
    assert on.encoder.config.fingerprint() != off.encoder.config.fingerprint()


async def test_async_methods_run_off_the_event_loop(
    embeddings: TPEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``aembed_*`` give the sync results and run the model in another thread than the loop."""
    threads: list[int] = []
    encode = embeddings.encoder.encode

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(threading.get_ident())
        return encode(*args, **kwargs)

    monkeypatch.setattr(embeddings.encoder, "encode", spy)
    documents = await embeddings.aembed_documents(TEXTS)
    query = await embeddings.aembed_query(TEXTS[0])
    assert len(threads) == 2 and threading.get_ident() not in threads
    np.testing.assert_allclose(documents, encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(query, encode(TEXTS[0]), atol=1e-6)
