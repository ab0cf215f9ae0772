"""The upstream call for bytes that are passed on: one HTTP request, no SDK request machinery.

``with_streaming_response`` (and so ``repolib serve``) hands the upstream's bytes on as they
come; building the SDK's request objects for that costs more than the rest of the gateway. So
these calls send the plan's final body — the same body, checked by the same policy — with a
plain HTTP client, and raise the SDK's own exception classes on failure, so the retry, fallback
and error code in core.py treats both kinds of call alike. ``DirectRaw.parse()`` still gives
the SDK's types, built by the SDK from the response.

Async calls use httpx (the SDK's HTTP library) unless a long-running process that owns its event
loop — ``repolib serve`` — opts into aiohttp with ``use_aiohttp()``: on this path it costs a
quarter of httpx's time per request. That process closes the sessions with ``aclose_all()``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from .core import Upstream
from .openai_errors import _SDK_BY_STATUS, _http
from .policy import Plan

CHAT = ("/chat/completions", ChatCompletion, ChatCompletionChunk)
EMBEDDINGS = ("/embeddings", CreateEmbeddingResponse, None)


class DirectRaw:
    """An upstream response like the SDK's raw one: ``http_response`` and ``parse()``."""

    def __init__(self, response: Any, up: Upstream, cast_to: Any, chunk: Any, stream: bool) -> None:
        self.http_response = response
        self._up, self._cast_to, self._chunk, self._stream = up, cast_to, chunk, stream
        self._parsed: Any = None

    def parse(self, *, to: Any = None) -> Any:
        if to is not None:
            return self._build(to)
        if self._parsed is None:
            self._parsed = self._build(None)
        return self._parsed

    def _build(self, to: Any) -> Any:
        sdk = self._up.sdk
        if self._stream:
            cls = openai.AsyncStream if self._up.is_async else openai.Stream
            return cls(cast_to=to or self._chunk, response=self.http_response, client=sdk)
        data = self.http_response.json()
        process = getattr(sdk, "_process_response_data", None)
        if process is None:  # pragma: no cover - an SDK without it: validate instead
            return (to or self._cast_to).model_validate(data)
        return process(data=data, cast_to=to or self._cast_to, response=self.http_response)


def _status_error(response: Any) -> openai.APIStatusError:
    try:
        body = response.json()
    except ValueError:
        body = None
    err = body.get("error", body) if isinstance(body, dict) else body
    message = err.get("message") if isinstance(err, dict) else None
    message = (
        message
        if isinstance(message, str) and message
        else f"HTTP {response.status_code}: {response.text[:200]}"
    )
    status = response.status_code
    cls = _SDK_BY_STATUS.get(
        status, openai.InternalServerError if status >= 500 else openai.APIStatusError
    )
    return cls(message, response=response, body=err)


def send(kind: tuple[str, Any, Any], stream: bool) -> Any:
    """A sender for core.run: POST the plan, raise the SDK's errors, read a whole body."""
    path, cast_to, chunk = kind

    def call(up: Upstream, plan: Plan) -> DirectRaw:
        request = up.request(path, plan)
        try:
            response = up.http.send(request, stream=True)
        except _http.TimeoutException:
            raise openai.APITimeoutError(request=request) from None
        except _http.TransportError:
            raise openai.APIConnectionError(request=request) from None
        try:
            if response.status_code >= 400 or not stream:
                response.read()
        except _http.TimeoutException:
            response.close()
            raise openai.APITimeoutError(request=request) from None
        except _http.TransportError:
            response.close()
            raise openai.APIConnectionError(request=request) from None
        if response.status_code >= 400:
            response.close()
            raise _status_error(response)
        return DirectRaw(response, up, cast_to, chunk, stream)

    return call


def asend(kind: tuple[str, Any, Any], stream: bool) -> Any:
    """``send`` for async clients."""
    path, cast_to, chunk = kind

    async def call(up: Upstream, plan: Plan) -> DirectRaw:
        if _aiohttp is not None:
            return await _aiohttp_call(up, plan, path, cast_to, chunk, stream)
        request = up.request(path, plan)
        try:
            response = await up.http.send(request, stream=True)
        except _http.TimeoutException:
            raise openai.APITimeoutError(request=request) from None
        except _http.TransportError:
            raise openai.APIConnectionError(request=request) from None
        return await _received(response, request, up, cast_to, chunk, stream)

    return call


# -- aiohttp, for repolib serve ----------------------------------------------------------------

_aiohttp: Any = None
_sessions: list[Any] = []


