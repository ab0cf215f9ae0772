"""The request loop under ``repo.ai``, ``repo.aio`` and ``repolib serve``: one enforcement path.

``_Core.begin`` checks the key's policy on the final upstream body and reserves the budget;
``run`` / ``arun`` send it to the first (resource, upstream model) pair that answers, retrying
with backoff on connection errors, timeouts, 429 and 5xx, then falling over to the next pair
(a failing resource cools down). What comes back is the SDK's raw response
(``LegacyAPIResponse``, the body unread for streams), so a caller may parse it into the SDK's
types or pass its bytes on; ``Outcome`` and ``Tally`` bill it either way. Upstream keys never
leave this module: errors carry status and message only, and the raw response's request has its
Authorization header masked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from .. import errors
from ..exceptions import BackendUnavailable, ConfigError, ModelNotFound, UpstreamError
from ..keys import AIPolicy
from . import ledger
from .policy import Plan, check_model, estimate_tokens

try:
    import openai
    from openai.pagination import AsyncPage, SyncPage
    from openai.types import Model
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise BackendUnavailable(
        'the AI side needs the openai SDK: pip install "repolib[llm]"'
    ) from exc

from ..procstate import ProcessLocal
from .openai_errors import _http

__all__ = ["AsyncPage", "Core", "Model", "Outcome", "Route", "SyncPage", "Tally", "arun", "run"]

RETRIES = 1  # per (resource, model) pair, before falling over to the next
BACKOFF_S = 0.25
COOLDOWN_S = 30.0
DEFAULT_TIMEOUT_S = 120.0
REVALIDATE_S = 2.0

# (catalog, repository, resource) -> when its cooldown ends; a forked child starts with none
_cooldowns: ProcessLocal[tuple[str, str, str], float] = ProcessLocal()


@dataclasses.dataclass(frozen=True)
class Route:
    resource: str
    upstream: str


@dataclasses.dataclass(repr=False)
class Upstream:
    """One LLM resource as this process talks to it: the SDK client, and a plain HTTP client
    for calls whose bytes are passed on (``with_streaming_response``, ``repolib serve``)."""

    sdk: Any
    base_url: str
    api_key: str
    secrets: tuple[str, ...]
    timeout: float
    is_async: bool
    loop: Any
    updated_at: float
    checked: float
    _http: Any = None
    state: dict[str, Any] = dataclasses.field(default_factory=dict)  # a transport's own

    def __repr__(self) -> str:
        return f"<upstream {self.base_url}>"

    @property
    def http(self) -> Any:
        if self._http is None:
            cls = _http.AsyncClient if self.is_async else _http.Client
            self._http = cls(timeout=self.timeout, follow_redirects=False)
        return self._http

    def headers(self) -> dict[str, str]:
        return {
            "authorization": f"Bearer {self.api_key}",
            "content-type": "application/json",
            "accept": "application/json",
        }

    def body(self, plan: Plan) -> bytes:
        """``plan``'s final body, as JSON."""
        try:
            return json.dumps(plan.body, default=_jsonable).encode()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"the request cannot be sent as JSON: {exc}") from None

    def request(self, path: str, plan: Plan) -> Any:
        """The HTTP request of ``plan``: its final body as JSON, the resource's key."""
        timeout = plan.timeout if plan.timeout is not None else self.timeout
        return self.http.build_request(
            "POST",
            self.base_url + path,
            content=self.body(plan),
            timeout=timeout,
            headers=self.headers(),
        )


