"""The AI facade: repo.ai / repo.aio against a real local model and a fake wire-format server.

The real server (llama.cpp via xllamacpp, SmolLM2-135M) covers the happy paths: the same
response shapes as the openai SDK's own client, streams, models, ``repo.ask`` and
``repo.ai.map``, the async twin. The fake server of tests/fake_openai.py (our own HTTP server
speaking the OpenAI wire format, not patched objects) covers what a real model will not do on
demand: policy bypass attempts, 429/5xx/timeouts and fallback, cut streams, missing usage,
budgets under parallel load, and an upstream that echoes the API key back.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openai", reason="the AI side needs the llm extra (openai SDK)")

import openai
from openai.types import CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import repolib
from repolib import (
    BudgetExceeded,
    ConfigError,
    InvalidKey,
    PolicyViolation,
    UpstreamError,
    usage,
)
from repolib.ai import core as ai_client
from repolib.ai.policy import estimate_prompt, estimate_tokens, period_key
from repolib.info import iso
from tests.helpers import Clock

from .fake_openai import FakeOpenAI, fake_openai
from .helpers import LLM_API_KEY, Cli

ROOT = Path(__file__).resolve().parent.parent
BOTH_STORES = pytest.mark.stores("sqlite", "postgres")  # budgets, rates, usage: either catalog
HI = [{"role": "user", "content": "hi there"}]
T0 = 1_800_000_015.0  # a fixed clock: 15 s into a minute (1_800_000_000 is a whole minute)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ai_client, "BACKOFF_S", 0.01)


# -- helpers ----------------------------------------------------------------------------------


def open_key(
    catalog: repolib.Catalog,
    repo: repolib.Repository,
    name: str,
    access: str = "read",
    ai: Any = True,
    clock: Any = None,
) -> repolib.Repository:
    """Issue a key on ``repo`` (with the admin secret) and open the repository with it."""
    token = repo.create_key(name, access, ai=ai).token
    return repolib.open(repo.name, key=token, home=catalog.home, clock=clock)


def ai_totals(catalog: repolib.Catalog, resource: str | None = None) -> dict[str, float]:
    """Usage counters summed over days, keys and models (optionally for one resource)."""
    usage.flush_all()
    with catalog._ctx.store.read() as tx:
        rows = tx.ai_usage_rows()
    out: collections.Counter[str] = collections.Counter()
    for _day, _repo, _key, res, _model, metric, value in rows:
        if resource is None or res == resource:
            out[metric] += value
    return dict(out)


def ledger(
    catalog: repolib.Catalog, key_id: str | None, now: float | None = None, period: str = "day"
) -> float:
    p, _ = period_key(period, time.time() if now is None else now)
    with catalog._ctx.store.read() as tx:
        return tx.ledger_get(key_id or "admin", p)


def fields(obj: Any) -> Any:
    """The field structure of a response (names, nesting), without the values."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    if isinstance(obj, dict):
        return {k: fields(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [fields(v) for v in obj]
    return None


def content(chunks: list[Any]) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


def exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything reachable through __cause__ and __context__."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


# -- the fake upstreams -----------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai(models=["m1"]) as f:
        yield f


@pytest.fixture
def fake_b() -> Iterator[FakeOpenAI]:
    with fake_openai(models=["m1"]) as f:
        yield f


@pytest.fixture
def ai_repo(catalog: repolib.Catalog, fake: FakeOpenAI) -> repolib.Repository:
    """Repository 'aitest' (admin secret) with LLM 'alpha' serving m1 and its alias 'fast'."""
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


@pytest.fixture
def two_repo(ai_repo: repolib.Repository, fake_b: FakeOpenAI) -> repolib.Repository:
    """'aitest' with a second resource 'beta' serving m1 too (alpha comes first)."""
    ai_repo.add_llm(
        "beta", base_url=fake_b.url, api_key=LLM_API_KEY, models=["m1"], aliases={"fast": "m1"}
    )
    return ai_repo


# =============================================================================================
# The real model server
# =============================================================================================


@pytest.fixture
def real_repo(
    catalog: repolib.Catalog, real_llm: str, tmp_path: Path
) -> tuple[repolib.Repository, Path]:
    """Repository 'notebook' (a local folder 'docs', the local model) opened with a key."""
    docs = tmp_path / "docs"
    docs.mkdir()
    admin = catalog.create_repository("notebook")
    admin.add_storage("docs", f"file://{docs}")
    admin.add_llm("local", base_url=real_llm, models=["smollm2"], context_window=2048)
    return open_key(catalog, admin, "nb", "write", ai=True), docs


REAL_ASK = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Say hello."}],
    "temperature": 0,
    "max_tokens": 6,
}


def test_real_chat_has_the_sdk_shapes(
    real_repo: tuple[repolib.Repository, Path], real_llm: str, catalog: repolib.Catalog
) -> None:
    repo, _ = real_repo
    sdk = openai.OpenAI(base_url=real_llm, api_key="unused", max_retries=0)
    direct = sdk.chat.completions.create(**REAL_ASK)
    ours = repo.ai.chat.completions.create(**REAL_ASK)
    assert type(ours) is type(direct) is ChatCompletion
    assert fields(ours) == fields(direct)
    assert ours.choices[0].message.content == direct.choices[0].message.content
    assert ours.choices[0].message.content
    assert ours.usage is not None and direct.usage is not None
    assert (ours.usage.prompt_tokens, ours.usage.completion_tokens) == (
        direct.usage.prompt_tokens,
        direct.usage.completion_tokens,
    )
    totals = ai_totals(catalog, "local")
    assert totals["requests"] == 1
    assert totals["prompt_tokens"] == ours.usage.prompt_tokens
    assert totals["completion_tokens"] == ours.usage.completion_tokens
    assert "estimated" not in totals


def test_real_stream_yields_the_sdk_chunks(
    real_repo: tuple[repolib.Repository, Path], real_llm: str, catalog: repolib.Catalog
) -> None:
    repo, _ = real_repo
    sdk = openai.OpenAI(base_url=real_llm, api_key="unused", max_retries=0)
    direct = list(sdk.chat.completions.create(**REAL_ASK, stream=True))
    stream = repo.ai.chat.completions.create(**REAL_ASK, stream=True)
    assert isinstance(stream, openai.Stream)
    ours = list(stream)
    assert all(type(c) is ChatCompletionChunk for c in ours)
    assert content(ours) == content(direct) and content(ours)
    # not asked for usage: no usage-only chunk, as with the bare SDK
    assert all(c.choices for c in direct)
    assert all(c.choices for c in ours)
    # ... though repolib asked upstream for it and counted it
    totals = ai_totals(catalog, "local")
    assert totals["requests"] == 1 and totals["completion_tokens"] > 0
    assert "estimated" not in totals

    asked = {**REAL_ASK, "stream": True, "stream_options": {"include_usage": True}}
    direct_u = list(sdk.chat.completions.create(**asked))
    ours_u = list(repo.ai.chat.completions.create(**asked))
    assert content(ours_u) == content(direct_u)
    assert direct_u[-1].choices == [] and direct_u[-1].usage is not None
    assert ours_u[-1].choices == [] and ours_u[-1].usage is not None
    assert fields(ours_u[-1]) == fields(direct_u[-1])
    assert sum(1 for c in ours_u if not c.choices) == 1
    assert ours_u[-1].usage.completion_tokens == direct_u[-1].usage.completion_tokens


def test_real_models_list(real_repo: tuple[repolib.Repository, Path]) -> None:
    repo, _ = real_repo
    page = repo.ai.models.list()
    models = list(page)
    assert [m.id for m in models] == ["smollm2"]
    assert all(type(m) is Model for m in models)


def test_real_ask_about_a_file(real_repo: tuple[repolib.Repository, Path]) -> None:
    repo, docs = real_repo
    (docs / "facts.md").write_text("# Project facts\nThe office cat is named Pickles.\n")
    answer = repo.ask(
        "What is the office cat named?", files="docs/*.md", temperature=0, max_tokens=16
    )
    assert isinstance(answer, repolib.ai.Answer)
    assert answer.files == ["docs/facts.md"]
    assert answer.text and str(answer) == answer.text
    assert "pickles" in answer.text.lower()  # stable at temperature 0 for this model


def test_real_map_writes_answers_and_skips_them_after(
    real_repo: tuple[repolib.Repository, Path], catalog: repolib.Catalog
) -> None:
    repo, docs = real_repo
    for name, text in (
        ("a", "Lisbon is sunny."),
        ("b", "Porto has a bridge."),
        ("c", "Braga is old."),
    ):
        (docs / f"{name}.md").write_text(f"# {name}\n{text}\n")
    first = repo.ai.map(
        "Summarise in three words.",
        files="docs/*.md",
        out="docs/answers/",
        temperature=0,
        max_tokens=6,
        concurrency=2,
        progress=False,
    )
    assert first.written == [
        "docs/answers/a.md.txt",
        "docs/answers/b.md.txt",
        "docs/answers/c.md.txt",
    ], first.failed
    assert not first.failed and not first.skipped
    for name in ("a", "b", "c"):
        assert (docs / "answers" / f"{name}.md.txt").read_text().strip()
    requests = ai_totals(catalog, "local")["requests"]
    assert requests == 3
    again = repo.ai.map(
        "Summarise in three words.",
        files="docs/*.md",
        out="docs/answers/",
        temperature=0,
        max_tokens=6,
        concurrency=2,
        progress=False,
    )
    assert again.written == [] and not again.failed
    assert again.skipped == ["docs/a.md", "docs/b.md", "docs/c.md"]
    assert ai_totals(catalog, "local")["requests"] == requests  # nothing asked again


def test_real_async_twin(real_repo: tuple[repolib.Repository, Path]) -> None:
    repo, _ = real_repo
    sync = repo.ai.chat.completions.create(**REAL_ASK)

    async def main() -> tuple[Any, list[Any], list[str]]:
        resp = await repo.aio.chat.completions.create(**REAL_ASK)
        stream = await repo.aio.chat.completions.create(**REAL_ASK, stream=True)
        assert isinstance(stream, openai.AsyncStream)
        chunks = [c async for c in stream]
        page = await repo.aio.models.list()
        return resp, chunks, [m.id for m in page.data]

    resp, chunks, ids = asyncio.run(main())
    assert type(resp) is ChatCompletion
    assert resp.choices[0].message.content == sync.choices[0].message.content
    assert "".join(content(chunks)) == sync.choices[0].message.content
    assert all(c.choices for c in chunks)
    assert ids == ["smollm2"]


# =============================================================================================
# Policy on the final body (fake server)
# =============================================================================================

OVER_LIMIT = [
    pytest.param({"max_tokens": 500}, id="max_tokens"),
    pytest.param({"max_completion_tokens": 500}, id="max_completion_tokens"),
    pytest.param({"n_predict": 500}, id="n_predict"),
    pytest.param({"extra_body": {"max_tokens": 500}}, id="extra_body-max_tokens"),
    pytest.param(
        {"extra_body": {"max_completion_tokens": 500}}, id="extra_body-max_completion_tokens"
    ),
    pytest.param({"extra_body": {"n_predict": 500}}, id="extra_body-n_predict"),
    pytest.param({"extra_body": {"options": {"num_predict": 500}}}, id="options.num_predict"),
    pytest.param({"extra_body": {"max_new_tokens": 500}}, id="extra_body-max_new_tokens"),
    pytest.param({"max_tokens": 10, "extra_body": {"n_predict": 500}}, id="small-and-big"),
    pytest.param(
        {"max_tokens": 10, "extra_body": {"options": {"num_predict": 500}}},
        id="small-and-big-ollama",
    ),
]
LIMIT = 50


def sent_limits(body: dict[str, Any]) -> list[int]:
    """Every completion-length field in a body the fake server received."""
    found = [
        body[f]
        for f in (
            "max_tokens",
            "max_completion_tokens",
            "n_predict",
            "max_new_tokens",
            "num_predict",
        )
        if f in body
    ]
    options = body.get("options")
    if isinstance(options, dict) and "num_predict" in options:
        found.append(options["num_predict"])
    return found


@pytest.mark.parametrize("params", OVER_LIMIT)
def test_policy_refuses_every_spelling_of_max_tokens(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI, params: dict[str, Any]
) -> None:
    repo = open_key(catalog, ai_repo, "capped", ai={"max_tokens": LIMIT})
    with pytest.raises(PolicyViolation) as ei:
        repo.ai.chat.completions.create(model="m1", messages=HI, **params)
    assert "500" in str(ei.value) and str(LIMIT) in str(ei.value)
    assert fake.chat_requests() == []


@pytest.mark.parametrize("params", OVER_LIMIT)
def test_policy_clamps_every_spelling_of_max_tokens(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI, params: dict[str, Any]
) -> None:
    repo = open_key(catalog, ai_repo, "clamped", ai={"max_tokens": LIMIT, "clamp": True})
    resp = repo.ai.chat.completions.create(model="m1", messages=HI, **params)
    (sent,) = fake.chat_requests()
    limits = sent_limits(sent.body)
    assert limits and all(0 <= v <= LIMIT for v in limits), sent.body
    assert sent.body["max_tokens"] <= LIMIT
    assert resp.usage is not None and resp.usage.completion_tokens <= LIMIT


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"extra_body": {"n_predict": -1}}, id="n_predict=-1"),
        pytest.param({"extra_body": {"options": {"num_predict": -1}}}, id="num_predict=-1"),
        pytest.param({}, id="nothing"),
    ],
)
def test_policy_bounds_a_request_that_asks_for_no_limit(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI, params: dict[str, Any]
) -> None:
    """llama.cpp's n_predict=-1 / Ollama's num_predict=-1 mean "no limit": sent bounded."""
    repo = open_key(catalog, ai_repo, "capped", ai={"max_tokens": LIMIT})
    repo.ai.chat.completions.create(model="m1", messages=HI, **params)
    (sent,) = fake.chat_requests()
    limits = sent_limits(sent.body)
    assert limits and all(0 <= v <= LIMIT for v in limits), sent.body


