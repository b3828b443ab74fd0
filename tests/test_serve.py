"""``tp-rag serve``: the real server process on 127.0.0.1, talked to by the real clients (the
``openai`` SDK, LangChain, LlamaIndex, Chroma, huggingface_hub) and by raw HTTP. Every vector is
checked against an in-process ``TPEncoder.encode`` of the same texts."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from servers import tp_rag_serve

from tp_rag.encoder import TPEncoder

NAME = "tiny"
KEY = "test-key-123"
QUERY_PROMPT = "pcot"
TOLERANCE = 1e-6
AUTH = {"Authorization": f"Bearer {KEY}"}

TEXTS = [
    "A man is playing a guitar.",
    "The boundary layer thickens downstream of the leading edge of the wing, and the skin "
    "friction falls as the flow slows near the surface.",
    "Is it raining?",
    "Stocks fell sharply after the central bank raised interest rates.",
]

CASES = [(tp, kind) for tp in (True, False) for kind in ("document", "query")]
CASE_IDS = [f"tp-{'on' if tp else 'off'}-{kind}" for tp, kind in CASES]


def model_id(tp: bool, kind: str | None = None) -> str:
    return f"{NAME}:tp-{'on' if tp else 'off'}" + (f":{kind}" if kind else "")


@pytest.fixture(scope="module")
def encoder(tiny_llama: Path) -> TPEncoder:
    """The in-process encoder the server's answers must equal."""
    return TPEncoder.from_pretrained(tiny_llama)


def expected(encoder: TPEncoder, texts: list[str], tp: bool, kind: str) -> np.ndarray:
    """``encode`` of ``texts``: documents with the encoder's prompt, queries with the query
    prompt the server was started with."""
    return encoder.encode(texts, tp=tp, prompt=QUERY_PROMPT if kind == "query" else None)


def assert_vectors(got: object, want: np.ndarray) -> None:
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[str]:
    """The main server: API key, a query prompt, default limits."""
    args = ["--model", str(tiny_llama), "--served-model-name", NAME]
    args += ["--query-prompt", QUERY_PROMPT, "--api-key", KEY]
    with tp_rag_serve(args) as (url, _):
        yield url


@pytest.fixture(scope="module")
def tight(tiny_llama: Path) -> Iterator[str]:
    """A server with small limits and no API key."""
    args = ["--model", str(tiny_llama), "--served-model-name", NAME, "--max-length", "48"]
    args += ["--max-concurrent-requests", "4", "--max-client-batch-size", "4"]
    args += ["--max-payload-bytes", "3000"]
    with tp_rag_serve(args) as (url, _):
        yield url


# --- the real clients ------------------------------------------------------------------------


@pytest.mark.parametrize(("tp", "kind"), CASES, ids=CASE_IDS)
def test_openai_sdk(server: str, encoder: TPEncoder, tp: bool, kind: str) -> None:
    """The openai SDK (which asks for base64 unless told otherwise) gets encode's vectors, in
    order, with the usage fields; query vs document by input_type."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    response = client.embeddings.create(
        model=model_id(tp), input=TEXTS, extra_body={"input_type": kind}
    )
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    assert response.model == model_id(tp)
    assert response.usage.prompt_tokens == response.usage.total_tokens > len(TEXTS)
    assert_vectors([d.embedding for d in response.data], expected(encoder, TEXTS, tp, kind))


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_openai_encodings_raw(server: str, encoder: TPEncoder, encoding: str) -> None:
    """base64 is little-endian float32, decoded here without the SDK; one string gives one row."""
    body = {"model": model_id(True), "input": TEXTS[0], "encoding_format": encoding}
    answer = httpx.post(f"{server}/v1/embeddings", json=body, headers=AUTH).json()
    (item,) = answer["data"]
    vector = item["embedding"]
    if encoding == "base64":
        vector = np.frombuffer(base64.b64decode(vector), dtype="<f4")
    assert_vectors([vector], expected(encoder, TEXTS[:1], True, "document"))
    assert answer["object"] == "list" and item["object"] == "embedding"


@pytest.mark.parametrize(("tp", "kind"), CASES, ids=CASE_IDS)
def test_langchain_openai_embeddings(server: str, encoder: TPEncoder, tp: bool, kind: str) -> None:
    """LangChain's OpenAIEmbeddings with check_embedding_ctx_length=False; the query kind by
    model id (LangChain sends the same request body for queries and documents)."""
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model=model_id(tp, kind),
        base_url=f"{server}/v1",
        api_key=KEY,
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    if kind == "query":
        assert_vectors([embeddings.embed_query(TEXTS[1])], expected(encoder, TEXTS[1:2], tp, kind))
    else:
        assert_vectors(embeddings.embed_documents(TEXTS), expected(encoder, TEXTS, tp, kind))


def test_langchain_token_ids_refused(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without check_embedding_ctx_length=False, LangChain sends tiktoken ids: 422 naming it."""
    import llama_index.core  # ships tiktoken's cl100k_base, so this runs offline
    import openai
    from langchain_openai import OpenAIEmbeddings

    cache = Path(llama_index.core.__file__).parent / "_static" / "tiktoken_cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    embeddings = OpenAIEmbeddings(
        model=model_id(True), base_url=f"{server}/v1", api_key=KEY, max_retries=0
    )
    with pytest.raises(openai.UnprocessableEntityError, match="check_embedding_ctx_length=False"):
        embeddings.embed_documents(TEXTS)