def _jsonable(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(exclude_unset=True)
    raise TypeError(f"{type(obj).__name__} is not JSON")


class Core:
    """What the sync and async facades share: routing, policy, clients, usage."""

    def __init__(self, repo: Any) -> None:
        self.repo = repo
        self._clients: dict[tuple[str, bool], Upstream] = {}
        self._catalogue: tuple[float, list[tuple[str, str, str]]] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<repo.ai {self.repo.name!r}>"

    # -- routing ----------------------------------------------------------------------------

    def catalogue(self) -> list[tuple[str, str, str]]:
        """(name, resource, upstream model) for every model and alias in scope (read from the
        catalog at most every ``REVALIDATE_S`` seconds, like the key itself)."""
        now = self.repo.monotonic()
        cached = self._catalogue
        if cached is not None and now - cached[0] < REVALIDATE_S:
            return cached[1]
        out = []
        for r in self.repo.resources(kind="llm"):
            for m in r.definition["models"]:
                out.append((m, r.name, m))
            for alias, target in r.definition["aliases"].items():
                out.append((alias, r.name, target))
        self._catalogue = (now, out)
        return out

    def routes(self, model: str) -> list[Route]:
        found = [Route(res, up) for name, res, up in self.catalogue() if name == model]
        if not found:
            raise ModelNotFound(
                f"no LLM resource of repository {self.repo.name!r} serves "
                f"model {model!r}; `repolib ai models {self.repo.name}` lists "
                "them"
            )
        now = self.repo.monotonic()
        fresh = [r for r in found if (_cooldowns.get(self._cool_key(r)) or 0) <= now]
        cooling = [r for r in found if r not in fresh]
        return fresh + cooling  # cooling resources only when nothing else is left

    def _cool_key(self, route: Route) -> tuple[str, str, str]:
        return (self.repo.catalog_location, self.repo.name, route.resource)

    def cool(self, route: Route) -> None:
        _cooldowns.put(self._cool_key(route), self.repo.monotonic() + COOLDOWN_S)

    def model_names(self) -> list[tuple[str, str]]:
        policy = self.policy()
        seen: dict[str, str] = {}
        for name, res, _ in self.catalogue():
            if policy.models is None or name in policy.models:
                seen.setdefault(name, res)
        return sorted(seen.items())

    # -- policy -----------------------------------------------------------------------------

    def policy(self) -> AIPolicy:
        self.repo.ensure_valid(REVALIDATE_S)
        policy: AIPolicy | None = self.repo.ai_policy
        if policy is None:
            check_model("", None)  # raises the "AI is off" PolicyViolation
        assert policy is not None
        return policy

    def begin(
        self, model: Any, make_plan: Callable[[str, AIPolicy], Plan]
    ) -> tuple[list[Route], list[Plan], ledger.Reservation | None]:
        if not isinstance(model, str) or not model:
            raise ConfigError("model must be a model name or alias")
        policy = self.policy()
        check_model(model, policy)
        routes = self.routes(model)
        plans = [make_plan(r.upstream, policy) for r in routes]
        reserve = max(p.reserve for p in plans)
        res = ledger.reserve(
            self.repo.catalog_store, self.repo.key_id or "admin", policy, reserve, self.repo.now()
        )
        return routes, plans, res

    # -- clients ----------------------------------------------------------------------------

    def upstream(self, resource: str, is_async: bool) -> Upstream:
        """A resource's SDK client and HTTP client (an async one is bound to the running event
        loop, whose connections another loop cannot use: ``asyncio.run`` twice gets two).

        Rebuilt when the resource changes (new credentials or options), as seen at most
        ``REVALIDATE_S`` seconds later.
        """
        loop = asyncio.get_running_loop() if is_async else None
        key = (resource, is_async)
        now = time.monotonic()
        with self._lock:
            cached = self._clients.get(key)
        if cached is not None and cached.loop is loop and now - cached.checked < REVALIDATE_S:
            return cached
        info = self.repo.resource(resource)
        if cached is not None and cached.loop is loop and cached.updated_at == info.updated_at:
            cached.checked = now
            return cached
        resolved = self.repo.resolve(resource)
        api_key = resolved.credentials.get("api_key") or "no-key"
        options = resolved.info.definition.get("options", {})
        timeout = float(options.get("timeout", DEFAULT_TIMEOUT_S))
        base_url = resolved.info.definition["base_url"]
        cls = openai.AsyncOpenAI if is_async else openai.OpenAI
        sdk = cls(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            timeout=timeout,
            organization=None,
            project=None,
        )
        up = Upstream(
            sdk,
            base_url,
            api_key,
            (api_key,) if api_key != "no-key" else (),
            timeout,
            is_async,
            loop,
            info.updated_at,
            now,
        )
        with self._lock:
            self._clients[key] = up
        return up

    def client(self, resource: str, is_async: bool) -> tuple[Any, tuple[str, ...]]:
        """The resource's SDK client and the secrets to scrub from what it says."""
        up = self.upstream(resource, is_async)
        return up.sdk, up.secrets

    # -- outcomes ---------------------------------------------------------------------------

    def record(
        self,
        route: Route,
        model: str,
        started: float,
        *,
        prompt: int = 0,
        completion: int = 0,
        estimated: bool = False,
        error: bool = False,
    ) -> None:
        self.repo.record_usage(
            route.resource,
            model=model,
            requests=1,
            prompt_tokens=prompt,
            completion_tokens=completion,
            errors=1 if error else 0,
            latency_ms=(time.monotonic() - started) * 1000,
            estimated=1 if estimated else 0,
        )

    def settle(self, res: ledger.Reservation | None, actual: int | None) -> None:
        ledger.settle(self.repo.catalog_store, res, actual)


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError | openai.APITimeoutError)