def test_a_second_model_in_extra_body_does_not_change_the_upstream_model(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    repo = open_key(catalog, ai_repo, "fast-only", ai={"models": ["fast"]})
    repo.ai.chat.completions.create(
        model="fast",
        messages=HI,
        max_tokens=3,
        extra_body={"model": "gpt-expensive", "stream": False},
    )
    repo.ai.chat.completions.create(
        model="fast", messages=HI, max_tokens=3, stream=True, extra_body={"model": "m1-huge"}
    ).close()
    bodies = [r.body for r in fake.chat_requests()]
    assert [b["model"] for b in bodies] == ["m1", "m1"]
    # nor can the caller reach the endpoint's headers or query string
    for extra in (
        {"extra_headers": {"Authorization": "Bearer mine"}},
        {"extra_query": {"model": "gpt-expensive"}},
    ):
        with pytest.raises(ConfigError):
            repo.ai.chat.completions.create(model="fast", messages=HI, **extra)
    assert len(fake.chat_requests()) == 2


def test_library_asks_upstream_for_stream_usage_itself(
    ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    chunks = list(
        ai_repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=3, stream=True)
    )
    (sent,) = fake.chat_requests()
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert content(chunks) == ["w0", " w1", " w2"]
    assert all(c.choices for c in chunks)  # the usage chunk was ours, not passed on


# =============================================================================================
# Fallback and cooldown
# =============================================================================================


@pytest.mark.parametrize("failure", [500, 503, 429, "slow"])
def test_fallback_to_the_next_resource_and_cooldown(
    two_repo: repolib.Repository,
    fake: FakeOpenAI,
    fake_b: FakeOpenAI,
    catalog: repolib.Catalog,
    failure: Any,
) -> None:
    clock = Clock(1000.0)  # the cooldown is timed by the catalog's interval clock
    two_repo = repolib.Catalog(catalog.home, monotonic=clock).repository("aitest")
    fake.mode = failure
    tries = ai_client.RETRIES + 1
    resp = two_repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=4)
    assert resp.choices[0].message.content == "w0 w1 w2 w3"
    assert (len(fake.chat_requests()), len(fake_b.chat_requests())) == (tries, 1)

    # while alpha cools down, calls go straight to beta (streams too)
    two_repo.ai.chat.completions.create(model="fast", messages=HI, max_tokens=2)
    stream = two_repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=2, stream=True)
    assert content(list(stream)) == ["w0", " w1"]
    assert (len(fake.chat_requests()), len(fake_b.chat_requests())) == (tries, 3)

    alpha, beta = ai_totals(catalog, "alpha"), ai_totals(catalog, "beta")
    assert alpha["requests"] == tries and alpha["errors"] == tries
    assert beta["requests"] == 3 and "errors" not in beta

    # once the cooldown is over, alpha (healthy again) is first in line again
    fake.mode = "ok"
    clock.t += ai_client.COOLDOWN_S
    two_repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=2)
    assert (len(fake.chat_requests()), len(fake_b.chat_requests())) == (tries + 1, 3)


