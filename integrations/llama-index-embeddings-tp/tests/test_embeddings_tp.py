"""``TPEmbedding`` in LlamaIndex: settings, batching, indexes and ingestion pipelines.

The model is tiny and random, so a query only means something when it repeats a text: then
that text must come first (cosine 1), which checks that texts and queries are embedded the
same way and that every vector stays with its node.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import MetadataMode
from llama_index.embeddings.tp import TPEmbedding
from pydantic import ValidationError

from tp_rag import DEFAULT_MODEL, TPEncoder
from tp_rag.testing import save_tiny_model

TEXTS = [
    "A man is playing a guitar on the stage.",
    "A woman is slicing an onion in the kitchen.",
    "Stocks fell sharply after the central bank raised interest rates.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The cat sleeps on the warm windowsill.",
    "Children were laughing while they played football in the park.",
    "The committee approved the new budget for schools and hospitals.",
]
QUERY_PROMPT = 'This question : {pst}"{text}" asks in one word:"'


class EncodeSpy:
    """Wraps a real encoder's ``encode`` and records the size of each call."""

    def __init__(self, encoder: TPEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.threads: list[int] = []
        self._encode = encoder.encode
        monkeypatch.setattr(encoder, "encode", self)

    def __call__(self, texts, **kwargs):  # type: ignore[no-untyped-def]
        self.sizes.append(1 if isinstance(texts, str) else len(texts))
        self.threads.append(threading.get_ident())
        return self._encode(texts, **kwargs)


@pytest.fixture(scope="module")
def embedding(tiny_model: Path) -> TPEmbedding:
    return TPEmbedding(str(tiny_model), device="cpu")


def test_is_a_llama_index_embedding() -> None:
    """``TPEmbedding`` is a ``BaseEmbedding`` with its own ``class_name`` and the default model."""
    assert issubclass(TPEmbedding, BaseEmbedding)
    assert TPEmbedding.class_name() == "TPEmbedding"
    assert TPEmbedding.model_fields["model_name"].default == DEFAULT_MODEL
    assert TPEmbedding.model_fields["tp"].default is None  # None: the core's default (TP on)


def test_model_name_model_and_positional_are_the_same(tiny_model: Path) -> None:
    """``model=``, ``model_name=`` and the first positional argument all name the model."""
    by_keyword = TPEmbedding(model=str(tiny_model))
    by_name = TPEmbedding(model_name=str(tiny_model))
    by_position = TPEmbedding(str(tiny_model))
    assert by_keyword.model_name == by_name.model_name == by_position.model_name
    assert by_keyword.encoder._loaded is by_position.encoder._loaded  # one load


def test_installed_as_a_namespace_package() -> None:
    """``llama_index.embeddings.tp`` lives beside llama-index-core without shadowing it."""
    package_root = Path(__file__).resolve().parents[1] / "llama_index"
    assert not (package_root / "__init__.py").exists()
    assert not (package_root / "embeddings" / "__init__.py").exists()
    import llama_index.core
    import llama_index.embeddings.tp

    assert Path(llama_index.embeddings.tp.__file__).is_relative_to(package_root)
    assert llama_index.core.__file__ is not None


def test_wrong_model_name_names_the_model_and_the_fix() -> None:
    """A model that cannot be found fails with its name and the local-directory hint."""
    with pytest.raises(OSError, match="no-such-org/no-such-model") as info:
        TPEmbedding("no-such-org/no-such-model")
    assert "local directory" in str(info.value)


def test_misspelt_keyword_fails(tiny_model: Path) -> None:
    """A typo in a keyword is reported by name instead of being ignored."""
    with pytest.raises(ValidationError, match="tp_stpo"):
        TPEmbedding(str(tiny_model), tp_stpo=3)


def test_settings_reach_the_encoder(tiny_model: Path) -> None:
    """Every TP setting given to ``TPEmbedding`` ends up in the encoder's config."""
    embedding = TPEmbedding(
        str(tiny_model),
        tp=False,
        prompt="pcot",
        clean_text=False,
        tp_start=1,
        tp_stop=3,
        output_layer=-2,
        pooling="mean",
        normalize=False,
        max_length=128,
        embed_batch_size=4,
        device="cpu",
        dtype="float32",
    )
    config = embedding.encoder.config
    assert (config.tp, config.prompt, config.clean_text) == (False, "pcot", False)
    assert (config.tp_start, config.tp_stop, config.output_layer) == (1, 3, 3)  # 4 layers: -2 -> 3
    assert (config.pooling, config.normalize, config.max_length) == ("mean", False, 128)
    assert (config.batch_size, config.device, config.dtype) == (4, "cpu", "float32")


def test_unset_settings_keep_the_encoders_defaults(embedding: TPEmbedding) -> None:
    """Fields left at ``None`` do not override the core's model-dependent defaults."""
    reference = TPEncoder.from_pretrained(embedding.model_name, device="cpu")
    assert embedding.encoder.config == reference.config


def test_loading_options_reach_from_pretrained(tiny_model: Path, tmp_path: Path) -> None:
    """``preset`` and ``revision`` are ``TPEncoder.from_pretrained``'s own options;
    ``model_kwargs`` reach ``AutoModel.from_pretrained`` (here the attention implementation)."""
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"tp_start": 2, "tp_stop": 4, "output_layer": 2}))
    embedding = TPEmbedding(
        str(tiny_model),
        preset=str(preset),
        revision="main",
        model_kwargs={"attn_implementation": "eager"},
    )
    config = embedding.encoder.config
    assert (config.tp_start, config.tp_stop, config.output_layer) == (2, 4, 2)
    assert embedding.encoder.load_kwargs["revision"] == "main"
    assert embedding.encoder._loaded.model.config._attn_implementation == "eager"