def upstream_error(exc: BaseException, secrets: tuple[str, ...], where: str) -> UpstreamError:
    """Status and message only: no request, headers or key (and no chained cause)."""
    status = getattr(exc, "status_code", None)
    timed_out = isinstance(exc, openai.APITimeoutError | _http.TimeoutException | TimeoutError)
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        msg = body.get("message") if isinstance(body, dict) else None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            msg = body["error"].get("message") or msg
        msg = msg or exc.message
    elif timed_out:
        msg = "request timed out"
    elif isinstance(exc, openai.APIConnectionError | _http.TransportError):
        msg = (
            "cannot reach the endpoint"
            if isinstance(exc, openai.APIConnectionError)
            else f"connection lost ({type(exc).__name__})"
        )
    else:
        msg = str(exc) or type(exc).__name__
    msg = errors.scrub(str(msg), secrets).splitlines()[0][:500] if msg else "error"
    return UpstreamError(
        f"{where}: {msg}" + (f" (HTTP {status})" if status else ""), status, timed_out=timed_out
    )


def field(obj: Any, name: str) -> Any:
    """``obj.name`` of an SDK object, or ``obj[name]`` of the same thing as parsed JSON."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def usage_numbers(usage: Any) -> tuple[int, int] | None:
    if usage is None:
        return None
    p = field(usage, "prompt_tokens") or 0
    c = field(usage, "completion_tokens") or 0
    return int(p), int(c)


def content_of(resp: Any) -> str:
    parts = []
    for ch in field(resp, "choices") or []:
        msg = field(ch, "message")
        text = field(msg, "content") if msg is not None else None
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


class Outcome:
    """Charges one finished call, once: usage counters and the budget ledger."""

    def __init__(
        self,
        core: Core,
        route: Route,
        model: str,
        plan: Plan,
        res: ledger.Reservation | None,
        started: float,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.core, self.route, self.model, self.plan = core, route, model, plan
        self.res, self.started, self.secrets = res, started, secrets
        self.billed: tuple[int, int] | None = None  # (prompt, completion) once charged

    def done(self, usage: Any, text: str) -> None:
        if self.billed is not None:
            return
        numbers = usage_numbers(usage)
        if numbers is None:  # no usage from the server: estimate, and say so
            numbers = (self.plan.prompt_estimate, estimate_tokens(text))
            estimated = True
        else:
            estimated = False
        self.billed = numbers
        self.core.record(
            self.route,
            self.model,
            self.started,
            prompt=numbers[0],
            completion=numbers[1],
            estimated=estimated,
        )
        self.core.settle(self.res, sum(numbers))

    def cut(self) -> None:
        """A stream that ended before its usage chunk: charged the reservation."""
        if self.billed is not None:
            return
        prompt = self.plan.prompt_estimate
        completion = max(0, (self.res.tokens if self.res else 0) - prompt)
        self.billed = (prompt, completion)
        self.core.record(
            self.route,
            self.model,
            self.started,
            prompt=prompt,
            completion=completion,
            estimated=True,
            error=True,
        )
        self.core.settle(self.res, None)


class Tally:
    """Watches a stream's chunks (SDK objects or parsed JSON): the bill, and which to pass on."""

    def __init__(self, out: Outcome) -> None:
        self.out, self.usage, self.finished = out, None, False
        self.text: list[str] = []
        self.finish_reason = False

    def keep(self, chunk: Any) -> bool:
        usage = field(chunk, "usage")
        if usage is not None:
            self.usage = usage
        choices = field(chunk, "choices") or []
        for ch in choices:
            delta = field(ch, "delta")
            text = field(delta, "content") if delta is not None else None
            if isinstance(text, str):
                self.text.append(text)
            if field(ch, "finish_reason"):
                self.finish_reason = True
        # the usage-only chunk was asked for by us; pass it on only if the caller asked too
        return bool(choices) or self.out.plan.wants_usage

    def error(self, exc: BaseException) -> UpstreamError:
        return upstream_error(exc, self.out.secrets, f"stream from {self.out.route.resource}")

    def close(self) -> None:
        # A stream that ended without usage and without a finish reason was cut short, even
        # if the connection closed cleanly: it is charged its reservation.
        if self.finished and (self.usage is not None or self.finish_reason):
            self.out.done(self.usage, "".join(self.text))
        else:
            self.out.cut()


