"""``repo.ai`` and ``repo.aio``: the openai SDK's interface over a repository's LLM resources.

``repo.ai.chat.completions.create(...)``, ``repo.ai.embeddings.create(...)`` and
``repo.ai.models.list()`` return the openai SDK's own types (and its ``Stream`` objects). A model
name or alias routes to one or more (resource, upstream model) pairs; on connection errors,
timeouts, 429 and 5xx a call retries with backoff, then falls over to the next pair, and the
failing resource cools down. Other 4xx go back to the caller. Upstream keys never leave this
module: errors carry status and message only, and no object here shows a key in its repr.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from .. import errors
from ..exceptions import BackendUnavailable, ConfigError, PolicyViolation, UpstreamError
from ..keys import AIPolicy
from . import ledger
from .policy import Plan, chat_plan, check_model, embeddings_plan, estimate_tokens

try:
    import openai
    from openai.pagination import AsyncPage, SyncPage
    from openai.types import Model
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise BackendUnavailable('the AI side needs the openai SDK: pip install "repolib[llm]"') \
        from exc

RETRIES = 1  # per (resource, model) pair, before falling over to the next
BACKOFF_S = 0.25
COOLDOWN_S = 30.0
DEFAULT_TIMEOUT_S = 120.0
REVALIDATE_S = 2.0

_cooldowns: dict[tuple[str, str, str], float] = {}
_cool_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Route:
    resource: str
    upstream: str


class _Core:
    """What the sync and async facades share: routing, policy, clients, usage."""

    def __init__(self, repo: Any) -> None:
        self.repo = repo
        self._clients: dict[tuple[str, bool], tuple[float, Any, tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<repo.ai {self.repo.name!r}>"

    # -- routing ----------------------------------------------------------------------------

    def catalogue(self) -> list[tuple[str, str, str]]:
        """(name, resource, upstream model) for every model and alias in scope."""
        out = []
        for r in self.repo.resources(kind="llm"):
            for m in r.definition["models"]:
                out.append((m, r.name, m))
            for alias, target in r.definition["aliases"].items():
                out.append((alias, r.name, target))
        return out

    def routes(self, model: str) -> list[Route]:
        found = [Route(res, up) for name, res, up in self.catalogue() if name == model]
        if not found:
            raise ConfigError(f"no LLM resource of repository {self.repo.name!r} serves model "
                              f"{model!r}; `repolib ai models {self.repo.name}` lists them")
        now = time.monotonic()
        fresh = [r for r in found if _cooldowns.get(self._cool_key(r), 0) <= now]
        cooling = [r for r in found if r not in fresh]
        return fresh + cooling  # cooling resources only when nothing else is left

    def _cool_key(self, route: Route) -> tuple[str, str, str]:
        return (self.repo.catalog_location, self.repo.name, route.resource)

    def cool(self, route: Route) -> None:
        with _cool_lock:
            _cooldowns[self._cool_key(route)] = time.monotonic() + COOLDOWN_S

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

    def begin(self, model: Any, make_plan: Callable[[str, AIPolicy], Plan]
              ) -> tuple[list[Route], list[Plan], ledger.Reservation | None]:
        if not isinstance(model, str) or not model:
            raise ConfigError("model must be a model name or alias")
        policy = self.policy()
        check_model(model, policy)
        routes = self.routes(model)
        plans = [make_plan(r.upstream, policy) for r in routes]
        reserve = max(p.reserve for p in plans)
        res = ledger.reserve(self.repo.catalog_store, self.repo.key_id or "admin", policy,
                             reserve, self.repo.now())
        return routes, plans, res

    # -- clients ----------------------------------------------------------------------------

    def client(self, resource: str, is_async: bool) -> tuple[Any, tuple[str, ...]]:
        info = self.repo.resource(resource)
        key = (resource, is_async)
        with self._lock:
            cached = self._clients.get(key)
            if cached is not None and cached[0] == info.updated_at:
                return cached[1], cached[2]
        resolved = self.repo.resolve(resource)
        api_key = resolved.credentials.get("api_key") or "no-key"
        options = resolved.info.definition.get("options", {})
        cls = openai.AsyncOpenAI if is_async else openai.OpenAI
        client = cls(base_url=resolved.info.definition["base_url"], api_key=api_key,
                     max_retries=0, timeout=float(options.get("timeout", DEFAULT_TIMEOUT_S)),
                     organization=None, project=None)
        secrets = (api_key,) if api_key != "no-key" else ()
        with self._lock:
            self._clients[key] = (info.updated_at, client, secrets)
        return client, secrets

    # -- outcomes ---------------------------------------------------------------------------

    def record(self, route: Route, model: str, started: float, *, prompt: int = 0,
               completion: int = 0, estimated: bool = False, error: bool = False) -> None:
        self.repo.record_usage(route.resource, model=model, requests=1,
                               prompt_tokens=prompt, completion_tokens=completion,
                               errors=1 if error else 0,
                               latency_ms=(time.monotonic() - started) * 1000,
                               estimated=1 if estimated else 0)

    def settle(self, res: ledger.Reservation | None, actual: int | None) -> None:
        ledger.settle(self.repo.catalog_store, res, actual)


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError | openai.APITimeoutError)


def upstream_error(exc: BaseException, secrets: tuple[str, ...], where: str) -> UpstreamError:
    """Status and message only: no request, headers or key (and no chained cause)."""
    status = getattr(exc, "status_code", None)
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        msg = body.get("message") if isinstance(body, dict) else None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            msg = body["error"].get("message") or msg
        msg = msg or exc.message
    elif isinstance(exc, openai.APITimeoutError):
        msg = "request timed out"
    elif isinstance(exc, openai.APIConnectionError):
        msg = "cannot reach the endpoint"
    else:
        msg = str(exc) or type(exc).__name__
    msg = errors.scrub(str(msg), secrets).splitlines()[0][:500] if msg else "error"
    return UpstreamError(f"{where}: {msg}" + (f" (HTTP {status})" if status else ""), status)


def _usage_numbers(usage: Any) -> tuple[int, int] | None:
    if usage is None:
        return None
    p = getattr(usage, "prompt_tokens", None) or 0
    c = getattr(usage, "completion_tokens", None) or 0
    return int(p), int(c)


def _content_of(resp: Any) -> str:
    parts = []
    for ch in getattr(resp, "choices", None) or []:
        msg = getattr(ch, "message", None)
        if msg is not None and isinstance(getattr(msg, "content", None), str):
            parts.append(msg.content)
    return "".join(parts)


class _Outcome:
    """Charges one finished call: usage counters and the budget ledger."""

    def __init__(self, core: _Core, route: Route, model: str, plan: Plan,
                 res: ledger.Reservation | None, started: float,
                 secrets: tuple[str, ...] = ()) -> None:
        self.core, self.route, self.model, self.plan = core, route, model, plan
        self.res, self.started, self.secrets = res, started, secrets

    def done(self, usage: Any, text: str) -> None:
        numbers = _usage_numbers(usage)
        if numbers is None:  # no usage from the server: estimate, and say so
            numbers = (self.plan.prompt_estimate, estimate_tokens(text))
            estimated = True
        else:
            estimated = False
        self.core.record(self.route, self.model, self.started, prompt=numbers[0],
                         completion=numbers[1], estimated=estimated)
        self.core.settle(self.res, sum(numbers))

    def cut(self) -> None:
        """A stream that ended before its usage chunk: charged the reservation."""
        self.core.record(self.route, self.model, self.started,
                         prompt=self.plan.prompt_estimate,
                         completion=max(0, (self.res.tokens if self.res else 0)
                                        - self.plan.prompt_estimate),
                         estimated=True, error=True)
        self.core.settle(self.res, None)


class _Tally:
    """Watches a stream's chunks: text and usage for the bill, and which to pass on."""

    def __init__(self, out: _Outcome) -> None:
        self.out, self.usage, self.text, self.finished = out, None, [], False
        self.finish_reason = False

    def keep(self, chunk: Any) -> bool:
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage
        for ch in chunk.choices or []:
            if ch.delta is not None and isinstance(ch.delta.content, str):
                self.text.append(ch.delta.content)
            if getattr(ch, "finish_reason", None):
                self.finish_reason = True
        # the usage-only chunk was asked for by us; pass it on only if the caller asked too
        return bool(chunk.choices) or self.out.plan.wants_usage

    def error(self, exc: Exception) -> UpstreamError:
        return upstream_error(exc, self.out.secrets, f"stream from {self.out.route.resource}")

    def close(self) -> None:
        # A stream that ended without usage and without a finish reason was cut short, even
        # if the connection closed cleanly: it is charged its reservation.
        if self.finished and (self.usage is not None or self.finish_reason):
            self.out.done(self.usage, "".join(self.text))
        else:
            self.out.cut()


