"""One table for what an AI error means to a client: HTTP status, OpenAI error type and class.

``describe`` maps each error the AI facade raises to the answer an OpenAI-compatible gateway
gives (``repolib serve`` answers exactly that); ``as_openai`` turns it into its *twin*, an
instance of a class that derives from both the repolib error and the matching ``openai``
exception, so code written for the SDK catches what ``repo.ai`` raises::

    PolicyViolation  -> openai.PermissionDeniedError   403
    RateLimited      -> openai.RateLimitError          429 (Retry-After)
    BudgetExceeded   -> openai.RateLimitError          429 (Retry-After)
    ModelNotFound    -> openai.NotFoundError           404
    ConfigError      -> openai.BadRequestError         400 (a request repolib refuses to build)
    InvalidKey       -> openai.AuthenticationError     401
    UpstreamError    -> by the upstream's answer: 400/413/422 stay (the request was bad),
                        429 stays, anything else is 502 (openai.InternalServerError);
                        a timeout is 504 (openai.APITimeoutError in-process), an unreachable
                        endpoint 502 (openai.APIConnectionError in-process)

A twin's ``request`` and ``response`` are synthetic (``https://repolib.invalid/...``, no
headers but Retry-After): nothing reachable from it holds an upstream key or a caller header.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import openai

from ..exceptions import (
    AccessDenied,
    BudgetExceeded,
    ConfigError,
    InvalidKey,
    ModelNotFound,
    PolicyViolation,
    RateLimited,
    RepolibError,
    UpstreamError,
)

# The HTTP library the installed SDK builds its errors from (httpx, or httpx2 in openai 3).
_http: Any = vars(openai._exceptions).get("httpx2") or vars(openai._exceptions)["httpx"]

_PASSED_THROUGH = {400, 413, 422, 429}  # upstream statuses that are the request's own fault
_SDK_BY_STATUS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


@dataclasses.dataclass(frozen=True)
class Described:
    """How a gateway answers an error: ``{"error": {"message", "type", "code"}}`` + status."""

    status: int
    type: str
    code: str
    message: str
    retry_after: float | None = None

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "code": self.code, "param": None}
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, math.ceil(self.retry_after)))}


def describe(exc: BaseException) -> Described | None:
    """The answer for one of repolib's errors; None for anything else (a server error)."""
    msg = str(exc)
    if isinstance(exc, InvalidKey):
        return Described(401, "authentication_error", "invalid_api_key", msg)
    if isinstance(exc, RateLimited):
        return Described(429, "rate_limit_error", "rate_limit_exceeded", msg, exc.retry_after)
    if isinstance(exc, BudgetExceeded):
        return Described(429, "rate_limit_error", "token_budget_exceeded", msg, exc.retry_after)
    if isinstance(exc, PolicyViolation):
        return Described(403, "permission_error", "policy_violation", msg)
    if isinstance(exc, AccessDenied):
        return Described(403, "permission_error", "access_denied", msg)
    if isinstance(exc, ModelNotFound):
        return Described(404, "not_found_error", "model_not_found", msg)
    if isinstance(exc, UpstreamError):
        return _describe_upstream(exc)
    if isinstance(exc, ConfigError):
        return Described(400, "invalid_request_error", "invalid_request", msg)
    return None


def _describe_upstream(exc: UpstreamError) -> Described:
    msg = str(exc)
    if exc.timed_out:
        return Described(504, "upstream_error", "upstream_timeout", msg)
    if exc.status is None:
        return Described(502, "upstream_error", "upstream_unreachable", msg)
    code = f"upstream_{exc.status}"
    if exc.status == 429:
        return Described(429, "rate_limit_error", code, msg, exc.retry_after or 1.0)
    if exc.status in _PASSED_THROUGH:
        return Described(exc.status, "invalid_request_error", code, msg)
    return Described(502, "upstream_error", code, msg)


# -- twins ----------------------------------------------------------------------------------

_twins: dict[tuple[type, type], type] = {}


