"""``repo.ai`` and ``repo.aio``: the openai SDK's interface over a repository's LLM resources.

``repo.ai.chat.completions.create(...)``, ``repo.ai.embeddings.create(...)`` and
``repo.ai.models.list()`` return the openai SDK's own types (and its ``Stream`` objects); each
also has ``with_raw_response`` (the SDK's ``LegacyAPIResponse``: ``.parse()``, ``.headers``,
``.http_request``) and ``with_streaming_response`` (a context manager giving an object like the
SDK's ``APIResponse``), so code and frameworks written against ``openai.OpenAI`` take ``repo.ai``
unchanged. Errors are repolib's and the matching ``openai`` class at once (openai_errors.py).
Routing, policy, budgets and usage live in core.py, shared with ``repolib serve``.
"""

from __future__ import annotations

from typing import Any

from ..exceptions import ModelNotFound, PolicyViolation
from ..repocore import RepositoryCore
from . import direct
from .core import AsyncPage, Core, Model, Outcome, SyncPage, arun, run, send_chat, send_embeddings
from .openai_errors import async_sdk_errors, sdk_errors
from .policy import chat_plan, embeddings_plan
from .responses import (
    AsyncLocalResponse,
    AsyncResponseContext,
    AsyncStreamedResponse,
    Call,
    LocalResponse,
    ResponseContext,
    StreamedLocalResponse,
    StreamedResponse,
)


def _chat_call_begin(
    core: Core, model: Any, messages: Any, stream: bool, params: dict[str, Any]
) -> Any:
    return core.begin(
        model,
        lambda up, pol: chat_plan(
            up, messages, params, pol, bool(stream), pol.token_budget is not None
        ),
    )


def _embeddings_begin(core: Core, model: Any, input: Any, params: dict[str, Any]) -> Any:
    return core.begin(model, lambda up, pol: embeddings_plan(up, input, params))


# -- chat completions ---------------------------------------------------------------------------


class _Completions:
    def __init__(self, core: Core) -> None:
        self._core = core
        self.with_raw_response = _RawCompletions(self)
        self.with_streaming_response = _StreamingCompletions(self)

    def _call(
        self,
        model: Any,
        messages: Any,
        stream: Any,
        params: dict[str, Any],
        passed_on: bool = False,
    ) -> Call:
        """``passed_on``: the bytes go on as they are, so no SDK request machinery is needed."""
        core = self._core
        routes, plans, res = _chat_call_begin(core, model, messages, stream, params)
        sender = direct.send(direct.CHAT, bool(stream)) if passed_on else send_chat
        raw, route, plan, started, secrets = run(core, model, routes, plans, res, sender)
        return Call(
            raw,
            Outcome(core, route, model, plan, res, started, secrets),
            bool(stream),
            is_async=False,
        )

    @sdk_errors
    def create(self, *, model: str, messages: Any, stream: bool = False, **params: Any) -> Any:
        """Like ``openai.OpenAI().chat.completions.create``; policy-checked and routed."""
        return self._call(model, messages, stream, params).parsed()


class _RawCompletions:
    def __init__(self, completions: _Completions) -> None:
        self._c = completions

    @sdk_errors
    def create(self, *, model: str, messages: Any, stream: bool = False, **params: Any) -> Any:
        """The SDK's ``LegacyAPIResponse``: ``.parse()`` gives what ``create`` would."""
        return self._c._call(model, messages, stream, params).raw_response()


class _StreamingCompletions:
    def __init__(self, completions: _Completions) -> None:
        self._c = completions

    def create(
        self, *, model: str, messages: Any, stream: bool = False, **params: Any
    ) -> ResponseContext:
        """``with ...create(...) as response:`` — the body is read as you iterate it."""
        return ResponseContext(
            sdk_errors(
                lambda: StreamedResponse(self._c._call(model, messages, stream, params, True))
            )
        )


class _AsyncCompletions:
    def __init__(self, core: Core) -> None:
        self._core = core
        self.with_raw_response = _AsyncRawCompletions(self)
        self.with_streaming_response = _AsyncStreamingCompletions(self)

    async def _call(
        self,
        model: Any,
        messages: Any,
        stream: Any,
        params: dict[str, Any],
        passed_on: bool = False,
    ) -> Call:
        core = self._core
        routes, plans, res = _chat_call_begin(core, model, messages, stream, params)

        async def send(up: Any, plan: Any) -> Any:
            return await send_chat(up, plan)

        sender = direct.asend(direct.CHAT, bool(stream)) if passed_on else send
        raw, route, plan, started, secrets = await arun(core, model, routes, plans, res, sender)
        return Call(
            raw,
            Outcome(core, route, model, plan, res, started, secrets),
            bool(stream),
            is_async=True,
        )

    @async_sdk_errors
    async def create(
        self, *, model: str, messages: Any, stream: bool = False, **params: Any
    ) -> Any:
        return (await self._call(model, messages, stream, params)).parsed()