def test_embed_batch_size_is_the_encoders_batch_size(tiny_model: Path) -> None:
    """LlamaIndex's ``embed_batch_size`` sets the forward-pass batch too (default: the core's)."""
    assert (
        TPEmbedding(str(tiny_model)).encoder.config.batch_size
        == TPEncoder.from_pretrained(tiny_model).config.batch_size
    )
    assert TPEmbedding(str(tiny_model), embed_batch_size=64).encoder.config.batch_size == 64
    with pytest.raises(ValidationError, match="batch_size"):
        TPEmbedding(str(tiny_model), batch_size=8)  # one name for one setting


def test_text_and_query_vectors_are_the_encoders(tiny_model: Path) -> None:
    """Texts use ``prompt``; queries use ``query_prompt``; both leave as lists of floats."""
    embedding = TPEmbedding(str(tiny_model), query_prompt=QUERY_PROMPT)
    text = embedding.get_text_embedding(TEXTS[0])
    query = embedding.get_query_embedding(TEXTS[0])
    assert type(text) is list and all(type(x) is float for x in text)
    np.testing.assert_allclose(text, embedding.encoder.encode(TEXTS[0]), atol=1e-6)
    np.testing.assert_allclose(
        query, embedding.encoder.encode(TEXTS[0], prompt=QUERY_PROMPT), atol=1e-6
    )
    assert not np.allclose(query, text)


def test_query_without_query_prompt_matches_text(embedding: TPEmbedding) -> None:
    """With no ``query_prompt``, a query is embedded exactly like a text."""
    np.testing.assert_allclose(
        embedding.get_query_embedding(TEXTS[1]), embedding.get_text_embedding(TEXTS[1]), atol=1e-6
    )