def _sdk_class(exc: RepolibError, d: Described) -> type[openai.OpenAIError]:
    if isinstance(exc, UpstreamError) and d.status == 504:
        return openai.APITimeoutError
    if isinstance(exc, UpstreamError) and exc.status is None:
        return openai.APIConnectionError
    if d.status >= 500:
        return openai.InternalServerError
    return _SDK_BY_STATUS.get(d.status, openai.APIStatusError)


def twin_class(base: type[RepolibError], sdk: type[openai.OpenAIError]) -> type[Any]:
    """The class deriving from ``base`` and ``sdk`` (one per pair, named as ``base``)."""
    cls = _twins.get((base, sdk))
    if cls is None:
        cls = type(
            base.__name__,
            (base, sdk),
            {
                "__module__": __name__,
                "__qualname__": base.__name__,
                "__doc__": f"{base.__name__}, also openai.{sdk.__name__} for SDK code.",
                "__init__": _twin_init,
                "__reduce__": _twin_reduce,
                "__str__": _twin_str,
            },
        )
        _twins[(base, sdk)] = cls
    return cls


def _twin_init(self: Any, message: str, described: Described, state: dict[str, Any]) -> None:
    request = _http.Request("POST", "https://repolib.invalid/v1")
    if isinstance(self, openai.APIStatusError):
        response = _http.Response(
            described.status, headers=described.headers(), json=described.body(), request=request
        )
        openai.APIStatusError.__init__(
            self, message, response=response, body=described.body()["error"]
        )
    elif isinstance(self, openai.APIConnectionError):
        openai.APIConnectionError.__init__(self, message=message, request=request)
    self.__dict__.update(state)
    self.described = described


def _twin_str(self: Any) -> str:
    return str(self.message)


def _twin_reduce(self: Any) -> tuple[Any, ...]:
    base = next(c for c in type(self).__mro__[1:] if issubclass(c, RepolibError))
    sdk = next(c for c in type(self).__mro__[1:] if issubclass(c, openai.OpenAIError))
    state = {
        k: v
        for k, v in self.__dict__.items()
        if k
        not in (
            "request",
            "response",
            "body",
            "message",
            "described",
            "code",
            "param",
            "type",
            "status_code",
            "request_id",
        )
    }
    return _rebuild, (base, sdk, self.message, self.described, state)


def _rebuild(
    base: type[RepolibError],
    sdk: type[openai.OpenAIError],
    message: str,
    described: Described,
    state: dict[str, Any],
) -> BaseException:
    cls = twin_class(base, sdk)
    obj: BaseException = cast(BaseException, cls.__new__(cls, message))
    _twin_init(obj, message, described, state)
    return obj


def as_openai(exc: BaseException) -> BaseException:
    """``exc`` as its twin (itself when it already is one, or has no OpenAI meaning)."""
    if isinstance(exc, openai.OpenAIError) or not isinstance(exc, RepolibError):
        return exc
    if isinstance(exc, AccessDenied):  # stays a PermissionError with errno; 403 in a server
        return exc
    d = describe(exc)
    if d is None:
        return exc
    cls = twin_class(type(exc), _sdk_class(exc, d))
    twin: BaseException = cast(BaseException, cls.__new__(cls, d.message))
    _twin_init(twin, d.message, d, dict(exc.__dict__))
    return twin.with_traceback(exc.__traceback__)


F = TypeVar("F", bound=Callable[..., Any])


def sdk_errors(fn: F) -> F:
    """Raise repolib errors from ``fn`` as their twins (the traceback kept, no chain)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RepolibError as exc:
            failure: BaseException = exc
        raise as_openai(failure) from None

    return cast(F, wrapper)


def async_sdk_errors(fn: Callable[..., Awaitable[Any]]) -> Any:
    """``sdk_errors`` for coroutine functions."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except RepolibError as exc:
            failure: BaseException = exc
        raise as_openai(failure) from None

    return wrapper