class _AsyncRawCompletions:
    def __init__(self, completions: _AsyncCompletions) -> None:
        self._c = completions

    @async_sdk_errors
    async def create(
        self, *, model: str, messages: Any, stream: bool = False, **params: Any
    ) -> Any:
        return (await self._c._call(model, messages, stream, params)).raw_response()


class _AsyncStreamingCompletions:
    def __init__(self, completions: _AsyncCompletions) -> None:
        self._c = completions

    def create(
        self, *, model: str, messages: Any, stream: bool = False, **params: Any
    ) -> AsyncResponseContext:
        async def start() -> AsyncStreamedResponse:
            return AsyncStreamedResponse(await self._c._call(model, messages, stream, params, True))

        return AsyncResponseContext(async_sdk_errors(start))


class _Chat:
    def __init__(self, completions: Any) -> None:
        self.completions = completions


# -- embeddings -----------------------------------------------------------------------------


class _Embeddings:
    def __init__(self, core: Core) -> None:
        self._core = core
        self.with_raw_response = _RawEmbeddings(self)
        self.with_streaming_response = _StreamingEmbeddings(self)

    def _call(
        self, model: Any, input: Any, params: dict[str, Any], passed_on: bool = False
    ) -> Call:
        core = self._core
        routes, plans, res = _embeddings_begin(core, model, input, params)
        sender = direct.send(direct.EMBEDDINGS, False) if passed_on else send_embeddings
        raw, route, plan, started, secrets = run(core, model, routes, plans, res, sender)
        return Call(
            raw, Outcome(core, route, model, plan, res, started, secrets), False, is_async=False
        )

    @sdk_errors
    def create(self, *, model: str, input: Any, **params: Any) -> Any:
        return self._call(model, input, params).parsed()


class _RawEmbeddings:
    def __init__(self, embeddings: _Embeddings) -> None:
        self._e = embeddings

    @sdk_errors
    def create(self, *, model: str, input: Any, **params: Any) -> Any:
        return self._e._call(model, input, params).raw_response()


class _StreamingEmbeddings:
    def __init__(self, embeddings: _Embeddings) -> None:
        self._e = embeddings

    def create(self, *, model: str, input: Any, **params: Any) -> ResponseContext:
        return ResponseContext(
            sdk_errors(lambda: StreamedResponse(self._e._call(model, input, params, True)))
        )


class _AsyncEmbeddings:
    def __init__(self, core: Core) -> None:
        self._core = core
        self.with_raw_response = _AsyncRawEmbeddings(self)
        self.with_streaming_response = _AsyncStreamingEmbeddings(self)

    async def _call(
        self, model: Any, input: Any, params: dict[str, Any], passed_on: bool = False
    ) -> Call:
        core = self._core
        routes, plans, res = _embeddings_begin(core, model, input, params)

        async def send(up: Any, plan: Any) -> Any:
            return await send_embeddings(up, plan)

        sender = direct.asend(direct.EMBEDDINGS, False) if passed_on else send
        raw, route, plan, started, secrets = await arun(core, model, routes, plans, res, sender)
        return Call(
            raw, Outcome(core, route, model, plan, res, started, secrets), False, is_async=True
        )

    @async_sdk_errors
    async def create(self, *, model: str, input: Any, **params: Any) -> Any:
        return (await self._call(model, input, params)).parsed()


class _AsyncRawEmbeddings:
    def __init__(self, embeddings: _AsyncEmbeddings) -> None:
        self._e = embeddings

    @async_sdk_errors
    async def create(self, *, model: str, input: Any, **params: Any) -> Any:
        return (await self._e._call(model, input, params)).raw_response()


class _AsyncStreamingEmbeddings:
    def __init__(self, embeddings: _AsyncEmbeddings) -> None:
        self._e = embeddings

    def create(self, *, model: str, input: Any, **params: Any) -> AsyncResponseContext:
        async def start() -> AsyncStreamedResponse:
            return AsyncStreamedResponse(await self._e._call(model, input, params, True))

        return AsyncResponseContext(async_sdk_errors(start))


# -- models ---------------------------------------------------------------------------------


def _model_objects(core: Core) -> list[Any]:
    return [
        Model(id=name, created=0, object="model", owned_by=f"{core.repo.name}/{res}")
        for name, res in core.model_names()
    ]


def _one_model(core: Core, model: str) -> Any:
    for m in _model_objects(core):
        if m.id == model:
            return m
    raise ModelNotFound(
        f"no model {model!r} available to this key in repository {core.repo.name!r}"
    )


class _Models:
    def __init__(self, core: Core) -> None:
        self._core = core
        self.with_raw_response = _RawModels(self)
        self.with_streaming_response = _StreamingModels(self)

    @sdk_errors
    def list(self) -> Any:
        """The configured models and aliases this key may use, as the policy names them."""
        return SyncPage[Model](data=_model_objects(self._core), object="list")

    @sdk_errors
    def retrieve(self, model: str) -> Any:
        return _one_model(self._core, model)