@pytest.mark.parametrize(("tp", "kind"), CASES, ids=CASE_IDS)
def test_langchain_huggingface_endpoint(
    server: str, encoder: TPEncoder, tp: bool, kind: str
) -> None:
    """langchain_huggingface's HuggingFaceEndpointEmbeddings (through huggingface_hub's
    InferenceClient, which sends TEI's fields under "parameters"); the query kind as TEI's
    prompt_name."""
    lc_hf = pytest.importorskip(
        "langchain_huggingface",
        reason="langchain-huggingface is installed by `make install` (without its pins: it asks "
        "for huggingface-hub<2, which transformers 5 cannot use), not by the test extra",
    )
    from huggingface_hub import InferenceClient

    embeddings = lc_hf.HuggingFaceEndpointEmbeddings(
        model="tp-rag", model_kwargs={"prompt_name": kind}
    )
    # langchain-huggingface 1.2 refuses a URL as `model`; its client is huggingface_hub's
    # InferenceClient, which takes one: point that at the server.
    embeddings.client = InferenceClient(model=f"{server}/models/{model_id(tp)}/embed", token=KEY)
    assert_vectors(embeddings.embed_documents(TEXTS), expected(encoder, TEXTS, tp, kind))


@pytest.mark.parametrize(("tp", "kind"), CASES, ids=CASE_IDS)
def test_llamaindex_text_embeddings_inference(
    server: str, encoder: TPEncoder, tp: bool, kind: str
) -> None:
    """LlamaIndex's TextEmbeddingsInference at /models/{model id}/embed."""
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    embed = TextEmbeddingsInference(
        model_name=NAME, base_url=f"{server}/models/{model_id(tp, kind)}", auth_token=KEY
    )
    if kind == "query":
        got = [embed.get_query_embedding(TEXTS[2])]
        assert_vectors(got, expected(encoder, TEXTS[2:3], tp, kind))
    else:
        assert_vectors(embed.get_text_embedding_batch(TEXTS), expected(encoder, TEXTS, tp, kind))


@pytest.mark.parametrize(("tp", "kind"), CASES, ids=CASE_IDS)
def test_chroma_huggingface_embedding_server(
    server: str, encoder: TPEncoder, tp: bool, kind: str
) -> None:
    """Chroma's HuggingFaceEmbeddingServer, given the /embed URL of a model id."""
    from chromadb.utils.embedding_functions import HuggingFaceEmbeddingServer

    function = HuggingFaceEmbeddingServer(
        url=f"{server}/models/{model_id(tp, kind)}/embed", api_key=KEY
    )
    got = function.embed_query(TEXTS) if kind == "query" else function(TEXTS)
    assert_vectors(got, expected(encoder, TEXTS, tp, kind))


@pytest.mark.parametrize(("tp", "kind"), CASES, ids=CASE_IDS)
def test_chroma_openai_embedding_function(
    server: str, encoder: TPEncoder, tp: bool, kind: str
) -> None:
    """Chroma's OpenAIEmbeddingFunction with the server as api_base."""
    from chromadb.utils.embedding_functions import OpenAIEmbeddingFunction

    function = OpenAIEmbeddingFunction(
        api_key=KEY, model_name=model_id(tp, kind), api_base=f"{server}/v1"
    )
    got = function.embed_query(TEXTS) if kind == "query" else function(TEXTS)
    assert_vectors(got, expected(encoder, TEXTS, tp, kind))


# --- TEI routes ------------------------------------------------------------------------------


