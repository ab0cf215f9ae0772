"""The ASGI application of ``repolib serve``: parsing, authentication, statuses — nothing else.

Each request's ``Authorization: Bearer rpk_...`` opens the key's repository as
``repolib.open`` would (cached per token, re-checked against the catalog every second, so a
revoked or rotated key stops within that); the call itself is ``repo.aio``'s
``with_streaming_response``, whose bytes are passed on as they come. Policy, routing, budgets
and usage are the library's (repolib/ai/core.py): one enforcement path for HTTP and in-process
callers. Errors answer in OpenAI's shape with the statuses of repolib/ai/openai_errors.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..ai import direct
from ..ai.openai_errors import Described, describe
from ..api import Catalog
from ..exceptions import InvalidKey, RepolibError
from ..keys import parse_token
from ..repository import Repository
from .metrics import Metrics

log = logging.getLogger("repolib.serve")
access_log = logging.getLogger("repolib.serve.access")

# Fields the openai SDK handles on the client side; in a JSON body they are refused.
_CLIENT_ONLY = ("extra_body", "extra_headers", "extra_query", "timeout")


@dataclasses.dataclass
class ServeConfig:
    """What ``repolib serve`` takes from its command line."""

    home: str | None = None
    host: str = "127.0.0.1"
    port: int = 8787
    max_body: int = 8 * 1024 * 1024
    client_timeout: float = 60.0  # to read a request body, and for each write of an answer
    upstream_timeout: float | None = None  # None: the LLM resource's own (default 120 s)
    revalidate_s: float = 1.0
    grace: float = 30.0  # seconds in-flight requests get after SIGTERM
    tls_cert: str | None = None
    tls_key: str | None = None


async def _within(seconds: float, awaitable: Awaitable[Any]) -> Any:
    """``await`` with a deadline; on Python 3.11+ without a task per call (``wait_for``'s)."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:  # pragma: no cover - Python 3.10
        return await asyncio.wait_for(awaitable, seconds)
    async with timeout(seconds):
        return await awaitable


class HTTPError(Exception):
    """An answer the server gives by itself (body too large, not JSON, ...)."""

    def __init__(
        self, status: int, message: str, code: str, type_: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.described = Described(status, type_, code, message)


class Keys:
    """Open repositories by token: one per token, re-checked every ``revalidate_s``."""

    def __init__(self, catalog: Catalog, revalidate_s: float, size: int = 1024) -> None:
        self.catalog = catalog
        self.revalidate_s = revalidate_s
        self.size = size
        self._open: collections.OrderedDict[bytes, Repository] = collections.OrderedDict()
        self._lock = threading.Lock()

    def repository(self, token: str) -> Repository:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            repo = self._open.get(digest)
            if repo is not None:
                self._open.move_to_end(digest)
        if repo is None:
            repo = self.catalog.open_key(token)
            with self._lock:
                self._open[digest] = repo
                while len(self._open) > self.size:
                    self._open.popitem(last=False)
        try:
            repo.ensure_valid(self.revalidate_s)
        except InvalidKey:
            with self._lock:
                self._open.pop(digest, None)
            raise
        return repo


@dataclasses.dataclass
class Entry:
    """What the access log and the metrics say about one request."""

    method: str
    path: str
    started: float
    key_id: str = "-"
    model: str = "-"
    stream: bool = False
    status: int = 0
    prompt: int = 0
    completion: int = 0
    error: str | None = None


class Server:
    """The routes, the open keys and the counters of one ``repolib serve``."""

    def __init__(self, config: ServeConfig, catalog: Catalog | None = None) -> None:
        self.config = config
        self.catalog = catalog or Catalog(config.home)
        self.keys = Keys(self.catalog, config.revalidate_s)
        self.metrics = Metrics()

    # -- the routes -----------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_page(self, request: Request) -> Response:
        return PlainTextResponse(
            self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def models(self, request: Request) -> Response:
        return await self._handle(request, self._models)

    async def model(self, request: Request) -> Response:
        return await self._handle(request, self._model)

    async def chat(self, request: Request) -> Response:
        return await self._handle(request, self._chat)

    async def embeddings(self, request: Request) -> Response:
        return await self._handle(request, self._embeddings)

    # -- handlers -------------------------------------------------------------------------

    async def _models(self, request: Request, repo: Repository, entry: Entry) -> Response:
        page = await repo.aio.models.list()
        return JSONResponse({"object": "list", "data": [m.model_dump() for m in page.data]})

    async def _model(self, request: Request, repo: Repository, entry: Entry) -> Response:
        m = await repo.aio.models.retrieve(request.path_params["model"])
        return JSONResponse(m.model_dump())

    async def _chat(self, request: Request, repo: Repository, entry: Entry) -> Response:
        body = await self._json_body(request)
        model, messages = body.pop("model", None), body.pop("messages", None)
        stream = body.pop("stream", False)
        entry.model = model if isinstance(model, str) else "-"
        if not isinstance(model, str) or not model:
            raise HTTPError(400, "model is required (a model name or alias)", "missing_model")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) for m in messages)
        ):
            raise HTTPError(
                400, "messages must be a non-empty list of message objects", "invalid_messages"
            )
        if not isinstance(stream, bool):
            raise HTTPError(400, "stream must be true or false", "invalid_stream")
        entry.stream = stream
        cm = repo.aio.chat.completions.with_streaming_response.create(
            model=model, messages=messages, stream=stream, **body, **self._timeout()
        )
        return await self._answer(cm, entry, stream)

    async def _embeddings(self, request: Request, repo: Repository, entry: Entry) -> Response:
        body = await self._json_body(request)
        model, input_ = body.pop("model", None), body.pop("input", None)
        entry.model = model if isinstance(model, str) else "-"
        if not isinstance(model, str) or not model:
            raise HTTPError(400, "model is required (a model name or alias)", "missing_model")
        if not (isinstance(input_, str) or (isinstance(input_, list) and input_)):
            raise HTTPError(400, "input must be a string or a non-empty list", "invalid_input")
        cm = repo.aio.embeddings.with_streaming_response.create(
            model=model, input=input_, **body, **self._timeout()
        )
        return await self._answer(cm, entry, False)

    def _timeout(self) -> dict[str, Any]:
        t = self.config.upstream_timeout
        return {} if t is None else {"timeout": t}

    async def _answer(self, cm: Any, entry: Entry, stream: bool) -> Response:
        resp = await cm.__aenter__()
        if stream:
            return EventStream(resp, entry, self, self.config.client_timeout)
        try:
            content = await resp.read()
        finally:
            await resp.close()
        _count(entry, resp)
        return Response(content, media_type="application/json")

    # -- the frame: authentication, errors, the access log ----------------------------------

    async def _handle(
        self, request: Request, handler: Callable[[Request, Repository, Entry], Awaitable[Response]]
    ) -> Response:
        entry = Entry(request.method, request.url.path, time.perf_counter())
        try:
            token = _bearer(request)
            entry.key_id = _key_id(token)
            repo = self.keys.repository(token)
            response = await handler(request, repo, entry)
        except Exception as exc:
            response = self._error(exc, entry)
        if isinstance(response, EventStream):
            return response  # it logs when the stream ends
        entry.status = response.status_code
        self.finish(entry)
        return response

    def _error(self, exc: BaseException, entry: Entry) -> Response:
        d = getattr(exc, "described", None) if isinstance(exc, HTTPError) else describe(exc)
        if d is None:
            where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            site = f" at {where[0].filename}:{where[0].lineno}" if where else ""
            log.error("internal error: %s%s", type(exc).__name__, site)
            d = Described(
                500,
                "server_error",
                "internal_error",
                f"internal error ({type(exc).__name__}); see the server's log",
            )
        entry.error = d.code
        return JSONResponse(d.body(), status_code=d.status, headers=d.headers())

    async def _json_body(self, request: Request) -> dict[str, Any]:
        raw = await _read_body(request, self.config.max_body, self.config.client_timeout)
        try:
            body = json.loads(raw)
        except ValueError:
            raise HTTPError(400, "the request body is not valid JSON", "invalid_json") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object", "invalid_json")
        refused = [k for k in _CLIENT_ONLY if k in body]
        if refused:
            raise HTTPError(
                400,
                f"{', '.join(refused)} is an SDK option, not a field of the OpenAI API",
                "invalid_field",
            )
        return body

    def finish(self, entry: Entry) -> None:
        seconds = time.perf_counter() - entry.started
        routed = entry.status < 400 or entry.status >= 500 or entry.status == 429
        model = entry.model if routed and entry.key_id != "-" else "-"
        key_id = entry.key_id if entry.status != 401 else "-"
        self.metrics.observe(
            key_id=key_id,
            model=model,
            endpoint=entry.path,
            status=entry.status,
            seconds=seconds,
            prompt=entry.prompt,
            completion=entry.completion,
            error_type=entry.error,
        )
        access_log.info(
            "%s %s status=%d key=%s model=%s stream=%s prompt_tokens=%d completion_tokens=%d "
            "ms=%.1f%s",
            entry.method,
            entry.path,
            entry.status,
            key_id,
            json.dumps(entry.model)[1:-1][:100],
            "true" if entry.stream else "false",
            entry.prompt,
            entry.completion,
            seconds * 1000,
            f" error={entry.error}" if entry.error else "",
        )