def hide_key(result: Any) -> Any:
    """A raw response keeps its request, which carries the upstream key: mask it."""
    response = getattr(result, "http_response", None) or getattr(result, "response", None)
    request = getattr(response, "request", None)
    headers = getattr(request, "headers", None)
    if headers is not None and "authorization" in headers:
        headers["authorization"] = "Bearer ***"
    return result


Sent = tuple[Any, Route, Plan, float, tuple[str, ...]]


def _attempts(
    core: Core, routes: list[Route], plans: list[Plan], is_async: bool
) -> Iterator[tuple[Route, Plan, Upstream, tuple[str, ...], float | None]]:
    """Every (pair, try) in order, with the pause after a failure; cools a pair when done."""
    for route, plan in zip(routes, plans, strict=True):
        up = core.upstream(route.resource, is_async)
        for attempt in range(RETRIES + 1):
            yield (
                route,
                plan,
                up,
                up.secrets,
                (BACKOFF_S * 2**attempt if attempt < RETRIES else None),
            )
        core.cool(route)


def _failed(
    core: Core,
    exc: Exception,
    route: Route,
    model: str,
    started: float,
    res: ledger.Reservation | None,
    secrets: tuple[str, ...],
) -> BaseException | None:
    """Count a failed try; return what to raise at once (no retry or other endpoint helps)."""
    core.record(route, model, started, error=True)
    if retryable(exc):
        return None
    core.settle(res, 0)
    if isinstance(exc, openai.OpenAIError):
        return upstream_error(exc, secrets, route.resource)
    return exc


def _exhausted(
    core: Core,
    model: str,
    res: ledger.Reservation | None,
    last: tuple[Exception, tuple[str, ...]] | None,
) -> UpstreamError:
    core.settle(res, 0)
    assert last is not None
    return upstream_error(last[0], last[1], f"every endpoint serving {model!r} failed; last")


def run(
    core: Core,
    model: str,
    routes: list[Route],
    plans: list[Plan],
    res: ledger.Reservation | None,
    send: Callable[[Any, Plan], Any],
) -> Sent:
    last = None
    for route, plan, up, secrets, pause in _attempts(core, routes, plans, False):
        started = time.monotonic()
        try:
            result = send(up, plan)
        except Exception as exc:
            failure = exc
        else:
            return hide_key(result), route, plan, started, secrets
        # Raised outside the except block, so the SDK's error (which holds the request and
        # its Authorization header) is not kept as __context__.
        fatal = _failed(core, failure, route, model, started, res, secrets)
        if fatal is not None:
            raise fatal from None
        last = (failure, secrets)
        if pause:
            time.sleep(pause)
    raise _exhausted(core, model, res, last) from None


async def arun(
    core: Core,
    model: str,
    routes: list[Route],
    plans: list[Plan],
    res: ledger.Reservation | None,
    send: Callable[[Any, Plan], Awaitable[Any]],
) -> Sent:
    last = None
    for route, plan, up, secrets, pause in _attempts(core, routes, plans, True):
        started = time.monotonic()
        try:
            result = await send(up, plan)
        except Exception as exc:
            failure = exc
        else:
            return hide_key(result), route, plan, started, secrets
        fatal = _failed(core, failure, route, model, started, res, secrets)
        if fatal is not None:
            raise fatal from None
        last = (failure, secrets)
        if pause:
            await asyncio.sleep(pause)
    raise _exhausted(core, model, res, last) from None


def _timeout(plan: Plan) -> dict[str, Any]:
    return {"timeout": plan.timeout} if plan.timeout is not None else {}


def send_chat(up: Upstream, plan: Plan) -> Any:
    """The SDK's raw response (``LegacyAPIResponse``; awaitable for an async client)."""
    body = dict(plan.body)
    return up.sdk.chat.completions.with_raw_response.create(
        model=body.pop("model"),
        messages=body.pop("messages"),
        stream=bool(body.pop("stream", False)),
        extra_body=body,
        **_timeout(plan),
    )


def send_embeddings(up: Upstream, plan: Plan) -> Any:
    body = dict(plan.body)
    return up.sdk.embeddings.with_raw_response.create(
        model=body.pop("model"),
        input=body.pop("input"),
        encoding_format=body.pop("encoding_format"),
        extra_body=body,
        **_timeout(plan),
    )