def test_tei_embed_fields(server: str, encoder: TPEncoder) -> None:
    """/embed: a string gives one row; prompt_name picks queries; normalize false gives the
    raw vectors (those of an encoder with normalize=False)."""
    one = httpx.post(f"{server}/embed", json={"inputs": TEXTS[0]}, headers=AUTH).json()
    assert_vectors(one, expected(encoder, TEXTS[:1], True, "document"))
    query = {"inputs": TEXTS, "prompt_name": "query"}
    got = httpx.post(f"{server}/embed", json=query, headers=AUTH).json()
    assert_vectors(got, expected(encoder, TEXTS, True, "query"))
    raw = {"inputs": TEXTS, "normalize": False}
    got = httpx.post(f"{server}/embed", json=raw, headers=AUTH).json()
    assert_vectors(got, encoder.with_settings(normalize=False).encode(TEXTS))
    assert np.abs(np.linalg.norm(got, axis=1) - 1).max() > 1e-3  # really not normalised


def test_info_models_metrics(server: str, encoder: TPEncoder) -> None:
    """/info names the model, its settings, fingerprints and every limit; /v1/models lists TP
    on and off; /metrics is Prometheus text with the server's series."""
    from tp_rag.serve import ServeLimits

    info = httpx.get(f"{server}/info", headers=AUTH).json()
    assert info["model_id"] == NAME
    served = encoder.with_settings(query_prompt=QUERY_PROMPT).config  # the server's settings
    assert info["fingerprints"][model_id(True)] == served.fingerprint()
    assert info["fingerprints"][model_id(False)] == served.replace(tp=False).fingerprint()
    for limit in [*ServeLimits.__dataclass_fields__, "max_input_length", "max_batch_tokens"]:
        assert limit in info, limit
    models = httpx.get(f"{server}/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == [model_id(True), model_id(False)]
    text = httpx.get(f"{server}/metrics", headers=AUTH).text
    for series in ("tp_rag_requests_total", "tp_rag_texts_total", "tp_rag_tokens_total"):
        assert series in text
    for series in ("tp_rag_batch_requests", "tp_rag_queue_seconds", "tp_rag_inference_seconds"):
        assert f"{series}_bucket" in text


def test_every_limit_is_a_flag() -> None:
    """Each limit is a ``tp-rag serve`` option with its default shown in --help."""
    from tp_rag.serve import ServeLimits

    help_text = subprocess.run(
        [sys.executable, "-m", "tp_rag", "serve", "--help"], capture_output=True, text=True
    ).stdout
    for limit in ServeLimits.__dataclass_fields__:
        assert "--" + limit.replace("_", "-") in help_text
    for option in ("--max-length", "--max-batch-tokens", "--api-key", "--host"):
        assert option in help_text


def test_binds_loopback_by_default() -> None:
    from tp_rag.cli import build_parser

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"


def test_api_key(server: str) -> None:
    """Every route but /health needs the key; a wrong or missing key gets 401 naming the
    header; the OpenAI routes answer in OpenAI's error shape."""
    assert httpx.get(f"{server}/health").status_code == 200
    for method, route in [("GET", "/info"), ("GET", "/metrics"), ("POST", "/embed")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            answer = httpx.request(
                method, f"{server}{route}", json={"inputs": "x"}, headers=headers
            )
            assert answer.status_code == 401
            assert "Authorization: Bearer" in answer.json()["error"]
    answer = httpx.post(f"{server}/v1/embeddings", json={"input": "x"})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"


def test_health_is_503_until_loaded(tiny_llama: Path) -> None:
    """Before the model is loaded, /health and /embed answer 503; after, 200."""
    from starlette.testclient import TestClient

    from tp_rag.serve import create_app

    release = threading.Event()

    def load() -> TPEncoder:
        release.wait(30)
        return TPEncoder.from_pretrained(tiny_llama)

    with TestClient(create_app(load, served_name=NAME)) as client:
        assert client.get("/health").status_code == 503
        answer = client.post("/embed", json={"inputs": "x"})
        assert answer.status_code == 503 and "loading" in answer.json()["error"]
        release.set()
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.post("/embed", json={"inputs": "x"}).status_code == 200


# --- bad input and limits --------------------------------------------------------------------

LONG = " ".join(["word"] * 200)

BAD = [
    ("/embed", {"inputs": []}, 422, "at least one string"),
    ("/embed", {"inputs": ""}, 422, "send text"),
    ("/embed", {"inputs": ["ok", 3]}, 422, "inputs[1] is a number"),
    ("/embed", {"inputs": {"a": 1}}, 422, "a string or a list of strings"),
    ("/embed", {}, 422, "inputs is missing"),
    ("/embed", [1, 2], 422, "send a JSON object"),
    ("/embed", {"inputs": [1, 2, 3]}, 422, "check_embedding_ctx_length=False"),
    ("/embed", {"inputs": "x", "prompt_name": "passage"}, 422, "query, document"),
    ("/embed", {"inputs": "x", "normalize": "yes"}, 422, "true or false"),
    ("/embed", {"inputs": "\ud800 bad"}, 422, "surrogate"),
    ("/embed", {"inputs": ["a"] * 5}, 413, "--max-client-batch-size"),
    ("/embed", {"inputs": ["x" * 1000] * 4}, 413, "--max-payload-bytes"),
    ("/embed", {"inputs": LONG, "truncate": False}, 413, "max_length=48"),
    ("/models/other:tp-on/embed", {"inputs": "x"}, 404, "tiny:tp-on, tiny:tp-off"),
    ("/v1/embeddings", {"input": [[1, 2], [3]]}, 422, "check_embedding_ctx_length=False"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 422, "float, base64"),
    ("/v1/embeddings", {"input": "x", "input_type": "search"}, 422, "query, document"),
    ("/v1/embeddings", {"input": "x", "model": "gpt"}, 404, "tiny:tp-on, tiny:tp-off"),
    ("/v1/embeddings", {"input": "x", "dimensions": 8}, 422, "leave dimensions out"),
]


@pytest.mark.parametrize(("route", "body", "status", "fix"), BAD)
def test_bad_input_and_limits(
    tight: str, encoder: TPEncoder, route: str, body: object, status: int, fix: str
) -> None:
    """Each case gets its status and a message naming the fix; the server then still answers
    a good request correctly."""
    answer = httpx.post(f"{tight}{route}", content=json.dumps(body).encode())
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    message = error["message"] if route.startswith("/v1/") else error
    assert fix in message
    assert httpx.get(f"{tight}/health").status_code == 200
    good = httpx.post(f"{tight}/embed", json={"inputs": TEXTS[:2]}).json()
    assert_vectors(good, encoder.with_settings(max_length=48).encode(TEXTS[:2]))


def test_invalid_json(tight: str) -> None:
    answer = httpx.post(f"{tight}/embed", content=b"{inputs: nope")
    assert answer.status_code == 422 and "not valid JSON" in answer.json()["error"]


def test_long_text_is_cut_as_encode_cuts(tight: str, encoder: TPEncoder) -> None:
    """Without truncate: false, a text over max_length is cut the way encode cuts it."""
    got = httpx.post(f"{tight}/embed", json={"inputs": LONG}).json()
    assert_vectors(got, encoder.with_settings(max_length=48).encode([LONG]))


# --- concurrency -----------------------------------------------------------------------------


def _texts(count: int) -> list[str]:
    """Distinct texts of mixed lengths (1 to about 60 words)."""
    words = "alpha beta gamma delta river mountain engine wing flow pressure".split()
    return [
        f"text {i}: " + " ".join(words[(i * 7 + j) % len(words)] for j in range((i * 13) % 60))
        for i in range(count)
    ]


async def _post_all(url: str, bodies: list[dict], headers: dict) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:
        return await asyncio.gather(*(client.post(url, json=body) for body in bodies))


def _wait_in_flight(url: str, headers: dict) -> None:
    """Return once the server is handling a request (its in-flight gauge), fail after 60 s."""
    deadline = time.monotonic() + 60
    while "tp_rag_requests_in_flight 1.0" not in httpx.get(f"{url}/metrics", headers=headers).text:
        assert time.monotonic() < deadline, "the request never reached the server"
        time.sleep(0.05)


def _batched_jobs(url: str) -> tuple[float, float]:
    """(jobs run, requests run) from /metrics."""
    text = httpx.get(f"{url}/metrics", headers=AUTH).text
    values = {}
    for line in text.splitlines():
        if line.startswith(("tp_rag_batch_requests_count", "tp_rag_batch_requests_sum")):
            name, value = line.split()
            values[name] = float(value)
    return values["tp_rag_batch_requests_count"], values["tp_rag_batch_requests_sum"]


def test_64_concurrent_clients_get_their_own_vectors(server: str, encoder: TPEncoder) -> None:
    """64 clients at once, mixed lengths, TP on and off, queries and documents: each gets
    exactly encode's vectors for its own text, and the worker ran requests together."""
    texts = _texts(64)
    kinds = [CASES[i % 4] for i in range(64)]
    bodies = [
        {"model": model_id(tp), "input": [text], "input_type": kind, "encoding_format": "float"}
        for text, (tp, kind) in zip(texts, kinds, strict=True)
    ]
    jobs_before, requests_before = _batched_jobs(server)
    answers = asyncio.run(_post_all(f"{server}/v1/embeddings", bodies, AUTH))
    jobs_after, requests_after = _batched_jobs(server)
    jobs, requests = jobs_after - jobs_before, requests_after - requests_before
    for text, (tp, kind), answer in zip(texts, kinds, answers, strict=True):
        assert answer.status_code == 200, answer.text
        got = [answer.json()["data"][0]["embedding"]]
        assert_vectors(got, expected(encoder, [text], tp, kind))
    assert requests == 64
    assert jobs < 64, "every request ran alone: no batching across requests"


def test_burst_past_the_limit_gets_429s(tight: str, encoder: TPEncoder) -> None:
    """40 requests at once against max_concurrent_requests=4: some get 429 with Retry-After,
    the others their own correct vectors; none is lost."""
    texts = _texts(40)
    answers = asyncio.run(_post_all(f"{tight}/embed", [{"inputs": [t]} for t in texts], {}))
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 429} and len(statuses) == 40
    assert 429 in statuses and 200 in statuses
    short = encoder.with_settings(max_length=48)
    for text, answer in zip(texts, answers, strict=True):
        if answer.status_code == 429:
            assert answer.headers["Retry-After"] == "1"
            assert "--max-concurrent-requests" in answer.json()["error"]
        else:
            assert_vectors(answer.json(), short.encode([text]))


def test_client_gone_mid_request_leaves_server_serving(server: str, encoder: TPEncoder) -> None:
    """A client that dies half-way through its body, one that dies waiting for its answer
    (SIGKILL), and the server still answers the next request correctly."""
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:  # half a body, then gone
        sock.sendall(
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: 100000\r\n\r\n".encode()
            + b'{"inputs": ["half'
        )
    script = (
        "import httpx, sys\n"
        "body = {'input': [f'text {i} ' * 40 for i in range(1500)], 'model': sys.argv[2]}\n"
        "httpx.post(sys.argv[1], json=body, headers={'Authorization': sys.argv[3]}, timeout=300)\n"
    )
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            f"{server}/v1/embeddings",
            model_id(True),
            AUTH["Authorization"],
        ]
    )
    _wait_in_flight(server, AUTH)  # sent; now waiting for 1,500 vectors
    client.send_signal(signal.SIGKILL)
    client.wait()
    assert httpx.get(f"{server}/health").status_code == 200
    got = httpx.post(f"{server}/embed", json={"inputs": TEXTS}, headers=AUTH, timeout=300).json()
    assert_vectors(got, expected(encoder, TEXTS, True, "document"))


