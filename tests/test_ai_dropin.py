"""``repo.ai`` where an ``openai.OpenAI`` is expected: raw and streaming responses, the SDK's
exception classes, and frameworks (LangChain, llama-index) given ``repo.ai`` as their client.

Upstream is the wire-format fake of tests/fake_openai.py (a real HTTP server on loopback).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("openai", reason="the AI side needs the llm extra (openai SDK)")

import openai
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import repolib
from repolib import (
    BudgetExceeded,
    ConfigError,
    InvalidKey,
    ModelNotFound,
    PolicyViolation,
    RateLimited,
    UpstreamError,
    usage,
)
from repolib.ai import core as ai_core
from repolib.ai.policy import period_key

from .fake_openai import FakeOpenAI, fake_openai
from .helpers import LLM_API_KEY

HI = [{"role": "user", "content": "hi there"}]


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ai_core, "BACKOFF_S", 0.01)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai(models=["m1"]) as f:
        yield f


@pytest.fixture
def admin(catalog: repolib.Catalog, fake: FakeOpenAI) -> repolib.Repository:
    r = catalog.create_repository("aitest")
    r.add_llm(
        "alpha",
        base_url=fake.url,
        api_key=LLM_API_KEY,
        models=["m1"],
        aliases={"fast": "m1"},
        timeout=0.5,
    )
    return r


def keyed(
    catalog: repolib.Catalog, admin: repolib.Repository, ai: Any = True, name: str = "k"
) -> repolib.Repository:
    return repolib.open(
        "aitest", key=admin.create_key(name, "read", ai=ai).token, home=catalog.home
    )


def requests_counted(catalog: repolib.Catalog) -> float:
    usage.flush_all()
    with catalog._ctx.store.read() as tx:
        return sum(v for *_, metric, v in tx.ai_usage_rows() if metric == "requests")


def ledger(catalog: repolib.Catalog, repo: repolib.Repository) -> float:
    p, _ = period_key("day", time.time())
    with catalog._ctx.store.read() as tx:
        return tx.ledger_get(repo.key_id or "admin", p)


def sse_data(lines: list[str]) -> list[Any]:
    return [
        line[len("data: ") :] if line.endswith("[DONE]") else json.loads(line[6:])
        for line in lines
        if line.startswith("data: ")
    ]


# -- with_raw_response ----------------------------------------------------------------------


def test_with_raw_response_is_the_sdks_without_the_upstream_key(
    catalog: repolib.Catalog, admin: repolib.Repository, fake: FakeOpenAI
) -> None:
    repo = keyed(catalog, admin)
    raw = repo.ai.chat.completions.with_raw_response.create(model="fast", messages=HI, max_tokens=3)
    assert type(raw).__name__ == "LegacyAPIResponse"
    resp = raw.parse()
    assert type(resp) is ChatCompletion and raw.parse() is resp
    assert resp.choices[0].message.content == "w0 w1 w2"
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/json"
    assert raw.http_request.method == "POST"
    assert raw.http_request.headers["authorization"] == "Bearer ***"
    assert fake.chat_requests()[-1].bearer == LLM_API_KEY  # the key was sent, then masked

    stream_raw = repo.ai.chat.completions.with_raw_response.create(
        model="fast", messages=HI, max_tokens=3, stream=True
    )
    chunks = list(stream_raw.parse())
    assert all(type(c) is ChatCompletionChunk for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "w0 w1 w2"

    emb = repo.ai.embeddings.with_raw_response.create(model="m1", input=["a", "b c"])
    assert type(emb.parse()) is CreateEmbeddingResponse and len(emb.parse().data) == 2

    models = repo.ai.models.with_raw_response.list()
    assert [m.id for m in models.parse()] == ["fast", "m1"]
    assert json.loads(models.content)["data"][0]["id"] == "fast"
    assert models.http_request.url.host == "repolib.invalid"
    assert (
        repo.ai.with_raw_response.chat.completions.create(  # the client-level spelling
            model="m1", messages=HI, max_tokens=1
        )
        .parse()
        .usage.completion_tokens
        == 1
    )
    assert requests_counted(catalog) == 4  # billed once each, however often parsed

    async def run() -> None:
        araw = await repo.aio.chat.completions.with_raw_response.create(
            model="fast", messages=HI, max_tokens=2
        )
        assert araw.parse().choices[0].message.content == "w0 w1"
        astream = await repo.aio.chat.completions.with_raw_response.create(
            model="fast", messages=HI, max_tokens=2, stream=True
        )
        got = [c async for c in astream.parse()]
        assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "w0 w1"
        amodels = await repo.aio.models.with_raw_response.list()
        assert [m.id for m in amodels.parse().data] == ["fast", "m1"]

    asyncio.run(run())
    assert requests_counted(catalog) == 6


# -- with_streaming_response ----------------------------------------------------------------


def test_with_streaming_response_passes_the_events_on_and_bills_them(
    catalog: repolib.Catalog, admin: repolib.Repository, fake: FakeOpenAI
) -> None:
    repo = keyed(catalog, admin, ai={"token_budget": 10_000})
    with repo.ai.chat.completions.with_streaming_response.create(
        model="fast", messages=HI, max_tokens=3, stream=True
    ) as resp:
        assert resp.status_code == 200 and "event-stream" in resp.headers["content-type"]
        assert resp.http_request.headers["authorization"] == "Bearer ***"
        lines = list(resp.iter_lines())
        assert resp.billed_tokens == (2, 3)
    events = sse_data(lines)
    assert events[-1] == "[DONE]"
    assert all(e["choices"] for e in events[:-1])  # repolib's own usage chunk is not passed on
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == "w0 w1 w2"
    assert fake.chat_requests()[-1].body["stream_options"] == {"include_usage": True}

    with repo.ai.chat.completions.with_streaming_response.create(
        model="fast", messages=HI, max_tokens=3, stream=True, stream_options={"include_usage": True}
    ) as resp:
        asked = sse_data(resp.read().decode().splitlines())
    assert asked[-2]["choices"] == [] and asked[-2]["usage"]["total_tokens"] == 5

    with repo.ai.chat.completions.with_streaming_response.create(
        model="fast", messages=HI, max_tokens=3
    ) as resp:
        parsed = resp.parse()
        assert type(parsed) is ChatCompletion and resp.json()["usage"]["total_tokens"] == 5
    with repo.ai.embeddings.with_streaming_response.create(model="m1", input="a b") as resp:
        assert resp.json()["usage"]["prompt_tokens"] == 2
    with repo.ai.models.with_streaming_response.list() as resp:
        assert [m.id for m in resp.parse()] == ["fast", "m1"]
    assert ledger(catalog, repo) == 5 * 3 + 2  # each call settled to what upstream reported

    async def run() -> list[str]:
        async with repo.aio.chat.completions.with_streaming_response.create(
            model="fast", messages=HI, max_tokens=3, stream=True
        ) as aresp:
            return [line async for line in aresp.iter_lines()]

    def content(events: list[Any]) -> list[Any]:
        return [e if e == "[DONE]" else e["choices"] for e in events]

    assert content(sse_data(asyncio.run(run()))) == content(events)
    assert ledger(catalog, repo) == 5 * 4 + 2


def test_a_streamed_response_left_early_is_charged_its_reservation(
    catalog: repolib.Catalog, admin: repolib.Repository, fake: FakeOpenAI
) -> None:
    repo = keyed(catalog, admin, ai={"token_budget": 10_000})
    with repo.ai.chat.completions.with_streaming_response.create(
        model="fast", messages=HI, max_tokens=40, stream=True
    ) as resp:
        first = next(resp.iter_bytes())
        assert first.startswith(b"data: ")
    assert ledger(catalog, repo) == 6 + 40  # the reservation: prompt estimate + max_tokens
    with repo.ai.chat.completions.with_streaming_response.create(
        model="fast", messages=HI, max_tokens=40, stream=True
    ):
        pass  # never read at all
    assert ledger(catalog, repo) == 2 * 46

    fake.push("stream_error")  # an error event mid-stream, echoing the upstream key
    with (
        pytest.raises(UpstreamError) as ei,
        repo.ai.chat.completions.with_streaming_response.create(
            model="fast", messages=HI, max_tokens=40, stream=True
        ) as resp,
    ):
        list(resp.iter_lines())
    assert isinstance(ei.value, openai.APIError) and LLM_API_KEY not in str(ei.value)


# -- the SDK's exception classes --------------------------------------------------------------


def test_errors_are_also_the_sdk_classes(
    catalog: repolib.Catalog, admin: repolib.Repository, fake: FakeOpenAI
) -> None:
    ok = keyed(catalog, admin, name="ok")
    off = keyed(catalog, admin, ai=None, name="off")
    fast_only = keyed(catalog, admin, ai={"models": ["fast"]}, name="fast-only")
    one_rpm = keyed(catalog, admin, ai={"rpm": 1}, name="rpm")
    tiny = keyed(catalog, admin, ai={"token_budget": 5}, name="tiny")

    def raised(repo: repolib.Repository, **kwargs: Any) -> BaseException:
        with pytest.raises(Exception) as ei:
            repo.ai.chat.completions.create(**{"model": "m1", "messages": HI, **kwargs})
        return ei.value

    def rate_limited() -> BaseException:
        """The refusal of a second request in a minute (a third, if a minute began between)."""
        for _ in range(3):
            try:
                one_rpm.ai.chat.completions.create(model="m1", messages=HI, max_tokens=1)
            except RateLimited as exc:
                return exc
        raise AssertionError("a key of 1 request a minute made 3 in under a minute")

    cases: list[tuple[BaseException, type, type, int]] = [
        (raised(off), PolicyViolation, openai.PermissionDeniedError, 403),
        (raised(fast_only), PolicyViolation, openai.PermissionDeniedError, 403),
        (rate_limited(), RateLimited, openai.RateLimitError, 429),
        (raised(tiny, max_tokens=40), BudgetExceeded, openai.RateLimitError, 429),
        (raised(ok, model="nope"), ModelNotFound, openai.NotFoundError, 404),
        (raised(ok, n=0), ConfigError, openai.BadRequestError, 400),
    ]
    fake.push(400)
    cases.append((raised(ok), UpstreamError, openai.BadRequestError, 400))
    fake.push(500, 500)
    cases.append((raised(ok), UpstreamError, openai.InternalServerError, 502))
    for exc, ours, sdk, status in cases:
        assert isinstance(exc, ours) and isinstance(exc, sdk), (type(exc).__mro__, sdk)
        assert isinstance(exc, repolib.RepolibError)
        assert exc.status_code == status and exc.response.status_code == status
        assert exc.body["message"] == str(exc) and exc.code
        assert exc.request.url.host == "repolib.invalid"
    assert isinstance(cases[4][0], ValueError)  # still a ConfigError, as before
    rpm = cases[2][0]
    assert 1 <= int(rpm.response.headers["retry-after"]) <= 60  # type: ignore[attr-defined]
    assert "resets in" in str(rpm)
    assert cases[7][0].status == 500  # type: ignore[attr-defined]  (the upstream's status)

    fake.push("slow", "slow")
    slow = raised(ok)
    assert isinstance(slow, UpstreamError) and isinstance(slow, openai.APITimeoutError)
    assert slow.timed_out  # type: ignore[attr-defined]

    admin.revoke_key(ok.key_id or "")
    ok._checked = -1e9  # type: ignore[attr-defined]  (re-check now, not in 2 s)
    revoked = raised(ok)
    assert isinstance(revoked, InvalidKey) and isinstance(revoked, openai.AuthenticationError)

    async def arun() -> BaseException:
        with pytest.raises(Exception) as ei:
            await off.aio.chat.completions.create(model="m1", messages=HI)
        return ei.value

    aexc = asyncio.run(arun())
    assert isinstance(aexc, PolicyViolation) and isinstance(aexc, openai.PermissionDeniedError)

    for exc, ours, sdk, _ in cases:  # they pickle (executors, multiprocessing)
        back = pickle.loads(pickle.dumps(exc))
        assert isinstance(back, ours) and isinstance(back, sdk) and str(back) == str(exc)


# -- frameworks, in-process ---------------------------------------------------------------------


def test_langchain_chatopenai_with_repo_ai_as_its_client(
    catalog: repolib.Catalog, admin: repolib.Repository, fake: FakeOpenAI
) -> None:
    pytest.importorskip("langchain_openai", reason="needs langchain-openai (test extra)")
    from langchain_openai import ChatOpenAI

    repo = keyed(catalog, admin, ai={"models": ["fast"]})
    llm = ChatOpenAI(
        client=repo.ai.chat.completions,
        async_client=repo.aio.chat.completions,
        model="fast",
        max_tokens=3,
    )
    assert llm.invoke("hi there").content == "w0 w1 w2"  # via with_raw_response
    assert "".join(str(c.content) for c in llm.stream("hi there")) == "w0 w1 w2"
    with_headers = ChatOpenAI(
        client=repo.ai.chat.completions,
        async_client=repo.aio.chat.completions,
        model="fast",
        max_tokens=3,
        include_response_headers=True,
    )
    assert "content-type" in with_headers.invoke("hi").response_metadata["headers"]

    async def run() -> tuple[str, str]:
        one = await llm.ainvoke("hi there")
        streamed = "".join([str(c.content) async for c in llm.astream("hi there")])
        return str(one.content), streamed

    assert asyncio.run(run()) == ("w0 w1 w2", "w0 w1 w2")
    assert fake.chat_requests()[-1].body["model"] == "m1"
    refused = ChatOpenAI(
        client=repo.ai.chat.completions, async_client=repo.aio.chat.completions, model="m1"
    )
    with pytest.raises(openai.PermissionDeniedError):
        refused.invoke("hi")


def test_llama_index_openailike_with_repo_ai_as_its_client(
    catalog: repolib.Catalog, admin: repolib.Repository, fake: FakeOpenAI
) -> None:
    pytest.importorskip(
        "llama_index.llms.openai_like",
        reason="llama-index-llms-openai-like is not in the test extra: its llama-index-llms-openai "
        f"requires openai<3 and this environment has openai {openai.__version__}",
    )
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    repo = keyed(catalog, admin)
    llm = OpenAILike(
        model="fast",
        api_key="unused",
        is_chat_model=True,
        max_tokens=3,
        openai_client=repo.ai,
        async_openai_client=repo.aio,
    )
    assert llm.chat([ChatMessage(role="user", content="hi there")]).message.content == "w0 w1 w2"
    streamed = [r.delta for r in llm.stream_chat([ChatMessage(role="user", content="hi")])]
    assert "".join(d or "" for d in streamed) == "w0 w1 w2"
    assert fake.chat_requests()[-1].bearer == LLM_API_KEY