def _observe(stream: Any, out: _Outcome) -> Iterator[Any]:
    tally = _Tally(out)
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
            raise tally.error(failure) from None  # outside the except: no __context__ kept
    finally:
        tally.close()


async def _aobserve(stream: Any, out: _Outcome) -> AsyncIterator[Any]:
    tally = _Tally(out)
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
            raise tally.error(failure) from None
    finally:
        tally.close()


def _hide_key(result: Any) -> Any:
    """A stream keeps its HTTP response, whose request carries the upstream key: mask it."""
    response = getattr(result, "response", None)
    request = getattr(response, "request", None)
    headers = getattr(request, "headers", None)
    if headers is not None and "authorization" in headers:
        headers["authorization"] = "Bearer ***"
    return result


def _attempts(core: _Core, routes: list[Route], plans: list[Plan], is_async: bool
              ) -> Iterator[tuple[Route, Plan, Any, tuple[str, ...], float | None]]:
    """Every (pair, try) in order, with the pause after a failure; cools a pair when done."""
    for route, plan in zip(routes, plans, strict=True):
        client, secrets = core.client(route.resource, is_async)
        for attempt in range(RETRIES + 1):
            yield route, plan, client, secrets, (BACKOFF_S * 2**attempt
                                                 if attempt < RETRIES else None)
        core.cool(route)