def test_a_batch_reaches_the_encoder_in_one_call(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``get_text_embedding_batch`` makes one encoder call per ``embed_batch_size`` texts."""
    # float32: batches of other sizes agree to 1e-6 (bfloat16 rounds padding differently)
    embedding = TPEmbedding(str(tiny_model), embed_batch_size=3, dtype="float32")
    spy = EncodeSpy(embedding.encoder, monkeypatch)
    vectors = embedding.get_text_embedding_batch(TEXTS)
    assert spy.sizes == [3, 3, 1]
    np.testing.assert_allclose(vectors, spy._encode(TEXTS), atol=1e-6)


def test_vector_store_index_retrieves_the_expected_node(embedding: TPEmbedding) -> None:
    """``VectorStoreIndex.from_documents`` with ``TPEmbedding`` ranks the matching node first."""
    documents = [Document(text=text, id_=f"doc-{i}") for i, text in enumerate(TEXTS)]
    index = VectorStoreIndex.from_documents(documents, embed_model=embedding)
    retriever = index.as_retriever(similarity_top_k=1)
    for i, text in enumerate(TEXTS):
        (hit,) = retriever.retrieve(text)
        assert hit.node.ref_doc_id == f"doc-{i}"
        assert hit.score == pytest.approx(1.0, abs=1e-4)


def test_ingestion_pipeline_embeds_every_node(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A splitter then ``TPEmbedding`` gives nodes whose embeddings are their text's vectors,
    computed in one encoder call per batch."""
    # float32: batches of other sizes agree to 1e-6 (bfloat16 rounds padding differently)
    embedding = TPEmbedding(str(tiny_model), embed_batch_size=2, dtype="float32")
    document = Document(text=" ".join(TEXTS * 3), metadata={"source": "test"})
    spy = EncodeSpy(embedding.encoder, monkeypatch)
    pipeline = IngestionPipeline(
        transformations=[SentenceSplitter(chunk_size=48, chunk_overlap=0), embedding]
    )
    nodes = pipeline.run(documents=[document])
    assert len(nodes) > 2
    contents = [node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]
    expected = spy._encode(contents)
    for node, vector in zip(nodes, expected, strict=True):
        assert node.embedding is not None
        np.testing.assert_allclose(node.embedding, vector, atol=1e-6)
    assert spy.sizes == [min(2, len(nodes) - i) for i in range(0, len(nodes), 2)]


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
    on = TPEmbedding(str(path), tp=True)
    off = TPEmbedding(str(path), tp=False)
    assert reads == [str(path)]
    assert not np.allclose(on.get_text_embedding(TEXTS[0]), off.get_text_embedding(TEXTS[0]))


def test_async_methods_run_off_the_event_loop(
    embedding: TPEmbedding, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The async API gives the sync results and runs the model outside the event loop's thread."""
    spy = EncodeSpy(embedding.encoder, monkeypatch)

    async def embed() -> tuple[list[float], list[float], list[list[float]]]:
        return (
            await embedding.aget_query_embedding(TEXTS[0]),
            await embedding.aget_text_embedding(TEXTS[1]),
            await embedding.aget_text_embedding_batch(TEXTS),
        )

    query, text, batch = asyncio.run(embed())
    assert len(spy.threads) == 3 and threading.get_ident() not in spy.threads
    assert spy.sizes[-1] == len(TEXTS)  # the async batch also reaches the encoder as one batch
    np.testing.assert_allclose(query, spy._encode(TEXTS[0]), atol=1e-6)
    np.testing.assert_allclose(text, spy._encode(TEXTS[1]), atol=1e-6)
    np.testing.assert_allclose(batch, spy._encode(TEXTS), atol=1e-6)


def test_serialised_settings_rebuild_the_same_embedding(tiny_model: Path) -> None:
    """``to_dict`` / ``from_dict`` (used by LlamaIndex to store components) round-trip."""
    embedding = TPEmbedding(str(tiny_model), tp_stop=3, query_prompt=QUERY_PROMPT)
    rebuilt = TPEmbedding.from_dict(json.loads(json.dumps(embedding.to_dict())))
    assert rebuilt.encoder.config == embedding.encoder.config
    np.testing.assert_allclose(
        rebuilt.get_query_embedding(TEXTS[0]), embedding.get_query_embedding(TEXTS[0]), atol=1e-6
    )


def test_a_string_as_a_batch_and_a_list_as_one_text_fail_up_front(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``get_text_embedding_batch("text")`` would embed each character and
    ``get_text_embedding([...])`` would fail inside LlamaIndex after running the model: both
    raise a TypeError saying what to pass, before the model runs (sync and async)."""
    embedding = TPEmbedding(str(tiny_model))
    calls: list[object] = []
    original = embedding.encoder.encode
    monkeypatch.setattr(
        embedding.encoder, "encode", lambda *a, **k: calls.append(a) or original(*a, **k)
    )
    with pytest.raises(TypeError, match=r"list of strings, not one str.*pass \[text\]"):
        embedding.get_text_embedding_batch("a" * 50)
    with pytest.raises(TypeError, match=r"takes one string, not list.*get_text_embedding_batch"):
        embedding.get_text_embedding(["a", "b"])
    with pytest.raises(TypeError, match="takes one string, not list"):
        embedding.get_query_embedding(["a", "b"])
    with pytest.raises(TypeError, match="list of strings, not one str"):
        asyncio.run(embedding.aget_text_embedding_batch("abc"))
    with pytest.raises(TypeError, match="takes one string"):
        asyncio.run(embedding.aget_text_embedding(["a"]))
    assert calls == []  # refused before any model call
    assert len(embedding.get_text_embedding_batch(["a", "b"])) == 2