def test_a_4xx_goes_back_to_the_caller_without_fallback(
    two_repo: repolib.Repository, fake: FakeOpenAI, fake_b: FakeOpenAI, catalog: repolib.Catalog
) -> None:
    fake.push(400)
    with pytest.raises(UpstreamError) as ei:
        two_repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=4)
    assert ei.value.status == 400
    assert "fake upstream answered 400" in str(ei.value)
    assert len(fake.chat_requests()) == 1  # no retry either
    assert fake_b.chat_requests() == []
    assert ai_totals(catalog, "alpha")["errors"] == 1
    # and alpha is not cooled down for a client error
    two_repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=2)
    assert (len(fake.chat_requests()), len(fake_b.chat_requests())) == (2, 0)


def test_every_endpoint_failing_raises_upstream_error(
    two_repo: repolib.Repository, fake: FakeOpenAI, fake_b: FakeOpenAI
) -> None:
    fake.mode = fake_b.mode = 502
    with pytest.raises(UpstreamError) as ei:
        two_repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=2)
    assert ei.value.status == 502
    tries = ai_client.RETRIES + 1
    assert (len(fake.chat_requests()), len(fake_b.chat_requests())) == (tries, tries)


def test_async_twin_falls_over_too(
    two_repo: repolib.Repository, fake: FakeOpenAI, fake_b: FakeOpenAI, catalog: repolib.Catalog
) -> None:
    fake.mode = 500

    async def main() -> tuple[Any, list[str]]:
        resp = await two_repo.aio.chat.completions.create(model="m1", messages=HI, max_tokens=3)
        stream = await two_repo.aio.chat.completions.create(
            model="m1", messages=HI, max_tokens=2, stream=True
        )
        return resp, content([c async for c in stream])

    resp, chunks = asyncio.run(main())
    assert resp.choices[0].message.content == "w0 w1 w2"
    assert chunks == ["w0", " w1"]
    assert len(fake.chat_requests()) == ai_client.RETRIES + 1
    assert len(fake_b.chat_requests()) == 2
    assert ai_totals(catalog, "beta")["completion_tokens"] == 5


