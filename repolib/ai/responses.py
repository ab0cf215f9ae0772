"""What a routed call hands back: the SDK's types, its raw response, or a streamed response.

``Call`` holds the SDK's raw response of one upstream call and its bill. ``parsed()`` gives the
SDK's objects (a ``Stream`` whose chunks are billed as they pass); ``StreamedResponse`` and
``AsyncStreamedResponse`` mirror the SDK's ``with_streaming_response`` objects (``parse``,
``read``, ``iter_bytes``, ``iter_lines``, ``headers``, ``http_request``) over the upstream's
bytes: server-sent events are split, billed and passed on as they came, less the usage chunk
the caller did not ask for. ``repolib serve`` forwards those bytes, so an HTTP client and an
in-process caller are billed by the same code. Whatever is not read to the end is charged its
reservation when closed.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from ..exceptions import ConfigError, UpstreamError
from .core import Outcome, Tally, content_of, field
from .openai_errors import _http, as_openai


class Call:
    """One routed, policy-checked upstream call: the SDK's raw response and its bill."""

    def __init__(self, raw: Any, out: Outcome, stream: bool, is_async: bool) -> None:
        self.raw, self.out, self.stream, self.is_async = raw, out, stream, is_async
        self._parsed: Any = None

    def parsed(self) -> Any:
        """The SDK's object: a ``ChatCompletion`` (billed now) or a ``Stream`` (billed as read)."""
        if self._parsed is None:
            result = self.raw.parse()  # the SDK caches it: raw.parse() later returns this one
            if self.stream:
                watch = aobserve if self.is_async else observe
                result._iterator = watch(result._iterator, self.out)
            else:
                self.out.done(field(result, "usage"), content_of(result))
            self._parsed = result
        return self._parsed

    def raw_response(self) -> Any:
        """The SDK's ``LegacyAPIResponse``, billed (or, for a stream, billed as parsed)."""
        self.parsed()
        return self.raw

    def bill_json(self) -> None:
        """Bill a complete body from its JSON, without building the SDK's objects."""
        try:
            data = json.loads(self.raw.http_response.content)
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        self.out.done(data.get("usage"), content_of(data))


def observe(stream: Any, out: Outcome) -> Iterator[Any]:
    tally = Tally(out)
    failure: Exception | None = None
    try:
        try:
            for chunk in stream:
                if tally.keep(chunk):
                    yield chunk
            tally.finished = True
        except Exception as exc:
            failure = exc
        if failure is not None:
            raise as_openai(tally.error(failure)) from None  # no __context__ kept
    finally:
        tally.close()


async def aobserve(stream: Any, out: Outcome) -> AsyncIterator[Any]:
    tally = Tally(out)
    failure: Exception | None = None
    try:
        try:
            async for chunk in stream:
                if tally.keep(chunk):
                    yield chunk
            tally.finished = True
        except Exception as exc:
            failure = exc
        if failure is not None:
            raise as_openai(tally.error(failure)) from None
    finally:
        tally.close()


# -- server-sent events, as bytes ---------------------------------------------------------------


class _StreamEventError(Exception):
    """An ``{"error": ...}`` event in the upstream's stream (its message is scrubbed later)."""