def use_aiohttp() -> bool:
    """Send async direct calls with aiohttp from now on (False when it is not installed)."""
    global _aiohttp
    try:
        import aiohttp
    except ImportError:
        return False
    _aiohttp = aiohttp
    return True


async def aclose_all() -> None:
    """Close the aiohttp sessions opened so far (at the end of the process's event loop)."""
    sessions, _sessions[:] = list(_sessions), []
    for session in sessions:
        if not session.closed:
            await session.close()


def _session(up: Upstream) -> Any:
    session = up.state.get("aiohttp")
    if session is None or session.closed:
        # Proxy variables are read once here, not per request (trust_env looks them up, and
        # ~/.netrc, in a thread on every call).
        up.state["proxy"] = _proxy_for(up.base_url)
        session = _aiohttp.ClientSession(
            trust_env=False, connector=_aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
        )
        up.state["aiohttp"] = session
        _sessions.append(session)
    return session


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (HTTP(S)_PROXY, NO_PROXY), as httpx would."""
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class _AioResponse:
    """An aiohttp response with the httpx-like face the rest of the path reads."""

    def __init__(self, response: Any, request: Any, started: float) -> None:
        self._r = response
        self.request = request  # made here, without the key: never the one sent
        self.status_code = int(response.status)
        self.url = request.url
        self.elapsed = dt.timedelta(seconds=time.monotonic() - started)
        self._content: bytes | None = None
        self._headers: Any = None

    @property
    def headers(self) -> Any:
        if self._headers is None:
            self._headers = _http.Headers(list(self._r.headers.items()))
        return self._headers

    @property
    def http_version(self) -> str:
        return f"HTTP/{self._r.version.major}.{self._r.version.minor}"

    @property
    def is_closed(self) -> bool:
        return bool(self._r.closed)

    @property
    def content(self) -> bytes:
        if self._content is None:
            raise RuntimeError("the response body has not been read")
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        import json

        return json.loads(self.content)

    async def aread(self) -> bytes:
        if self._content is None:
            try:
                self._content = await self._r.read()
            except asyncio.TimeoutError:
                raise _http.ReadTimeout("timed out reading the response") from None
            except _aiohttp.ClientError as exc:
                raise _http.ReadError(type(exc).__name__) from None
        return self._content

    async def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        if self._content is not None:
            yield self._content
            return
        try:
            async for data in self._r.content.iter_any():
                yield data
        except asyncio.TimeoutError:
            raise _http.ReadTimeout("timed out reading the stream") from None
        except _aiohttp.ClientError as exc:
            raise _http.ReadError(type(exc).__name__) from None

    async def aclose(self) -> None:
        if self._r.content.at_eof():
            self._r.release()
        else:
            self._r.close()  # mid-body: drop the connection, which ends the upstream's work


async def _aiohttp_call(
    up: Upstream, plan: Plan, path: str, cast_to: Any, chunk: Any, stream: bool
) -> DirectRaw:
    url = up.base_url + path
    request = up.state.get(path)  # what the response shows as its request: never the key
    if request is None:
        request = up.state[path] = _http.Request(
            "POST", url, headers={"authorization": "Bearer ***"}
        )
    seconds = plan.timeout if isinstance(plan.timeout, int | float) else up.timeout
    timeout = _aiohttp.ClientTimeout(total=None, connect=seconds, sock_read=seconds)
    started = time.monotonic()
    try:
        session = _session(up)
        response = await session.post(
            url,
            data=up.body(plan),
            headers=up.headers(),
            timeout=timeout,
            allow_redirects=False,
            proxy=up.state.get("proxy"),
        )
    except asyncio.TimeoutError:
        raise openai.APITimeoutError(request=request) from None
    except _aiohttp.ClientError:
        raise openai.APIConnectionError(request=request) from None
    return await _received(
        _AioResponse(response, request, started), request, up, cast_to, chunk, stream
    )


async def _received(
    response: Any, request: Any, up: Upstream, cast_to: Any, chunk: Any, stream: bool
) -> DirectRaw:
    """An async response whose headers arrived (httpx's, or aiohttp's in httpx's shape): read
    the body unless it streams, and turn an error status or a broken read into the SDK's
    error, as the SDK itself does."""
    try:
        if response.status_code >= 400 or not stream:
            await response.aread()
    except _http.TimeoutException:
        await response.aclose()
        raise openai.APITimeoutError(request=request) from None
    except _http.TransportError:
        await response.aclose()
        raise openai.APIConnectionError(request=request) from None
    if response.status_code >= 400:
        await response.aclose()
        raise _status_error(response)
    return DirectRaw(response, up, cast_to, chunk, stream)