# =============================================================================================
# Policy limits: models, max tokens, rpm, budgets
# =============================================================================================


def test_a_disallowed_model_is_refused(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    repo = open_key(catalog, ai_repo, "fast-only", ai={"models": ["fast"]})
    with pytest.raises(PolicyViolation) as ei:
        repo.ai.chat.completions.create(model="m1", messages=HI)
    assert "'m1'" in str(ei.value) and "fast" in str(ei.value)
    with pytest.raises(PolicyViolation):
        repo.ai.embeddings.create(model="m1", input="hello")
    assert fake.requests == []
    # models.list shows what the policy names, not the upstream target
    assert [m.id for m in repo.ai.models.list()] == ["fast"]
    assert [m.id for m in ai_repo.ai.models.list()] == ["fast", "m1"]
    repo.ai.chat.completions.create(model="fast", messages=HI, max_tokens=2)
    assert len(fake.chat_requests()) == 1


def test_an_over_long_max_tokens_is_refused(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    repo = open_key(catalog, ai_repo, "capped", ai={"max_tokens": LIMIT})
    with pytest.raises(PolicyViolation) as ei:
        repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=LIMIT + 1)
    assert str(LIMIT + 1) in str(ei.value) and f"limit of {LIMIT}" in str(ei.value)
    repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=LIMIT)
    assert [r.body["max_tokens"] for r in fake.chat_requests()] == [LIMIT]