class EventFilter:
    """Splits SSE bytes into events; bills each and keeps those the caller should see."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self._buf = b""

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        out = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            event = buf[start : end + 2]
            if self._keep(event):
                out.append(event)
            start = end + 2
        self._buf = buf[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest if rest.strip() and self._keep(rest) else b""

    def _keep(self, event: bytes) -> bool:
        data = [
            line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
        ]
        if not data:
            return True  # a comment or keep-alive
        payload = b"\n".join(data)
        if payload.startswith(b"[DONE]"):
            return True
        try:
            chunk = json.loads(payload)
        except ValueError:
            return True
        if not isinstance(chunk, dict):
            return True
        if chunk.get("error"):
            err = chunk["error"]
            msg = err.get("message") if isinstance(err, dict) else err
            raise self.tally.error(_StreamEventError(str(msg or "error event in the stream")))
        return self.tally.keep(chunk)


def _lines(texts: Iterator[str]) -> Iterator[str]:
    pending = ""
    for text in texts:
        pending += text
        *whole, pending = pending.split("\n")
        yield from (line.removesuffix("\r") for line in whole)
    if pending:
        yield pending


class _Common:
    """Attributes shared by the sync and async streamed responses (as the SDK's)."""

    http_response: Any
    retries_taken = 0

    def __init__(self, call: Call) -> None:
        self._call = call
        self.http_response = call.raw.http_response
        self._tally = Tally(call.out) if call.stream else None
        self._started = False
        self._content: bytes | None = None
        if not call.stream:
            call.bill_json()

    def __repr__(self) -> str:
        return f"<repolib streamed response [{self.status_code}]>"

    @property
    def headers(self) -> Any:
        return self.http_response.headers

    @property
    def http_request(self) -> Any:
        return self.http_response.request

    @property
    def status_code(self) -> int:
        return int(self.http_response.status_code)

    @property
    def url(self) -> Any:
        return self.http_response.url

    @property
    def method(self) -> str:
        return str(self.http_request.method)

    @property
    def http_version(self) -> str:
        return str(self.http_response.http_version)

    @property
    def elapsed(self) -> Any:
        return self.http_response.elapsed

    @property
    def is_closed(self) -> bool:
        return bool(self.http_response.is_closed)

    @property
    def request_id(self) -> str | None:
        value = self.headers.get("x-request-id")
        return None if value is None else str(value)

    @property
    def billed_tokens(self) -> tuple[int, int] | None:
        """(prompt, completion) tokens charged for this call, once known (repolib's own)."""
        return self._call.out.billed

    def _start(self) -> None:
        if self._started:
            raise ConfigError("this response's stream was already read")
        self._started = True

    def _chunks(self, data: bytes, size: int | None) -> list[bytes]:
        if not size:
            return [data] if data else []
        return [data[i : i + size] for i in range(0, len(data), size)]

    def _failure(self, exc: Exception) -> BaseException:
        assert self._tally is not None
        err = exc if isinstance(exc, UpstreamError) else self._tally.error(exc)
        return as_openai(err)


class StreamedResponse(_Common):
    """Like the SDK's ``APIResponse`` from ``with_streaming_response``; see the module doc."""

    def parse(self, *, to: Any = None) -> Any:
        if to is not None:
            return self._call.raw.parse(to=to)
        if self._call.stream:
            self._start()
        return self._call.parsed()

    def read(self) -> bytes:
        if self._content is None:
            self._content = (
                self.http_response.content if not self._call.stream else b"".join(self.iter_bytes())
            )
        return self._content

    def text(self) -> str:
        return self.read().decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.read())

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        if not self._call.stream:
            yield from self._chunks(self.read(), chunk_size)
            return
        self._start()
        tally = self._tally
        assert tally is not None
        events = EventFilter(tally)
        failure: BaseException | None = None
        try:
            try:
                for data in self.http_response.iter_bytes():
                    kept = events.feed(data)
                    if kept:
                        yield kept
                tail = events.flush()
                if tail:
                    yield tail
                tally.finished = True
            except Exception as exc:
                failure = self._failure(exc)
            if failure is not None:
                raise failure from None
        finally:
            tally.close()
            self.http_response.close()

    def iter_text(self, chunk_size: int | None = None) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        for data in self.iter_bytes(chunk_size):
            text = decoder.decode(data)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def iter_lines(self) -> Iterator[str]:
        return _lines(self.iter_text())

    def close(self) -> None:
        if self._tally is not None and not self._started:
            self._started = True
            self._tally.close()
        self.http_response.close()