def _count(entry: Entry, resp: Any) -> None:
    billed = getattr(resp, "billed_tokens", None)
    if billed is not None:
        entry.prompt, entry.completion = billed


def _bearer(request: Request) -> str:
    auth = request.headers.get("authorization")
    if not auth:
        raise InvalidKey("no API key: send the repository key as 'Authorization: Bearer rpk_...'")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise InvalidKey("the Authorization header must be 'Bearer rpk_...'")
    return token


def _key_id(token: str) -> str:
    try:
        return parse_token(token)[0]
    except RepolibError:
        return "-"


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(
            413, f"the request body is over the limit of {limit} bytes", "body_too_large"
        )
    parts: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(
                    413, f"the request body is over the limit of {limit} bytes", "body_too_large"
                )
            parts.append(chunk)

    try:
        await _within(timeout, read())
    except asyncio.TimeoutError:
        raise HTTPError(
            408, f"the request body did not arrive within {timeout:g} s", "client_timeout"
        ) from None
    except ClientDisconnect:
        raise HTTPError(499, "the client went away", "client_closed") from None
    return b"".join(parts)


class EventStream(Response):
    """An SSE answer passed on as it arrives; a client that leaves cancels the upstream call.

    The client's disconnect is watched while the stream runs, so a client that goes away is
    noticed at once, not at the next chunk; a client that stops reading is given up after
    ``client_timeout`` per write. Either way the upstream response is closed and the call is
    charged what was reserved for it (the library's ``close``).
    """

    def __init__(self, resp: Any, entry: Entry, server: Server, send_timeout: float) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.resp, self.entry, self.server, self.send_timeout = resp, entry, server, send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry = self.entry
        entry.status = 200
        try:
            await _within(
                self.send_timeout,
                send({"type": "http.response.start", "status": 200, "headers": self.raw_headers}),
            )
            pump = asyncio.ensure_future(self._pump(send))
            watch = asyncio.ensure_future(_disconnected(receive))
            done, _ = await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
            if pump not in done:
                entry.status, entry.error = 499, "client_closed"
                pump.cancel()
            watch.cancel()
            results = await asyncio.gather(pump, watch, return_exceptions=True)
            if isinstance(results[0], asyncio.TimeoutError | OSError):
                entry.status, entry.error = 499, "client_timeout"
            elif isinstance(results[0], Exception):  # the answer had begun: log it, cut it
                log.error("internal error in a stream: %s", type(results[0]).__name__)
                entry.error = "internal_error"
        except (asyncio.TimeoutError, OSError):
            entry.status, entry.error = 499, "client_timeout"
        finally:
            await self.resp.close()
            _count(entry, self.resp)
            self.server.finish(entry)

    async def _pump(self, send: Send) -> None:
        chunks = self.resp.iter_bytes()
        try:
            try:
                async for chunk in chunks:
                    await _within(
                        self.send_timeout,
                        send({"type": "http.response.body", "body": chunk, "more_body": True}),
                    )
            except RepolibError as exc:  # the upstream failed mid-stream: say so, in its shape
                d = describe(exc)
                if d is None:
                    raise
                self.entry.error = d.code
                await _within(
                    self.send_timeout,
                    send(
                        {
                            "type": "http.response.body",
                            "more_body": True,
                            "body": b"data: " + json.dumps(d.body()).encode() + b"\n\n",
                        }
                    ),
                )
            await _within(
                self.send_timeout,
                send({"type": "http.response.body", "body": b"", "more_body": False}),
            )
        finally:
            await chunks.aclose()


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    message = {
        404: f"no route {request.url.path}; the API is under /v1",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(status, "bad request")
    d = Described(
        status, "invalid_request_error", {404: "unknown_url"}.get(status, "invalid"), message
    )
    return JSONResponse(d.body(), status_code=status)


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await direct.aclose_all()


def create_app(config: ServeConfig, catalog: Catalog | None = None) -> Starlette:
    """The Starlette application (``uvicorn`` runs it; tests may too)."""
    direct.use_aiohttp()  # the upstream leg: a quarter of httpx's time per request
    server = Server(config, catalog)
    routes = [
        Route("/healthz", server.healthz, methods=["GET"]),
        Route("/metrics", server.metrics_page, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{model:path}", server.model, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/embeddings", server.embeddings, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes, exception_handlers={HTTPException: _not_found}, lifespan=_lifespan
    )
    app.state.server = server
    return app


__all__ = ["ServeConfig", "Server", "create_app"]