@BOTH_STORES
def test_rpm_limit_refuses_and_says_when_it_resets(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    now = [T0]
    repo = open_key(catalog, ai_repo, "slowpoke", ai={"rpm": 2}, clock=lambda: now[0])
    for _ in range(2):
        repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=2)
    with pytest.raises(PolicyViolation) as ei:
        repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=2)
    msg = str(ei.value)
    assert "2 requests per minute" in msg and "resets in 45 s" in msg, msg
    assert not isinstance(ei.value, BudgetExceeded)
    assert len(fake.chat_requests()) == 2
    now[0] += 60
    repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=2)
    assert len(fake.chat_requests()) == 3


@BOTH_STORES
def test_token_budget_refuses_and_says_when_it_resets(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    now = [T0]
    repo = open_key(catalog, ai_repo, "budgeted", ai={"token_budget": 100}, clock=lambda: now[0])
    spent = 0
    for _ in range(2):  # each reserves estimate + 40 = 46, then settles to 2 + 40 = 42
        r = repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=40)
        assert r.usage is not None
        spent += r.usage.total_tokens
    assert ledger(catalog, repo.key_id, now[0]) == spent == 84
    with pytest.raises(BudgetExceeded) as ei:
        repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=40)
    msg = str(ei.value)
    _, resets = period_key("day", now[0])
    assert "100 tokens per day" in msg and iso(resets) in msg, msg
    assert len(fake.chat_requests()) == 2
    assert ledger(catalog, repo.key_id, now[0]) == 84  # a refusal reserves nothing
    # a smaller request still fits; the next day starts from zero
    repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=4)
    now[0] = resets + 1
    repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=40)
    assert ledger(catalog, repo.key_id, now[0]) == 42


RACE_WORKER = r"""
import json, sys, threading
import repolib
home, token, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
repo = repolib.open("aitest", key=token, home=home)
repo.ai.models.list()  # warm up: key checked, imports done
results, lock = [], threading.Lock()
go = threading.Event()

def one():
    go.wait()
    try:
        r = repo.ai.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "race"}], max_tokens=20)
        out = ["ok", r.usage.prompt_tokens, r.usage.completion_tokens]
    except Exception as exc:
        out = [type(exc).__name__, str(exc), 0]
    with lock:
        results.append(out)

ts = [threading.Thread(target=one) for _ in range(threads)]
for t in ts:
    t.start()
print("ready", flush=True)
sys.stdin.readline()
go.set()
for t in ts:
    t.join()
print(json.dumps(results), flush=True)
"""


@BOTH_STORES
def test_budget_race_across_processes(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI, home: Path
) -> None:
    """20 parallel calls from 3 processes against a budget for 7: 7 pass, 13 are refused."""
    messages = [{"role": "user", "content": "race"}]
    cost = estimate_prompt(messages) + 20  # the reservation of one call
    fake.prompt_tokens = estimate_prompt(messages)  # usage = reservation: settling is exact
    fake.delay = 0.3  # keeps calls in flight together
    budget = 7 * cost + cost // 2
    token = ai_repo.create_key("racer", "read", ai={"token_budget": budget}).token
    key_id = repolib.keys.parse_token(token)[0]

    peak = [0.0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], ledger(catalog, key_id))
            time.sleep(0.005)

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_WORKER, str(home), token, str(n)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (7, 7, 6)
    ]
    watcher = threading.Thread(target=watch, daemon=True)
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", (
                p.stderr.read() if p.stderr else ""
            )
        watcher.start()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    watcher.join(5)
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    results = [r for out, _ in outs for r in json.loads(out.strip().splitlines()[-1])]
    assert len(results) == 20
    ok = [r for r in results if r[0] == "ok"]
    refused = [r for r in results if r[0] != "ok"]
    assert len(ok) == 7 and len(refused) == 13, results
    assert {r[0] for r in refused} == {"BudgetExceeded"}, refused
    assert all(f"{budget} tokens per day" in r[1] for r in refused)
    assert len(fake.chat_requests()) == 7
    # reserve-then-settle: never above the budget (usage here equals the reservation, so no
    # call in flight could have pushed it over), and finally exactly what was used
    peak[0] = max(peak[0], ledger(catalog, key_id))
    assert peak[0] <= budget
    used = sum(p + c for _, p, c in ok)
    assert ledger(catalog, key_id) == used == 7 * cost
    totals = ai_totals(catalog, "alpha")
    assert totals["requests"] == 7
    assert totals["prompt_tokens"] + totals["completion_tokens"] == used


def _big_tools(words: int = 1500) -> list[dict[str, Any]]:
    """A tool schema of a few thousand words: billed as prompt by every upstream."""
    desc = " ".join(f"w{i}" for i in range(words))
    return [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": desc,
                "parameters": {
                    "type": "object",
                    "properties": {"q": {"type": "string", "description": desc}},
                },
            },
        }
    ]