class AsyncStreamedResponse(_Common):
    """Like the SDK's ``AsyncAPIResponse`` from ``with_streaming_response``."""

    async def parse(self, *, to: Any = None) -> Any:
        if to is not None:
            return self._call.raw.parse(to=to)
        if self._call.stream:
            self._start()
        return self._call.parsed()

    async def read(self) -> bytes:
        if self._content is None:
            if not self._call.stream:
                self._content = self.http_response.content
            else:
                self._content = b"".join([b async for b in self.iter_bytes()])
        return self._content

    async def text(self) -> str:
        return (await self.read()).decode("utf-8")

    async def json(self) -> Any:
        return json.loads(await self.read())

    async def iter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        if not self._call.stream:
            for piece in self._chunks(await self.read(), chunk_size):
                yield piece
            return
        self._start()
        tally = self._tally
        assert tally is not None
        events = EventFilter(tally)
        failure: BaseException | None = None
        try:
            try:
                async for data in self.http_response.aiter_bytes():
                    kept = events.feed(data)
                    if kept:
                        yield kept
                tail = events.flush()
                if tail:
                    yield tail
                tally.finished = True
            except Exception as exc:
                failure = self._failure(exc)
            if failure is not None:
                raise failure from None
        finally:
            tally.close()  # before the await: a cancelled task still settles the budget
            await self.http_response.aclose()

    async def iter_text(self, chunk_size: int | None = None) -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        async for data in self.iter_bytes(chunk_size):
            text = decoder.decode(data)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    async def iter_lines(self) -> AsyncIterator[str]:
        pending = ""
        async for text in self.iter_text():
            pending += text
            *whole, pending = pending.split("\n")
            for line in whole:
                yield line.removesuffix("\r")
        if pending:
            yield pending

    async def close(self) -> None:
        if self._tally is not None and not self._started:
            self._started = True
            self._tally.close()
        await self.http_response.aclose()


class ResponseContext:
    """``with ....with_streaming_response.create(...) as response:`` (the call runs on enter)."""

    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start
        self._response: Any = None

    def __enter__(self) -> Any:
        self._response = self._start()
        return self._response

    def __exit__(self, *exc: object) -> None:
        if self._response is not None:
            self._response.close()


class AsyncResponseContext:
    """``async with ....with_streaming_response.create(...) as response:``."""

    def __init__(self, start: Callable[[], Awaitable[Any]]) -> None:
        self._start = start
        self._response: Any = None

    async def __aenter__(self) -> Any:
        self._response = await self._start()
        return self._response

    async def __aexit__(self, *exc: object) -> None:
        if self._response is not None:
            await self._response.close()


# -- answers made here (models.list) ------------------------------------------------------------


class LocalResponse:
    """A raw response for what repolib answers itself (the model list): same attributes."""

    retries_taken = 0

    def __init__(self, parsed: Any, path: str) -> None:
        self._parsed = parsed
        body = json.dumps(parsed.model_dump(mode="json")).encode()
        self.http_response = _http.Response(
            200,
            headers={"content-type": "application/json"},
            content=body,
            request=_http.Request("GET", f"https://repolib.invalid/v1/{path}"),
        )

    def __repr__(self) -> str:
        return "<repolib local response [200]>"

    headers = _Common.headers
    http_request = _Common.http_request
    status_code = _Common.status_code
    url = _Common.url
    method = _Common.method
    http_version = _Common.http_version
    elapsed = _Common.elapsed
    is_closed = _Common.is_closed
    request_id = _Common.request_id

    def parse(self, *, to: Any = None) -> Any:
        return self._parsed

    @property
    def content(self) -> bytes:
        return bytes(self.http_response.content)

    @property
    def text(self) -> str:
        return self.content.decode()

    def read(self) -> bytes:
        return self.content

    def json(self) -> Any:
        return json.loads(self.content)

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        yield self.content

    def iter_lines(self) -> Iterator[str]:
        yield from self.content.decode().splitlines()

    def close(self) -> None:
        return None


class StreamedLocalResponse(LocalResponse):
    """For ``with_streaming_response``, where ``text`` is a method (as ``APIResponse``'s)."""

    def text(self) -> str:  # type: ignore[override]
        return self.content.decode()


class AsyncLocalResponse(LocalResponse):
    """The async twin, whose reading methods are coroutines (as ``AsyncAPIResponse``'s).

    Its overrides turn sync methods into coroutines, which mypy reports as incompatible
    ([override]): that is the SDK's own shape (``AsyncAPIResponse`` beside ``APIResponse``)."""

    async def parse(self, *, to: Any = None) -> Any:
        return self._parsed

    async def read(self) -> bytes:  # type: ignore[override]
        return self.content

    async def text(self) -> str:  # type: ignore[override]
        return self.content.decode()

    async def json(self) -> Any:
        return json.loads(self.content)

    async def iter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:  # type: ignore[override]
        yield self.content

    async def iter_lines(self) -> AsyncIterator[str]:  # type: ignore[override]
        for line in self.content.decode().splitlines():
            yield line

    async def close(self) -> None:  # type: ignore[override]
        return None