def test_sigterm_drains_and_exits_0(tiny_llama: Path, encoder: TPEncoder) -> None:
    """SIGTERM while a request runs: the request is answered in full, new connections are
    refused, and the process exits 0."""
    texts = _texts(2000)
    with tp_rag_serve(["--model", str(tiny_llama), "--served-model-name", NAME]) as (url, proc):
        result: dict[str, httpx.Response] = {}

        def post() -> None:
            result["answer"] = httpx.post(f"{url}/embed", json={"inputs": texts}, timeout=300)

        sender = threading.Thread(target=post)
        sender.start()
        _wait_in_flight(url, {})
        proc.send_signal(signal.SIGTERM)
        sender.join(300)
        assert proc.wait(60) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=5)
    answer = result["answer"]
    assert answer.status_code == 200
    assert_vectors(answer.json(), encoder.encode(texts))


def test_bad_options_fail_before_loading(tmp_path: Path) -> None:
    """A bad limit or query prompt is one clean error line, exit status 2."""
    for args, words in [
        (["--max-concurrent-requests", "0"], "max_concurrent_requests=0"),
        (["--query-prompt", "nope"], "nope"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "tp_rag", "serve", "--model", str(tmp_path), *args],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert done.returncode == 2 and words in done.stderr, done.stderr


def test_a_model_that_cannot_load_stops_the_server(tmp_path: Path) -> None:
    """The server starts answering 503 at once, and a model that fails to load ends it with the
    loading error on one line and exit status 2 (not a hanging server)."""
    from servers import free_port

    command = [sys.executable, "-m", "tp_rag", "serve", "--model", str(tmp_path / "absent")]
    done = subprocess.run(
        [*command, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2, done.stderr
    assert "tp-rag serve: error:" in done.stderr
    assert "Traceback" not in done.stderr