def _failed(core: _Core, exc: Exception, route: Route, model: str, started: float,
            res: ledger.Reservation | None, secrets: tuple[str, ...]) -> BaseException | None:
    """Count a failed try; return what to raise at once (no retry or other endpoint helps)."""
    core.record(route, model, started, error=True)
    if retryable(exc):
        return None
    core.settle(res, 0)
    if isinstance(exc, openai.OpenAIError):
        return upstream_error(exc, secrets, route.resource)
    return exc


def _exhausted(core: _Core, model: str, res: ledger.Reservation | None,
               last: tuple[Exception, tuple[str, ...]] | None) -> UpstreamError:
    core.settle(res, 0)
    assert last is not None
    return upstream_error(last[0], last[1], f"every endpoint serving {model!r} failed; last")


def _run(core: _Core, model: str, routes: list[Route], plans: list[Plan],
         res: ledger.Reservation | None, send: Callable[[Any, Plan], Any]
         ) -> tuple[Any, Route, Plan, float, tuple[str, ...]]:
    last = None
    for route, plan, client, secrets, pause in _attempts(core, routes, plans, False):
        started = time.monotonic()
        try:
            result = send(client, plan)
        except Exception as exc:
            failure = exc
        else:
            return _hide_key(result), route, plan, started, secrets
        # Raised outside the except block, so the SDK's error (which holds the request and
        # its Authorization header) is not kept as __context__.
        fatal = _failed(core, failure, route, model, started, res, secrets)
        if fatal is not None:
            raise fatal from None
        last = (failure, secrets)
        if pause:
            time.sleep(pause)
    raise _exhausted(core, model, res, last) from None


async def _arun(core: _Core, model: str, routes: list[Route], plans: list[Plan],
                res: ledger.Reservation | None, send: Callable[[Any, Plan], Awaitable[Any]]
                ) -> tuple[Any, Route, Plan, float, tuple[str, ...]]:
    last = None
    for route, plan, client, secrets, pause in _attempts(core, routes, plans, True):
        started = time.monotonic()
        try:
            result = await send(client, plan)
        except Exception as exc:
            failure = exc
        else:
            return _hide_key(result), route, plan, started, secrets
        fatal = _failed(core, failure, route, model, started, res, secrets)
        if fatal is not None:
            raise fatal from None
        last = (failure, secrets)
        if pause:
            await asyncio.sleep(pause)
    raise _exhausted(core, model, res, last) from None


def _send_chat(client: Any, plan: Plan) -> Any:
    body = dict(plan.body)
    return client.chat.completions.create(
        model=body.pop("model"), messages=body.pop("messages"),
        stream=bool(body.pop("stream", False)), extra_body=body,
        **({"timeout": plan.timeout} if plan.timeout is not None else {}))


def _send_embeddings(client: Any, plan: Plan) -> Any:
    body = dict(plan.body)
    return client.embeddings.create(
        model=body.pop("model"), input=body.pop("input"),
        encoding_format=body.pop("encoding_format"), extra_body=body,
        **({"timeout": plan.timeout} if plan.timeout is not None else {}))


class _Completions:
    def __init__(self, core: _Core) -> None:
        self._core = core

    def create(self, *, model: str, messages: Any, stream: bool = False, **params: Any) -> Any:
        """Like ``openai.OpenAI().chat.completions.create``; policy-checked and routed."""
        core = self._core
        routes, plans, res = core.begin(
            model, lambda up, pol: chat_plan(up, messages, params, pol, bool(stream),
                                             pol.token_budget is not None))
        result, route, plan, started, secrets = _run(core, model, routes, plans, res,
                                                     _send_chat)
        out = _Outcome(core, route, model, plan, res, started, secrets)
        if stream:
            result._iterator = _observe(result._iterator, out)
            return result
        out.done(result.usage, _content_of(result))
        return result


