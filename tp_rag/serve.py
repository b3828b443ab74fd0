"""An embedding server that RAG clients already speak: Hugging Face TEI and OpenAI routes.

One process holds one copy of the weights and serves TP on and TP off as two model ids
(``NAME:tp-on``, ``NAME:tp-off``), queries and documents, to any client:

- TEI: ``POST /embed`` (``inputs``, ``normalize``, ``truncate``, ``prompt_name``), ``GET /info``,
  ``GET /health`` (200 once the model is loaded, 503 before), ``GET /metrics`` (Prometheus);
  ``POST /models/{model_id}/embed`` is ``/embed`` for one model id, for TEI clients that only
  take a URL.
- OpenAI: ``POST /v1/embeddings`` (``input``, ``model``, ``encoding_format`` float or base64,
  ``input_type`` query or document), ``GET /v1/models``.

Requests go into one queue; one worker takes every request waiting (up to
``max_batch_requests``), tokenizes each with the encoder's own ``tokenize`` and runs them together
through ``TPEncoder.encode_tokenized`` (length-sorted token-budget batches, as ``encode`` does), so
each request gets exactly the vectors ``encode`` gives for its texts. The model runs in a thread:
``/health`` and ``/metrics`` answer during a batch.

>>> app = create_app(lambda: TPEncoder.from_pretrained("/models/qwen"))  # doctest: +SKIP
>>> serve(lambda: TPEncoder.from_pretrained("/models/qwen"), port=8080)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tp_rag.vectors import unit_rows

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from tp_rag.encoder import PromptFeatures, TPEncoder

logger = logging.getLogger(__name__)

InputKind = Literal["query", "document"]
INPUT_KINDS: tuple[str, ...] = ("query", "document")
TP_SUFFIXES = {"tp-on": True, "tp-off": False}
API_KEY_ENV = "TP_RAG_API_KEY"
"""Environment variable read for the API key when ``--api-key`` is not given."""

_TOKEN_IDS_ADVICE = (
    "this server embeds text, and token ids from another tokenizer (tiktoken) mean nothing to "
    "its model: send strings. LangChain's OpenAIEmbeddings sends token ids unless you pass "
    "check_embedding_ctx_length=False"
)


@dataclass(frozen=True)
class ServeLimits:
    """The server's limits; each is a ``tp-rag serve`` flag and is listed by ``GET /info``.

    The encoder's own ``max_length`` (longest prompt) and ``max_batch_tokens`` (tokens per
    forward pass) apply too.

    >>> ServeLimits(max_concurrent_requests=64).max_client_batch_size
    2048
    """

    max_concurrent_requests: int = 512
    """Requests handled at once (queued or running); more are answered 429 with Retry-After."""
    max_client_batch_size: int = 2048
    """Texts in one request (OpenAI's own limit); more are answered 413."""
    max_payload_bytes: int = 2_000_000
    """Size of one request body in bytes (TEI's default); larger bodies are answered 413."""
    max_batch_requests: int | None = None
    """Requests the worker runs together in one job; ``None``: all those waiting. 1 turns
    batching across requests off."""
    retry_after_seconds: int = 1
    """The ``Retry-After`` header of a 429 answer."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None and item.name == "max_batch_requests":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{item.name}={value!r} must be a positive integer")


class RequestError(Exception):
    """A request the server refuses: an HTTP status, a message naming the fix, and the
    OpenAI ``param`` it is about."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass
class _Job:
    """One request's texts waiting for the worker."""

    texts: list[str]
    tp: bool
    kind: str
    truncate: bool
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class _Done:
    vectors: np.ndarray  # (n_texts, d) float32, not normalised
    tokens: int


class _Metrics:
    """The Prometheus series (in the app's own registry, so two apps never share counts)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tp_rag_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.texts = Counter("tp_rag_texts", "Texts embedded", registry=r)
        self.tokens = Counter("tp_rag_tokens", "Prompt tokens embedded", registry=r)
        self.batch_requests = Histogram(
            "tp_rag_batch_requests",
            "Requests run together in one job",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.batch_texts = Histogram(
            "tp_rag_batch_texts",
            "Texts run together in one job",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
            registry=r,
        )
        self.queue_seconds = Histogram(
            "tp_rag_queue_seconds", "Time a request waited for the worker", registry=r
        )
        self.inference_seconds = Histogram(
            "tp_rag_inference_seconds", "Time of one job (tokenize and forward)", registry=r
        )
        self.in_flight = Gauge("tp_rag_requests_in_flight", "Requests being handled", registry=r)
        self.queue_size = Gauge("tp_rag_queue_size", "Requests waiting for the worker", registry=r)


class EmbeddingService:
    """The model, its queue and its worker, independent of HTTP.

    ``embed`` is a coroutine: it queues the texts and returns their vectors once the worker has
    run them (with other requests' texts). Start the worker with ``start`` inside the event loop.
    """

    def __init__(
        self,
        load: Callable[[], TPEncoder],
        *,
        limits: ServeLimits,
        metrics: _Metrics | None = None,
    ) -> None:
        self._load = load
        self.limits = limits
        self.metrics = metrics or _Metrics()
        self.encoder: TPEncoder | None = None
        self.load_error: Exception | None = None
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        """Whether the model is loaded."""
        return self.encoder is not None

    async def start(self, on_load_error: Callable[[], None]) -> None:
        """Load the model in a thread, then run the worker until ``stop``."""
        self._worker = asyncio.create_task(self._run(on_load_error))

    async def stop(self) -> None:
        """Finish the queued requests, then end the worker."""
        self._queue.put_nowait(None)
        if self._worker is not None:
            await self._worker

    async def embed(self, texts: list[str], *, tp: bool, kind: str, truncate: bool) -> _Done:
        """The vectors (not normalised) and the prompt token count of ``texts``."""
        job = _Job(texts, tp, kind, truncate, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        self.metrics.queue_size.set(self._queue.qsize())
        return await job.future

    async def _run(self, on_load_error: Callable[[], None]) -> None:
        try:
            encoder = await asyncio.to_thread(self._load)
            self.encoder = encoder
            logger.info("model loaded: %r", encoder)
        except Exception as error:  # the server stops and ``serve`` raises it
            self.load_error = error
            on_load_error()
            return
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            jobs = [first]
            most = self.limits.max_batch_requests
            while not self._queue.empty() and (most is None or len(jobs) < most):
                job = self._queue.get_nowait()
                if job is None:
                    stopping = True  # run what was queued before the stop, then end
                    break
                jobs.append(job)
            self.metrics.queue_size.set(self._queue.qsize())
            started = time.perf_counter()
            for job in jobs:
                self.metrics.queue_seconds.observe(started - job.queued_at)
            try:
                results = await asyncio.to_thread(self._compute, jobs)
            except Exception as error:  # never leave requests waiting on a dead worker
                logger.exception("the worker failed")
                results = [error] * len(jobs)
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_requests.observe(len(jobs))
            self.metrics.batch_texts.observe(sum(len(job.texts) for job in jobs))
            for job, result in zip(jobs, results, strict=True):
                if job.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    self.metrics.texts.inc(len(job.texts))
                    self.metrics.tokens.inc(result.tokens)
                    job.future.set_result(result)

    def _compute(self, jobs: list[_Job]) -> list[_Done | BaseException]:
        """Tokenize each job apart (a bad one fails alone), then run the jobs of each input kind
        together through the encoder (TP on and off mix: the placeholders are in the tokens);
        queries get the encoder's query prompt (``query=True``), as ``encode`` gives them."""
        encoder = self.encoder
        assert encoder is not None  # the worker runs once the model is loaded
        results: list[_Done | BaseException] = [RuntimeError("not run")] * len(jobs)
        groups: dict[str, list[tuple[int, list[PromptFeatures]]]] = {}
        for index, job in enumerate(jobs):
            query = job.kind == "query"
            try:
                features = encoder.tokenize(job.texts, tp=job.tp, query=query)
            except (TypeError, ValueError) as error:
                results[index] = RequestError(422, str(error), "input")
                continue
            except Exception as error:  # a tokenizer failure fails this request, not the worker
                logger.exception("tokenizing failed")
                results[index] = error
                continue
            if not job.truncate:
                per_text = len(encoder.config.templates_for(query=query))
                long = [i // per_text for i, f in enumerate(features) if f.truncated]
                if long:
                    results[index] = RequestError(
                        413,
                        f"input {long[0]} is longer than the model's max_length="
                        f"{encoder.config.max_length} tokens (prompt included) and the request "
                        "says truncate: false; shorten it, send truncate: true to cut it as "
                        "encode does, or start the server with a larger --max-length",
                        "input",
                    )
                    continue
            groups.setdefault(job.kind, []).append((index, features))
        for kind, members in groups.items():
            try:
                vectors = encoder.encode_tokenized(
                    [f for _, features in members for f in features],
                    query=kind == "query",
                    normalize=False,
                )
            except Exception as error:  # e.g. out of memory: those requests fail, not the server
                logger.exception("embedding failed")
                for index, _ in members:
                    results[index] = error
                continue
            start = 0
            for index, features in members:
                count = len(jobs[index].texts)
                tokens = sum(len(f.input_ids) for f in features)
                results[index] = _Done(vectors[start : start + count], tokens)
                start += count
        return results


def parse_model_id(model: Any, served_name: str) -> tuple[bool, str | None]:
    """``(tp, kind)`` from a model id: ``NAME``, ``NAME:tp-on`` or ``NAME:tp-off``, each
    optionally followed by ``:query`` or ``:document`` (``kind`` is ``None`` without one).

    >>> parse_model_id("qwen:tp-off:query", "qwen")
    (False, 'query')
    """
    valid = model_ids(served_name)
    if not isinstance(model, str):
        raise RequestError(422, f"model must be a string, one of {', '.join(valid)}", "model")
    rest = model
    kind = None
    for name in INPUT_KINDS:
        if rest.endswith(f":{name}"):
            rest, kind = rest[: -len(name) - 1], name
    tp = True
    for suffix, value in TP_SUFFIXES.items():
        if rest.endswith(f":{suffix}"):
            rest, tp = rest[: -len(suffix) - 1], value
    if rest != served_name:
        raise RequestError(
            404,
            f"model {model!r} is not served here; use one of {', '.join(valid)} (each may end "
            "in :query or :document)",
            "model",
        )
    return tp, kind


def model_ids(served_name: str) -> list[str]:
    """The model ids ``/v1/models`` lists: TP on (the default) and TP off."""
    return [f"{served_name}:{suffix}" for suffix in TP_SUFFIXES]


def _check_inputs(value: Any, name: str, limits: ServeLimits) -> tuple[list[str], bool]:
    """The texts of ``inputs``/``input`` and whether one string was sent; refuses token ids,
    empty and non-string input with 422 and too many texts with 413."""
    if value is None:
        raise RequestError(422, f"{name} is missing; send a string or a list of strings", name)
    if isinstance(value, str):
        texts, single = [value], True
    elif isinstance(value, list):
        texts, single = value, False
        if not texts:
            raise RequestError(422, f"{name} is an empty list; send at least one string", name)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in texts) or all(
            isinstance(v, list) and all(isinstance(i, int) for i in v) for v in texts
        ):
            raise RequestError(422, f"{name} holds token ids; {_TOKEN_IDS_ADVICE}", name)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise RequestError(
                    422,
                    f"{name}[{index}] is {_json_type(text)}, not a string; every item must be "
                    "a string",
                    name,
                )
    else:
        raise RequestError(
            422, f"{name} is {_json_type(value)}; send a string or a list of strings", name
        )
    for index, text in enumerate(texts):
        if not text.strip():
            where = name if single else f"{name}[{index}]"
            raise RequestError(422, f"{where} is empty; send text to embed", name)
    if len(texts) > limits.max_client_batch_size:
        raise RequestError(
            413,
            f"{name} holds {len(texts)} texts, more than max_client_batch_size="
            f"{limits.max_client_batch_size}; send them in several requests (or start the server "
            "with a larger --max-client-batch-size)",
            name,
        )
    return texts, single


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", dict: "an object"}
    names.update({list: "a list", type(None): "null", str: "a string"})
    return names.get(type(value), type(value).__name__)


def _check_bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(422, f"{name} must be true or false, not {json.dumps(value)}", name)
    return value


def _check_kind(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if value not in INPUT_KINDS:
        raise RequestError(
            422, f"{name}={json.dumps(value)} is not one of {', '.join(INPUT_KINDS)}", name
        )
    return value


def create_app(
    load: Callable[[], TPEncoder],
    *,
    served_name: str,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
) -> Starlette:
    """The ASGI app: TEI and OpenAI routes over one ``EmbeddingService``.

    ``load`` builds the encoder (it runs in a thread once the app starts; ``/health`` says 503
    until it is done). ``api_key`` makes every route but ``/health`` need
    ``Authorization: Bearer KEY``.
    """
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    limits = limits or ServeLimits()
    service = EmbeddingService(load, limits=limits)
    metrics = service.metrics
    state = {"in_flight": 0}

    def tei_error(status: int, message: str, headers: dict | None = None) -> Response:
        kinds = {413: "validation", 422: "validation", 429: "overloaded", 503: "unhealthy"}
        body = {"error": message, "error_type": kinds.get(status, "backend")}
        return JSONResponse(body, status_code=status, headers=headers)

    def openai_error(
        status: int, message: str, param: str | None = None, headers: dict | None = None
    ) -> Response:
        kind = "invalid_request_error" if status < 500 and status != 429 else "server_error"
        code = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
        body = {
            "error": {"message": message, "type": kind, "param": param, "code": code.get(status)}
        }
        return JSONResponse(body, status_code=status, headers=headers)

    async def read_json(request: Request) -> dict:
        declared = request.headers.get("content-length")
        too_big = RequestError(
            413,
            f"the request body is larger than max_payload_bytes={limits.max_payload_bytes}; send "
            "fewer or shorter texts per request (or start the server with a larger "
            "--max-payload-bytes)",
        )
        if declared is not None and declared.isdigit() and int(declared) > limits.max_payload_bytes:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_payload_bytes:
                raise too_big
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise RequestError(422, f"the request body is not valid JSON ({error})") from None
        if not isinstance(parsed, dict):
            raise RequestError(422, f"the request body is {_json_type(parsed)}; send a JSON object")
        return parsed

    async def handle(
        request: Request,
        route: str,
        error: Callable[..., Response],
        work: Callable[[Request], Awaitable[Response]],
    ) -> Response:
        """Admission (readiness, the concurrency limit), then ``work``; errors become answers."""
        if not service.ready:
            response = error(503, "the model is still loading; retry in a moment")
        elif state["in_flight"] >= limits.max_concurrent_requests:
            response = error(
                429,
                f"the server is handling max_concurrent_requests={limits.max_concurrent_requests}"
                f" requests; retry after {limits.retry_after_seconds} s (or start it with a larger"
                " --max-concurrent-requests)",
                headers={"Retry-After": str(limits.retry_after_seconds)},
            )
        else:
            state["in_flight"] += 1
            metrics.in_flight.inc()
            try:
                response = await work(request)
            except RequestError as refused:
                if error is openai_error:
                    response = error(refused.status, refused.message, refused.param)
                else:
                    response = error(refused.status, refused.message)
            except Exception as failed:  # e.g. out of memory in a batch: this request fails
                message = f"embedding failed on the server ({type(failed).__name__}: {failed})"
                response = error(500, f"{message}; see the server's log")
            finally:
                state["in_flight"] -= 1
                metrics.in_flight.dec()
        metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    def tei_body_options(body: dict) -> dict:
        """TEI fields, at the top level or under ``parameters`` (huggingface_hub's
        ``InferenceClient.feature_extraction`` sends them there)."""
        parameters = body.get("parameters")
        if parameters is None:
            return body
        if not isinstance(parameters, dict):
            raise RequestError(422, "parameters must be an object")
        return {**body, **parameters}

    async def tei_embed(request: Request, model_id: str | None) -> Response:
        body = tei_body_options(await read_json(request))
        texts, _ = _check_inputs(body.get("inputs"), "inputs", limits)
        tp, kind = parse_model_id(model_id or body.get("model") or served_name, served_name)
        asked = _check_kind(body.get("prompt_name"), "prompt_name")
        if kind and asked and kind != asked:
            raise RequestError(422, f"the model id says {kind} and prompt_name says {asked}")
        direction = body.get("truncation_direction")
        if direction not in (None, "right", "Right"):
            raise RequestError(
                422, "truncation_direction must be Right: the text's end is cut, as encode does"
            )
        normalize = _check_bool(body, "normalize", True)
        truncate = _check_bool(body, "truncate", True)
        done = await service.embed(
            texts, tp=tp, kind=asked or kind or "document", truncate=truncate
        )
        vectors = unit_rows(done.vectors) if normalize else done.vectors
        return JSONResponse(vectors.tolist())  # TEI answers a list of vectors, even for one text

    async def embed(request: Request) -> Response:
        return await handle(request, "/embed", tei_error, lambda r: tei_embed(r, None))

    async def embed_model(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        return await handle(request, "/embed", tei_error, lambda r: tei_embed(r, model_id))

    async def openai_embed(request: Request) -> Response:
        body = await read_json(request)
        texts, _ = _check_inputs(body.get("input"), "input", limits)
        tp, kind = parse_model_id(body.get("model", served_name), served_name)
        asked = _check_kind(body.get("input_type"), "input_type")
        if kind and asked and kind != asked:
            raise RequestError(
                422, f"the model id says {kind} and input_type says {asked}", "input_type"
            )
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise RequestError(
                422,
                f"encoding_format={json.dumps(encoding)} is not one of float, base64",
                "encoding_format",
            )
        dimensions = body.get("dimensions")
        encoder = service.encoder
        assert encoder is not None
        if dimensions is not None and dimensions != encoder.dimension:
            raise RequestError(
                422,
                f"dimensions={json.dumps(dimensions)}: this model's vectors have "
                f"{encoder.dimension} dimensions and are not shortened; leave dimensions out",
                "dimensions",
            )
        done = await service.embed(texts, tp=tp, kind=asked or kind or "document", truncate=True)
        vectors = unit_rows(done.vectors) if encoder.config.normalize else done.vectors
        if encoding == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            data = vectors.tolist()
        model = body.get("model") or model_ids(served_name)[0]
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "embedding": row, "index": i}
                    for i, row in enumerate(data)
                ],
                "model": model,
                "usage": {"prompt_tokens": done.tokens, "total_tokens": done.tokens},
            }
        )

    async def v1_embeddings(request: Request) -> Response:
        return await handle(request, "/v1/embeddings", openai_error, openai_embed)

    async def v1_models(request: Request) -> Response:
        created = int(started)
        data = [
            {"id": model, "object": "model", "created": created, "owned_by": "tp-rag"}
            for model in model_ids(served_name)
        ]
        metrics.requests.labels("/v1/models", "200").inc()
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        if service.ready:
            return Response(status_code=200)
        return tei_error(503, "the model is still loading")

    async def info(request: Request) -> Response:
        from tp_rag import __version__

        encoder = service.encoder
        body: dict[str, Any] = {
            "model_id": served_name,
            "model_ids": model_ids(served_name),
            "version": __version__,
            "ready": encoder is not None,
            "auto_truncate": True,
            **asdict(limits),
        }
        if encoder is not None:
            config = encoder.config
            body.update(
                model_type={"embedding": {"pooling": config.pooling}},
                model_dtype=encoder.dtype,
                dtype_reason=encoder.dtype_reason,
                method=config.method,
                query_prompt=config.query_prompt,
                max_input_length=config.max_length,
                max_batch_tokens=config.batch_token_budget(
                    encoder.placeholder_embedding.device.type
                ),
                dimension=encoder.dimension,
                settings=config.to_dict(),
                fingerprints={
                    model: config.replace(tp=tp).fingerprint()
                    for model, tp in zip(model_ids(served_name), TP_SUFFIXES.values(), strict=True)
                },
            )
        return JSONResponse(body)

    async def prometheus(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def authorized(app: Any) -> Any:
        """ASGI middleware: every route but /health needs the bearer key when one is set."""
        from starlette.requests import Request as _Request

        expected = f"Bearer {api_key}".encode()

        async def middleware(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or api_key is None or scope["path"] == "/health":
                return await app(scope, receive, send)
            given = _Request(scope).headers.get("authorization", "").encode()
            if hmac.compare_digest(given, expected):
                return await app(scope, receive, send)
            message = (
                "this server needs an API key: send the header Authorization: Bearer KEY (the "
                "openai SDK: api_key=KEY; TEI clients: their token or api_key setting)"
            )
            if scope["path"].startswith("/v1/"):
                response = openai_error(401, message)
            else:
                response = tei_error(401, message)
            await response(scope, receive, send)

        return middleware

    stop_server: list[Callable[[], None]] = []

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start(lambda: [stop() for stop in stop_server])
        yield
        await service.stop()

    from contextlib import asynccontextmanager

    started = time.time()
    routes = [
        Route("/embed", embed, methods=["POST"]),
        Route("/models/{model_id:path}/embed", embed_model, methods=["POST"]),
        Route("/v1/embeddings", v1_embeddings, methods=["POST"]),
        Route("/v1/models", v1_models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=asynccontextmanager(lifespan))
    app.state.service = service
    app.state.stop_server = stop_server
    app.add_middleware(_Wrap, wrap=authorized)
    return app


class _Wrap:
    """Starlette middleware from a plain ``app -> app`` function."""

    def __init__(self, app: Any, wrap: Callable[[Any], Any]) -> None:
        self._app = wrap(app)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)


def serve(
    load: Callable[[], TPEncoder],
    *,
    served_name: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    log_level: str = "info",
) -> int:
    """Run the server until SIGTERM or Ctrl-C; returns 0 after a drained stop, and raises the
    loading error when the model could not be loaded (the server stops then).

    SIGTERM stops taking connections, lets the requests in flight finish, then exits 0.
    """
    import uvicorn

    app = create_app(load, served_name=served_name, limits=limits, api_key=api_key)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    app.state.stop_server.append(lambda: setattr(server, "should_exit", True))
    # uvicorn sends itself the signal again after its graceful shutdown; by then the requests
    # in flight are answered, so a drained stop is a clean exit rather than death by signal.
    if threading.current_thread() is threading.main_thread():
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, lambda signum, frame: None)
    server.run()
    if app.state.service.load_error is not None:
        raise app.state.service.load_error
    return 0
