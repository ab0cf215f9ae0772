"""A small OpenAI-compatible HTTP server of our own, for the failure paths of the AI facade.

It speaks the wire format (JSON and server-sent events) on loopback, so the openai SDK and
repolib run unchanged against it: no patched Python objects. What it answers is set per
instance from the test::

    with FakeOpenAI(models=["m1"]) as fake:
        fake.push(500, "ok")        # the next chat answers: HTTP 500, then a normal completion
        fake.mode = "no_usage"      # every later one (when the queue is empty)
        ...
        fake.chat_requests()[-1].body   # the final body repolib sent upstream

Chat behaviours (``mode`` or queued with ``push``):

- ``"ok"``: a ``chat.completion`` with ``usage``; a stream when the body asks for one, with a
  final usage chunk (empty ``choices``) when ``stream_options.include_usage`` is set, then
  ``data: [DONE]``. ``"stream"`` is the same.
- ``"no_usage"`` (or ``"stream_no_usage"``): the same without any usage.
- an ``int``: that HTTP status with an OpenAI-style error body; a 401 echoes the bearer token it
  received (as careless gateways do), to test that repolib scrubs it.
- ``"slow"``: sleeps ``slow_s`` before answering (longer than the client's timeout).
- streams pause ``chunk_delay`` seconds between chunks (0 by default); a client that leaves
  mid-stream is counted in ``aborted`` (and ``aborted_event`` is set).
- ``"stream_cut"``: a couple of chunks in a chunked response, then the connection is closed
  without the terminating chunk, without usage and without ``[DONE]`` (a dropped connection).
- ``"stream_eof"``: a couple of chunks in a close-delimited response, then a clean close,
  without usage and without ``[DONE]`` (a proxy that gave up).
- ``"stream_error"``: one chunk, then an SSE ``error`` payload echoing the bearer token.

Content is deterministic: a completion has ``n`` tokens, the words ``w0 w1 ...``, where ``n`` is
the largest of the body's ``max_tokens``, ``max_completion_tokens``, ``n_predict`` (or
``DEFAULT_TOKENS``), capped at ``MAX_TOKENS``; ``completion_tokens`` is ``n``. ``prompt_tokens``
is the number of whitespace-separated words in the messages (string contents, other parts as
JSON) and in the body's tools, functions and schemas (``prompt_words``), unless the test sets
``prompt_tokens`` (an int) on the instance.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_TOKENS = 8
MAX_TOKENS = 256
CUT_AFTER = 2  # chunks sent before a stream is cut

Behaviour = str | int
MODES = {
    "ok",
    "stream",
    "no_usage",
    "stream_no_usage",
    "slow",
    "stream_cut",
    "stream_eof",
    "stream_error",
}
_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


@dataclasses.dataclass
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # the parsed JSON body (None when there was none)

    @property
    def bearer(self) -> str:
        auth = self.headers.get("authorization", "")
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""


class FakeOpenAI:
    """The server; a context manager that starts it on a free port and always stops it."""

    def __init__(
        self,
        models: Iterable[str] = ("m1",),
        mode: Behaviour = "ok",
        *,
        delay: float = 0.0,
        slow_s: float = 5.0,
        prompt_tokens: int | None = None,
        chunk_delay: float = 0.0,
    ) -> None:
        self.models = list(models)
        self.mode = mode
        self.delay = delay  # seconds every chat call waits before answering (calls in flight)
        self.slow_s = slow_s
        self.chunk_delay = chunk_delay
        self.aborted = 0  # streams whose client went away before the end
        self.aborted_event = threading.Event()
        self.prompt_tokens = prompt_tokens
        self.requests: list[Received] = []
        self._queue: collections.deque[Behaviour] = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control from the test ----------------------------------------------------------------

    @property
    def mode(self) -> Behaviour:
        """How chat calls are answered when nothing is queued."""
        return self._mode

    @mode.setter
    def mode(self, value: Behaviour) -> None:
        self._mode = _check(value)

    def push(self, *behaviours: Behaviour) -> None:
        """Answer the next chat calls so, in order; then fall back to ``mode``."""
        with self._lock:
            self._queue.extend(_check(b) for b in behaviours)

    def chat_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._queue.clear()
            self.aborted = 0
            self.aborted_event.clear()
        self.mode, self.delay, self.chunk_delay, self.prompt_tokens = "ok", 0.0, 0.0, None

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not running"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL to give an OpenAI client (ends in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(_Handler):
            owner = fake

        server = _Server(("127.0.0.1", 0), Handler)
        server.owner = self
        self._server = server
        self._stop.clear()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-openai-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes slow handlers
        server, self._server = self._server, None
        if server is None:
            return
        try:
            server.shutdown()
        finally:
            with self._lock:
                conns, self._conns = list(self._conns), set()
            for conn in conns:  # keep-alive connections of clients still alive
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            server.server_close()
            if self._thread is not None:
                self._thread.join(5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- used by the handler ------------------------------------------------------------------

    def _next(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else self.mode

    def _record(self, r: Received) -> None:
        with self._lock:
            self.requests.append(r)


def _check(behaviour: Behaviour) -> Behaviour:
    if isinstance(behaviour, bool) or not (
        behaviour in MODES or (isinstance(behaviour, int) and 100 <= behaviour < 600)
    ):
        raise ValueError(
            f"unknown behaviour {behaviour!r}: an HTTP status or one of {sorted(MODES)}"
        )
    return behaviour


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FakeOpenAI

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.owner._lock:
            self.owner._conns.add(request)
        # Headers and body go out in two writes: without this, Nagle's algorithm holds the
        # body until the client's delayed ACK (~40 ms), which swamps every timing measured here.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.owner._lock:
            self.owner._conns.discard(request)
        super().shutdown_request(request)


def completion_words(n: int) -> list[str]:
    """The content pieces of an ``n``-token completion: ``["w0", " w1", ...]``."""
    return [("" if i == 0 else " ") + f"w{i}" for i in range(n)]


def completion_tokens_for(body: dict[str, Any]) -> int:
    asked = [
        body[f]
        for f in ("max_tokens", "max_completion_tokens", "n_predict")
        if isinstance(body.get(f), int) and body[f] >= 0
    ]
    return min(max(asked) if asked else DEFAULT_TOKENS, MAX_TOKENS)


BILLED_FIELDS = ("tools", "functions", "tool_choice", "response_format")


def prompt_words(messages: Any, body: dict[str, Any] | None = None) -> int:
    """What this server bills as prompt: the words of the messages' string contents, of every
    other message part and field (as JSON), and of the body's tools, functions and schemas."""
    if isinstance(messages, str):
        return len(messages.split())
    total = 0
    for m in messages or []:
        content = m.get("content") if isinstance(m, dict) else m
        if isinstance(content, str):
            total += len(content.split())
        elif content is not None:
            total += len(json.dumps(content).split())
        if isinstance(m, dict):
            rest = {k: v for k, v in m.items() if k not in ("role", "content")}
            total += len(json.dumps(rest).split()) if rest else 0
    for field in BILLED_FIELDS:
        if body is not None and field in body:
            total += len(json.dumps(body[field]).split())
    return total


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FakeOpenAI

    def setup(self) -> None:
        super().setup()
        # Small SSE writes must not wait for the client's delayed ACK (Nagle): ~40 ms each.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # -- plumbing -------------------------------------------------------------------------------

    def _receive(self) -> Received:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        r = Received(
            self.command,
            self.path.split("?")[0],
            {k.lower(): v for k, v in self.headers.items()},
            body,
        )
        self.owner._record(r)
        return r

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _error(self, status: int, r: Received) -> None:
        if status == 401:
            message = f"Incorrect API key provided: {r.bearer}. You can find your API key at ..."
        else:
            message = f"fake upstream answered {status}"
        payload = {
            "error": {
                "message": message,
                "type": _STATUS_TYPES.get(status, "server_error"),
                "param": None,
                "code": str(status),
            }
        }
        headers = {"Retry-After": "0"} if status == 429 else {}
        self._json(status, payload, headers)

    # -- routes ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        r = self._receive()
        if r.path.endswith("/models"):
            self._json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                        for m in self.owner.models
                    ],
                },
            )
        else:
            self._json(404, {"error": {"message": f"no route {r.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        try:
            self._post()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
            self.close_connection = True

    def _post(self) -> None:
        r = self._receive()
        body = r.body if isinstance(r.body, dict) else {}
        if r.path.endswith("/chat/completions"):
            self._chat(r, body)
        elif r.path.endswith("/embeddings"):
            self._embeddings(body)
        else:
            self._json(404, {"error": {"message": f"no route {r.path}", "type": "not_found"}})

    def _embeddings(self, body: dict[str, Any]) -> None:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(str(t))), 1.0, 0.5, 0.25]}
            for i, t in enumerate(texts)
        ]
        tokens = sum(len(str(t).split()) for t in texts)
        self._json(
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model", ""),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _chat(self, r: Received, body: dict[str, Any]) -> None:
        fake = self.owner
        behaviour = fake._next()
        if fake.delay:
            fake._stop.wait(fake.delay)
        if isinstance(behaviour, int):
            self._error(behaviour, r)
            return
        if behaviour == "slow":
            fake._stop.wait(fake.slow_s)
            behaviour = "ok"
        n = completion_tokens_for(body)
        prompt = (
            fake.prompt_tokens
            if fake.prompt_tokens is not None
            else prompt_words(body.get("messages"), body)
        )
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        ident = f"chatcmpl-fake{len(fake.requests)}"
        model = body.get("model", "")
        finish = (
            "length"
            if n < MAX_TOKENS
            and any(f in body for f in ("max_tokens", "max_completion_tokens", "n_predict"))
            else "stop"
        )
        if behaviour in ("ok", "stream", "no_usage", "stream_no_usage") and not body.get("stream"):
            payload: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion",
                "created": 1700000000,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": finish,
                        "logprobs": None,
                        "message": {"role": "assistant", "content": "".join(completion_words(n))},
                    }
                ],
            }
            if behaviour in ("ok", "stream"):
                payload["usage"] = usage
            self._json(200, payload)
            return
        with_usage = behaviour in ("ok", "stream") and bool(
            (body.get("stream_options") or {}).get("include_usage")
        )
        self._stream(ident, model, n, finish, behaviour, usage if with_usage else None, r)

    def _stream(
        self,
        ident: str,
        model: str,
        n: int,
        finish: str,
        behaviour: Behaviour,
        usage: dict[str, int] | None,
        r: Received,
    ) -> None:
        chunked = behaviour != "stream_eof"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()

        def chunk(choices: list[Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "choices": choices,
                **(extra or {}),
            }

        def send(payload: Any) -> None:
            text = payload if isinstance(payload, str) else json.dumps(payload)
            data = f"data: {text}\n\n".encode()
            if chunked:
                data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
            self.wfile.write(data)
            self.wfile.flush()

        events: list[Any] = [
            chunk(
                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            )
        ]
        events += [
            chunk([{"index": 0, "delta": {"content": w}, "finish_reason": None}])
            for w in completion_words(n)
        ]
        cut = behaviour in ("stream_cut", "stream_eof", "stream_error")
        try:
            if cut:
                for e in events[:CUT_AFTER]:
                    send(e)
                if behaviour == "stream_error":
                    send(
                        {
                            "error": {
                                "message": f"upstream gave up; key was {r.bearer}",
                                "type": "server_error",
                            }
                        }
                    )
                    send("[DONE]")
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                    return
                time.sleep(0.05)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            events.append(chunk([{"index": 0, "delta": {}, "finish_reason": finish}]))
            for i, e in enumerate(events):
                if i and self.owner.chunk_delay:
                    self.owner._stop.wait(self.owner.chunk_delay)
                send(e)
            if usage is not None:
                send(chunk([], {"usage": usage}))
            send("[DONE]")
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            with self.owner._lock:
                self.owner.aborted += 1
            self.owner.aborted_event.set()


@contextlib.contextmanager
def fake_openai(**kwargs: Any) -> Iterator[FakeOpenAI]:
    """``with fake_openai(models=[...]) as fake:`` — started on a free port, always stopped."""
    fake = FakeOpenAI(**kwargs)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