class _AsyncCompletions:
    def __init__(self, core: _Core) -> None:
        self._core = core

    async def create(self, *, model: str, messages: Any, stream: bool = False,
                     **params: Any) -> Any:
        core = self._core
        routes, plans, res = core.begin(
            model, lambda up, pol: chat_plan(up, messages, params, pol, bool(stream),
                                             pol.token_budget is not None))

        async def send(client: Any, plan: Plan) -> Any:
            return await _send_chat(client, plan)

        result, route, plan, started, secrets = await _arun(core, model, routes, plans,
                                                             res, send)
        out = _Outcome(core, route, model, plan, res, started, secrets)
        if stream:
            result._iterator = _aobserve(result._iterator, out)
            return result
        out.done(result.usage, _content_of(result))
        return result


class _Chat:
    def __init__(self, completions: Any) -> None:
        self.completions = completions


class _Embeddings:
    def __init__(self, core: _Core) -> None:
        self._core = core

    def create(self, *, model: str, input: Any, **params: Any) -> Any:
        core = self._core
        routes, plans, res = core.begin(model, lambda up, pol: embeddings_plan(up, input,
                                                                                  params))
        result, route, plan, started, secrets = _run(core, model, routes, plans, res,
                                                     _send_embeddings)
        _Outcome(core, route, model, plan, res, started, secrets).done(result.usage, "")
        return result


class _AsyncEmbeddings:
    def __init__(self, core: _Core) -> None:
        self._core = core

    async def create(self, *, model: str, input: Any, **params: Any) -> Any:
        core = self._core
        routes, plans, res = core.begin(model, lambda up, pol: embeddings_plan(up, input,
                                                                                  params))

        async def send(client: Any, plan: Plan) -> Any:
            return await _send_embeddings(client, plan)

        result, route, plan, started, secrets = await _arun(core, model, routes, plans,
                                                             res, send)
        _Outcome(core, route, model, plan, res, started, secrets).done(result.usage, "")
        return result


def _model_objects(core: _Core) -> list[Any]:
    return [Model(id=name, created=0, object="model", owned_by=f"{core.repo.name}/{res}")
            for name, res in core.model_names()]


class _Models:
    def __init__(self, core: _Core) -> None:
        self._core = core

    def list(self) -> Any:
        """The configured models and aliases this key may use, as the policy names them."""
        return SyncPage[Model](data=_model_objects(self._core), object="list")


class _AsyncModels:
    def __init__(self, core: _Core) -> None:
        self._core = core

    async def list(self) -> Any:
        return AsyncPage[Model](data=_model_objects(self._core), object="list")


class AI:
    """``repo.ai``: the openai client's shape over the repository's LLM resources."""

    def __init__(self, repo: Any) -> None:
        self._core = _Core(repo)
        self.chat = _Chat(_Completions(self._core))
        self.embeddings = _Embeddings(self._core)
        self.models = _Models(self._core)

    def __repr__(self) -> str:
        return f"<repolib AI for repository {self._core.repo.name!r}>"

    def map(self, prompt: str, files: str | list[str], out: str, model: str | None = None,
            concurrency: int = 4, executor: Any = None, **params: Any) -> Any:
        """Run ``prompt`` over each file and write each answer under ``out`` (skips done ones).

        ``executor``: any ``concurrent.futures.Executor`` to run the calls on (a process pool,
        a Dask client's ``get_executor()``); default a thread pool of ``concurrency`` threads.
        """
        from .mapping import map_files

        return map_files(self._core.repo, prompt, files=files, out=out, model=model,
                         concurrency=concurrency, executor=executor, **params)

    def default_model(self) -> str:
        names = self._core.model_names()
        if not names:
            raise PolicyViolation("no model is available to this key in repository "
                                  f"{self._core.repo.name!r}")
        return names[0][0]


class AsyncAI:
    """``repo.aio``: the async twin of ``repo.ai``."""

    def __init__(self, repo: Any) -> None:
        self._core = _Core(repo)
        self.chat = _Chat(_AsyncCompletions(self._core))
        self.embeddings = _AsyncEmbeddings(self._core)
        self.models = _AsyncModels(self._core)

    def __repr__(self) -> str:
        return f"<repolib async AI for repository {self._core.repo.name!r}>"