def test_reservations_count_every_part_billed_as_prompt(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    repo = open_key(catalog, ai_repo, "budgeted", ai={"token_budget": 500})
    big = "x " * 2000  # ~1,000 tokens by the estimate, whatever field carries it
    call = {"type": "function", "function": {"name": "f", "arguments": big}}
    for kwargs in (
        {"messages": HI, "tools": _big_tools()},
        {"messages": HI, "functions": [{"name": "f", "description": big}]},
        {
            "messages": HI,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": {"type": "object", "description": big}},
            },
        },
        {
            "messages": [
                *HI,
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", **call}]},
            ]
        },
        {
            "messages": [
                *HI,
                {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": big}]},
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                    ],
                }
            ]
        },
        {"messages": HI, "extra_body": {"grammar": big}},
    ):
        with pytest.raises(BudgetExceeded):
            repo.ai.chat.completions.create(model="m1", max_tokens=4, **kwargs)
    assert fake.chat_requests() == []  # refused before anything reached the upstream
    assert ledger(catalog, repo.key_id) == 0


def test_parallel_calls_with_large_tool_schemas_cannot_overspend(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    """20 calls at once, each carrying ~3,000 words of tools, against a 5,000-token budget:
    every reservation covers what the upstream bills, so the ledger never passes the budget."""
    budget = 5_000
    repo = open_key(catalog, ai_repo, "tools", ai={"token_budget": budget})
    tools = _big_tools()
    fake.delay = 0.2  # keeps the calls in flight together
    barrier = threading.Barrier(20)
    spent: list[int | None] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        try:
            r = repo.ai.chat.completions.create(model="m1", messages=HI, tools=tools, max_tokens=8)
            assert r.usage is not None
            got: int | None = r.usage.total_tokens
        except BudgetExceeded:
            got = None
        with lock:
            spent.append(got)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ok = [s for s in spent if s is not None]
    assert len(spent) == 20 and ok and len(ok) < 20
    assert min(ok) > 3_000  # the upstream really billed the tools
    assert ledger(catalog, repo.key_id) == sum(ok) <= budget
    assert len(fake.chat_requests()) == len(ok)


def test_the_token_cap_bounds_all_n_choices(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    capped = open_key(catalog, ai_repo, "capped", ai={"max_tokens": 100})
    for n, max_tokens in ((2, 60), (101, None), (4, None)):
        if max_tokens is None and n == 4:
            capped.ai.chat.completions.create(model="m1", messages=HI, n=n)
            assert fake.chat_requests()[-1].body["max_tokens"] == 25  # 4 choices share 100
            continue
        with pytest.raises(PolicyViolation, match="choices"):
            capped.ai.chat.completions.create(model="m1", messages=HI, n=n, max_tokens=max_tokens)
    capped.ai.chat.completions.create(model="m1", messages=HI, n=2, max_tokens=50)
    clamp = open_key(catalog, ai_repo, "clamp", ai={"max_tokens": 100, "clamp": True})
    clamp.ai.chat.completions.create(
        model="m1", messages=HI, n=4, max_tokens=100, extra_body={"n_predict": 100}
    )
    body = fake.chat_requests()[-1].body
    assert body["max_tokens"] == body["n_predict"] == 25
    budgeted = open_key(catalog, ai_repo, "budget", ai={"token_budget": 250})
    with pytest.raises(BudgetExceeded):  # 3 choices x 100 tokens do not fit 250
        budgeted.ai.chat.completions.create(model="m1", messages=HI, n=3, max_tokens=100)


# =============================================================================================
# Usage
# =============================================================================================


@BOTH_STORES
def test_usage_totals_equal_the_responses_usage(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI, cli: Cli
) -> None:
    repo = open_key(catalog, ai_repo, "counted", ai={"token_budget": 100_000})
    usages = []
    for n in (3, 5, 7):
        usages.append(repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=n).usage)
    chunks = list(
        repo.ai.chat.completions.create(
            model="fast",
            messages=HI,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usages.append(chunks[-1].usage)
    usages.append(repo.ai.embeddings.create(model="m1", input=["one two", "three"]).usage)

    async def via_aio() -> Any:
        return (await repo.aio.chat.completions.create(model="m1", messages=HI, max_tokens=2)).usage

    usages.append(asyncio.run(via_aio()))
    assert all(u is not None for u in usages)
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(getattr(u, "completion_tokens", 0) for u in usages)
    totals = ai_totals(catalog)
    assert totals["requests"] == len(usages) == 6
    assert totals["prompt_tokens"] == prompt
    assert totals["completion_tokens"] == completion
    assert "errors" not in totals and "estimated" not in totals
    assert totals["latency_ms"] > 0
    # the budget ledger settled to the same numbers
    assert ledger(catalog, repo.key_id) == prompt + completion
    # and the CLI shows them
    rows = json.loads(cli("usage", "aitest", "--ai", "--json").stdout)
    assert sum(r.get("prompt_tokens", 0) for r in rows) == prompt
    assert sum(r.get("completion_tokens", 0) for r in rows) == completion
    assert {r["model"] for r in rows} == {"m1", "fast"}


@BOTH_STORES
def test_a_cut_stream_is_charged_its_reservation(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    repo = open_key(catalog, ai_repo, "cut", ai={"token_budget": 10_000})
    fake.push("stream_cut")
    stream = repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=30, stream=True)
    got = []
    with pytest.raises(UpstreamError):
        for chunk in stream:
            got.append(chunk)
    assert content(got) in ([], ["w0"])  # what came before the cut, if anything
    reservation = estimate_prompt(HI) + 30
    assert ledger(catalog, repo.key_id) == reservation
    totals = ai_totals(catalog)
    assert totals["requests"] == 1 and totals["errors"] == 1 and totals["estimated"] == 1
    assert totals["prompt_tokens"] + totals["completion_tokens"] == reservation


@BOTH_STORES
def test_a_stream_closed_before_done_is_charged_its_reservation(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    """A clean close with no usage chunk, no finish_reason and no [DONE] is a cut too."""
    repo = open_key(catalog, ai_repo, "eof", ai={"token_budget": 10_000})
    fake.push("stream_eof")
    chunks = list(
        repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=30, stream=True)
    )
    assert content(chunks) == ["w0"]
    assert not any(c.choices[0].finish_reason for c in chunks if c.choices)
    assert ledger(catalog, repo.key_id) == estimate_prompt(HI) + 30


@BOTH_STORES
@pytest.mark.parametrize("stream", [False, True])
def test_no_usage_from_the_server_is_estimated(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI, stream: bool
) -> None:
    repo = open_key(catalog, ai_repo, "est", ai={"token_budget": 10_000})
    fake.mode = "no_usage"
    if stream:
        text = "".join(
            content(
                list(
                    repo.ai.chat.completions.create(
                        model="m1", messages=HI, max_tokens=9, stream=True
                    )
                )
            )
        )
    else:
        resp = repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=9)
        assert resp.usage is None
        text = resp.choices[0].message.content or ""
    assert text == "w0 w1 w2 w3 w4 w5 w6 w7 w8"
    totals = ai_totals(catalog)
    assert totals["estimated"] == 1 and "errors" not in totals
    assert totals["prompt_tokens"] == estimate_prompt(HI)
    assert totals["completion_tokens"] == estimate_tokens(text)
    assert ledger(catalog, repo.key_id) == estimate_prompt(HI) + estimate_tokens(text)


def test_embeddings_through_the_facade(
    ai_repo: repolib.Repository, fake: FakeOpenAI, catalog: repolib.Catalog
) -> None:
    resp = ai_repo.ai.embeddings.create(model="fast", input=["a b c", "d"])
    assert type(resp) is CreateEmbeddingResponse
    assert [len(d.embedding) for d in resp.data] == [4, 4]
    (sent,) = [r for r in fake.requests if r.path.endswith("/embeddings")]
    assert sent.body["model"] == "m1" and sent.body["input"] == ["a b c", "d"]
    assert ai_totals(catalog)["prompt_tokens"] == 4


# =============================================================================================
# Who may use AI
# =============================================================================================


def test_a_read_key_uses_ai_only_when_its_policy_allows(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    for access in ("read", "write"):
        off = open_key(catalog, ai_repo, f"no-ai-{access}", access, ai=None)
        with pytest.raises(PolicyViolation, match="AI use is off"):
            off.ai.chat.completions.create(model="m1", messages=HI)
        with pytest.raises(PolicyViolation):
            off.ai.models.list()
        with pytest.raises(PolicyViolation):
            off.ask("anything?", files=None)
        with pytest.raises(PolicyViolation):
            asyncio.run(off.aio.chat.completions.create(model="m1", messages=HI))
    assert fake.requests == []
    on = open_key(catalog, ai_repo, "reader-ai", "read", ai=True)
    resp = on.ai.chat.completions.create(model="m1", messages=HI, max_tokens=2)
    assert resp.choices[0].message.content == "w0 w1"


def test_a_key_of_another_repository_cannot_open_this_one(
    catalog: repolib.Catalog, ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    other = catalog.create_repository("other-repo")
    other.add_llm("alpha", base_url=fake.url, api_key=LLM_API_KEY, models=["m1"])
    token = other.create_key("theirs", "admin", ai=True).token
    with pytest.raises(InvalidKey):
        repolib.open("aitest", key=token, home=catalog.home)
    with pytest.raises(InvalidKey):
        catalog.open("aitest", token)
    theirs = repolib.open("other-repo", key=token, home=catalog.home)
    assert [m.id for m in theirs.ai.models.list()] == ["m1"]  # its own LLMs only
    assert fake.requests == []


# =============================================================================================
# The upstream key never leaves the library
# =============================================================================================


def test_upstream_key_in_no_repr_exception_log_or_cli_output(
    catalog: repolib.Catalog,
    ai_repo: repolib.Repository,
    fake: FakeOpenAI,
    cli: Cli,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in (None, "openai", "httpx", "httpx2", "httpcore", "repolib"):
        caplog.set_level(logging.DEBUG, logger=name)
    token = ai_repo.create_key("scan", "read", ai=True).token
    repo = repolib.open("aitest", key=token, home=catalog.home)
    texts: list[tuple[str, str]] = []

    def keep(where: str, *objs: Any) -> None:
        for o in objs:
            texts.append((where, repr(o)))
            texts.append((where, str(o)))
            if hasattr(o, "model_dump_json"):
                texts.append((where, o.model_dump_json()))

    def failing(where: str, fn: Any) -> None:
        with pytest.raises(repolib.RepolibError) as ei:
            fn()
        e = ei.value
        keep(where, e, *e.args)
        texts.append((where, "".join(traceback.format_exception(e))))

    resp = repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=2)
    assert fake.chat_requests()[-1].bearer == LLM_API_KEY  # the key is really in play
    stream = repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=2, stream=True)
    keep("stream", stream)
    chunks = list(stream)
    emb = repo.ai.embeddings.create(model="m1", input="x")
    models = repo.ai.models.list()
    raw = repo.ai.chat.completions.with_raw_response.create(model="m1", messages=HI)
    with repo.ai.chat.completions.with_streaming_response.create(
        model="m1", messages=HI, stream=True
    ) as streamed:
        lines = list(streamed.iter_lines())
    ups = list(repo.ai._core._clients.values())
    keep(
        "objects",
        repo,
        repo.ai,
        repo.aio,
        repo.ai._core,
        repo.ai.chat,
        repo.ai.chat.completions,
        repo.ai.embeddings,
        repo.ai.models,
        resp,
        emb,
        models,
        *chunks,
        *ups,
        *(u.sdk for u in ups),
        *(u.http for u in ups),
        raw,
        raw.http_request,
        dict(raw.http_request.headers),
        streamed,
        streamed.http_request,
        dict(streamed.http_request.headers),
        *lines,
        *repo.resources(),
        ai_repo,
        *ai_repo.resources(),
    )

    fake.push(401)  # the error body echoes the bearer token
    failing("401", lambda: repo.ai.chat.completions.create(model="m1", messages=HI))
    fake.push(401)
    failing(
        "401 stream", lambda: repo.ai.chat.completions.create(model="m1", messages=HI, stream=True)
    )
    fake.push("stream_error")  # an SSE error event mid-stream echoing the token
    failing(
        "stream error",
        lambda: list(repo.ai.chat.completions.create(model="m1", messages=HI, stream=True)),
    )
    fake.mode = 401
    failing(
        "aio 401", lambda: asyncio.run(repo.aio.chat.completions.create(model="m1", messages=HI))
    )
    fake.mode = "ok"

    env = {"REPOLIB_KEY": token}
    cli("ai", "models", "aitest", env=env)
    cli("ai", "chat", "aitest", "hello", "--model", "m1", "--max-tokens", "3", env=env)
    fake.push(401)
    cli("ai", "chat", "aitest", "hello", "--model", "m1", env=env, ok=False)
    fake.push(401)
    cli("resource", "test", "aitest", "alpha", ok=False)
    cli("usage", "aitest", "--ai")
    assert any("w0 w1 w2" in o for o in cli.outputs)

    texts += [("cli", o) for o in cli.outputs]
    texts.append(("log", caplog.text))
    texts += [
        ("log record", f"{r.getMessage()} {r.args!r} {r.exc_text or ''}") for r in caplog.records
    ]
    leaks = sorted({where for where, text in texts if LLM_API_KEY in text})
    assert leaks == [], f"the upstream key appears in: {leaks}"


def test_upstream_error_carries_no_request_or_original_exception(
    ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    """``raise ... from None`` still leaves the SDK error (request, headers, body) reachable
    through ``__context__``; nothing reachable from the error may hold the key."""
    fake.push(401)
    with pytest.raises(UpstreamError) as ei:
        ai_repo.ai.chat.completions.create(model="m1", messages=HI)
    assert ei.value.status == 401
    chain = exception_chain(ei.value)
    # the only SDK-class error is repolib's own twin: the resource's credentials were refused,
    # which is a bad gateway to the caller (their own key is fine) ...
    assert not [
        e
        for e in chain
        if isinstance(e, openai.OpenAIError) and not isinstance(e, repolib.RepolibError)
    ], [type(e).__name__ for e in chain]
    assert isinstance(ei.value, openai.InternalServerError) and ei.value.status_code == 502
    # ... whose request and response are synthetic: no header, no upstream address
    assert ei.value.request.url.host == "repolib.invalid"
    assert "authorization" not in ei.value.request.headers
    assert "authorization" not in ei.value.response.headers
    assert not [
        e
        for e in chain
        if LLM_API_KEY in repr(e)
        or LLM_API_KEY in str(e)
        or LLM_API_KEY in repr(getattr(e, "body", ""))
    ]


def test_returned_stream_does_not_expose_the_upstream_key(
    ai_repo: repolib.Repository, fake: FakeOpenAI
) -> None:
    """The stream handed to the caller is the SDK's own; its public ``response`` must not
    carry the upstream Authorization header."""
    stream = ai_repo.ai.chat.completions.create(model="m1", messages=HI, max_tokens=2, stream=True)
    try:
        assert fake.chat_requests()[-1].bearer == LLM_API_KEY
        headers = dict(stream.response.request.headers)
        assert LLM_API_KEY not in json.dumps(headers)
    finally:
        stream.close()


def test_repository_html_summary(repo: repolib.Repository) -> None:
    html = repo._repr_html_()
    assert "<table>" in html and "analytics" in html and "raw" in html
    key = repolib.open("analytics", key=repo.create_key("nb", "read", ai=True).token)
    shown = key._repr_html_()
    assert "read access" in shown and "fast" in shown and "smollm2" in shown
    assert "usage: none yet" in shown
    key.record_usage("raw", requests=2, bytes_read=10)
    assert "requests=2" in key._repr_html_() and "bytes_read=10" in key._repr_html_()
    assert LLM_API_KEY not in shown