class _RawModels:
    def __init__(self, models: _Models) -> None:
        self._m = models

    def list(self) -> LocalResponse:
        return LocalResponse(self._m.list(), "models")

    def retrieve(self, model: str) -> LocalResponse:
        return LocalResponse(self._m.retrieve(model), f"models/{model}")


class _StreamingModels:
    def __init__(self, models: _Models) -> None:
        self._m = models

    def list(self) -> ResponseContext:
        return ResponseContext(lambda: StreamedLocalResponse(self._m.list(), "models"))

    def retrieve(self, model: str) -> ResponseContext:
        return ResponseContext(
            lambda: StreamedLocalResponse(self._m.retrieve(model), f"models/{model}")
        )


class _AsyncModels:
    def __init__(self, core: Core) -> None:
        self._core = core
        self.with_raw_response = _AsyncRawModels(self)
        self.with_streaming_response = _AsyncStreamingModels(self)

    @async_sdk_errors
    async def list(self) -> Any:
        return AsyncPage[Model](data=_model_objects(self._core), object="list")

    @async_sdk_errors
    async def retrieve(self, model: str) -> Any:
        return _one_model(self._core, model)


class _AsyncRawModels:
    def __init__(self, models: _AsyncModels) -> None:
        self._m = models

    async def list(self) -> LocalResponse:
        return LocalResponse(await self._m.list(), "models")

    async def retrieve(self, model: str) -> LocalResponse:
        return LocalResponse(await self._m.retrieve(model), f"models/{model}")


class _AsyncStreamingModels:
    def __init__(self, models: _AsyncModels) -> None:
        self._m = models

    def list(self) -> AsyncResponseContext:
        async def start() -> AsyncLocalResponse:
            return AsyncLocalResponse(await self._m.list(), "models")

        return AsyncResponseContext(start)

    def retrieve(self, model: str) -> AsyncResponseContext:
        async def start() -> AsyncLocalResponse:
            return AsyncLocalResponse(await self._m.retrieve(model), f"models/{model}")

        return AsyncResponseContext(start)


# -- the clients ----------------------------------------------------------------------------


class _Variant:
    """``client.with_raw_response`` / ``client.with_streaming_response``, as in the SDK."""

    def __init__(self, client: Any, attr: str) -> None:
        self.chat = _Chat(getattr(client.chat.completions, attr))
        self.embeddings = getattr(client.embeddings, attr)
        self.models = getattr(client.models, attr)


class AI:
    """``repo.ai``: the openai client's shape over the repository's LLM resources."""

    def __init__(self, repo: RepositoryCore) -> None:
        self._core = Core(repo)
        self.chat = _Chat(_Completions(self._core))
        self.embeddings = _Embeddings(self._core)
        self.models = _Models(self._core)
        self.with_raw_response = _Variant(self, "with_raw_response")
        self.with_streaming_response = _Variant(self, "with_streaming_response")

    def __repr__(self) -> str:
        return f"<repolib AI for repository {self._core.repo.name!r}>"

    def map(
        self,
        prompt: str,
        files: str | list[str],
        out: str,
        model: str | None = None,
        concurrency: int = 4,
        executor: Any = None,
        **params: Any,
    ) -> Any:
        """Run ``prompt`` over each file and write each answer under ``out`` (skips done ones).

        ``executor``: any ``concurrent.futures.Executor`` to run the calls on (a process pool,
        a Dask client's ``get_executor()``); default a thread pool of ``concurrency`` threads.
        """
        from .mapping import map_files

        return map_files(
            self._core.repo,
            ai_for,
            prompt,
            files=files,
            out=out,
            model=model,
            concurrency=concurrency,
            executor=executor,
            **params,
        )

    def default_model(self) -> str:
        names = self._core.model_names()
        if not names:
            raise PolicyViolation(
                f"no model is available to this key in repository {self._core.repo.name!r}"
            )
        return names[0][0]


def ai_for(repo: RepositoryCore) -> AI:
    """``repo.ai``, made once per repository object (its upstream clients are reused)."""
    made: AI | None = repo.facades.get("ai")
    if made is None:
        made = repo.facades["ai"] = AI(repo)
    return made


def aio_for(repo: RepositoryCore) -> AsyncAI:
    """``repo.aio``, made once per repository object."""
    made: AsyncAI | None = repo.facades.get("aio")
    if made is None:
        made = repo.facades["aio"] = AsyncAI(repo)
    return made


class AsyncAI:
    """``repo.aio``: the async twin of ``repo.ai``."""

    def __init__(self, repo: RepositoryCore) -> None:
        self._core = Core(repo)
        self.chat = _Chat(_AsyncCompletions(self._core))
        self.embeddings = _AsyncEmbeddings(self._core)
        self.models = _AsyncModels(self._core)
        self.with_raw_response = _Variant(self, "with_raw_response")
        self.with_streaming_response = _Variant(self, "with_streaming_response")

    def __repr__(self) -> str:
        return f"<repolib async AI for repository {self._core.repo.name!r}>"
