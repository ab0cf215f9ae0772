"""The upstream call for bytes that are passed on: one HTTP request, no SDK request machinery.

``with_streaming_response`` (and so ``repolib serve``) hands the upstream's bytes on as they
come; building the SDK's request objects for that costs more than the rest of the gateway. So
these calls send the plan's final body — the same body, checked by the same policy — with a
plain HTTP client, and raise the SDK's own exception classes on failure, so the retry, fallback
and error code in core.py treats both kinds of call alike. ``DirectRaw.parse()`` still gives
the SDK's types, built by the SDK from the response.
"""

from __future__ import annotations

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

    def __init__(self, response: Any, up: Upstream, cast_to: Any, chunk: Any,
                 stream: bool) -> None:
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
    message = message if isinstance(message, str) and message else \
        f"HTTP {response.status_code}: {response.text[:200]}"
    status = response.status_code
    cls = _SDK_BY_STATUS.get(status, openai.InternalServerError if status >= 500
                             else openai.APIStatusError)
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
        request = up.request(path, plan)
        try:
            response = await up.http.send(request, stream=True)
        except _http.TimeoutException:
            raise openai.APITimeoutError(request=request) from None
        except _http.TransportError:
            raise openai.APIConnectionError(request=request) from None
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

    return call
