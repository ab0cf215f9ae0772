"""``repolib serve``: the server as a subprocess, real clients (openai SDK, LangChain, httpx).

Upstream is the wire-format fake (tests/fake_openai.py) for what a model will not do on demand
(errors, slow or endless streams), and the real llama.cpp model for the happy path. One server
per module serves most tests; lifecycle tests (SIGTERM, limits, TLS) start their own.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="repolib serve needs the serve extra (uvicorn)")
pytest.importorskip("starlette", reason="repolib serve needs the serve extra (starlette)")

import httpx
import openai

import repolib
from repolib.ai.policy import period_key
from repolib.keys import parse_token

from .fake_openai import FakeOpenAI, fake_openai
from .helpers import LLM_API_KEY
from .serve_process import ServeProcess, repolib_serve

HI = [{"role": "user", "content": "hi there"}]
ISSUED: list[str] = []  # every token of this module: none may show in the server's log


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with fake_openai(models=["m1"]) as f:
        yield f


class Served:
    """The module's server, its catalog (admin secret) and a way to issue keys."""

    def __init__(
        self, server: ServeProcess, catalog: repolib.Catalog, admin: repolib.Repository
    ) -> None:
        self.server, self.catalog, self.admin = server, catalog, admin

    @property
    def url(self) -> str:
        return self.server.url

    def key(self, name: str, ai: Any = True) -> str:
        token = self.admin.create_key(name, "read", ai=ai).token
        ISSUED.append(token)
        return token

    def sdk(self, token: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=token, max_retries=0, timeout=20)

    def ledger(self, token: str) -> float:
        p, _ = period_key("day", time.time())
        with self.catalog._ctx.store.read() as tx:
            return tx.ledger_get(parse_token(token)[0], p)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("serve") / "home"
    catalog = repolib.Catalog(home)
    catalog.init()
    admin = catalog.create_repository("aitest")
    admin.add_llm(
        "alpha",
        base_url=upstream.url,
        api_key=LLM_API_KEY,
        models=["m1"],
        aliases={"fast": "m1"},
        timeout=0.5,
    )
    try:
        with repolib_serve(home) as server:
            yield Served(server, catalog, admin)
    finally:
        catalog.close()


@pytest.fixture
def fake(upstream: FakeOpenAI) -> Iterator[FakeOpenAI]:
    upstream.reset()
    yield upstream
    upstream.reset()


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "code"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


# -- the happy path, with the SDK ---------------------------------------------------------------


def test_openai_sdk_gets_chat_streams_embeddings_and_models(
    served: Served, fake: FakeOpenAI
) -> None:
    token = served.key("sdk", ai=repolib.AIPolicy(token_budget=10_000))
    c = served.sdk(token)
    resp = c.chat.completions.create(model="fast", messages=HI, max_tokens=3)
    assert resp.choices[0].message.content == "w0 w1 w2"
    assert resp.usage is not None and (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (
        2,
        3,
    )
    sent = fake.chat_requests()[-1]
    assert sent.body["model"] == "m1" and sent.bearer == LLM_API_KEY  # the resource's key ...
    assert token not in json.dumps(sent.headers)  # ... never the caller's

    chunks = list(c.chat.completions.create(model="fast", messages=HI, max_tokens=3, stream=True))
    assert [
        ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content
    ] == ["w0", " w1", " w2"]
    assert all(ch.choices for ch in chunks)  # usage was asked upstream by repolib, not by us
    assert fake.chat_requests()[-1].body["stream_options"] == {"include_usage": True}

    asked = list(
        c.chat.completions.create(
            model="fast",
            messages=HI,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].choices == [] and asked[-1].usage is not None
    assert asked[-1].usage.total_tokens == 5

    emb = c.embeddings.create(model="m1", input=["a b", "c"])
    assert len(emb.data) == 2 and emb.data[0].embedding[:2] == [3.0, 1.0]
    assert [m.id for m in c.models.list()] == ["fast", "m1"]
    assert c.models.retrieve("fast").id == "fast"
    # three chats of 2 + 3 tokens and 3 embedded words, each settled to what upstream reported
    assert served.ledger(token) == 3 * 5 + 3


def test_langchain_chatopenai_with_base_url(served: Served, fake: FakeOpenAI) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=served.url, api_key=served.key("lc"), model="fast", max_tokens=3, max_retries=0
    )
    msg = llm.invoke("hi there")
    assert msg.content == "w0 w1 w2"
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] == 3
    assert "".join(str(c.content) for c in llm.stream("hi there")) == "w0 w1 w2"


def test_parallel_streams(served: Served, fake: FakeOpenAI) -> None:
    fake.chunk_delay = 0.05  # 20 tokens: about 1 s per stream
    token = served.key("par")
    texts: list[str] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            stream = served.sdk(token).chat.completions.create(
                model="m1", messages=HI, max_tokens=20, stream=True
            )
            texts.append("".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices))
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - started
    assert not errors, errors
    assert texts == [" ".join(f"w{i}" for i in range(20))] * 8
    assert elapsed < 4.0, f"8 streams of ~1 s took {elapsed:.1f} s: not concurrent"


# -- errors -------------------------------------------------------------------------------------


def test_errors_have_openai_shape_status_and_sdk_class(served: Served, fake: FakeOpenAI) -> None:
    ok = served.key("errs")
    off = served.key("off", ai=None)
    fast_only = served.key("fast-only", ai={"models": ["fast"], "max_tokens": 8})
    one_rpm = served.key("rpm", ai={"rpm": 1})
    tiny = served.key("tiny", ai={"token_budget": 5})
    chat = f"{served.url}/chat/completions"

    def post(token: str | None, body: Any, raw: bytes | None = None) -> httpx.Response:
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        if raw is not None:
            return httpx.post(chat, content=raw, headers=headers, timeout=20)
        return httpx.post(chat, json=body, headers=headers, timeout=20)

    body = {"model": "fast", "messages": HI, "max_tokens": 2}
    cases: list[tuple[str, httpx.Response, int, str]] = [
        ("no key", post(None, body), 401, "invalid_api_key"),
        ("malformed key", post("rpk_nope", body), 401, "invalid_api_key"),
        ("AI off", post(off, body), 403, "policy_violation"),
        ("model not allowed", post(fast_only, {**body, "model": "m1"}), 403, "policy_violation"),
        ("over max tokens", post(fast_only, {**body, "max_tokens": 9}), 403, "policy_violation"),
        ("unknown model", post(ok, {**body, "model": "nope"}), 404, "model_not_found"),
        ("not JSON", post(ok, None, raw=b"{nope"), 400, "invalid_json"),
        ("no messages", post(ok, {"model": "fast"}), 400, "invalid_messages"),
        ("bad n", post(ok, {**body, "n": 0}), 400, "invalid_request"),
        ("SDK-only field", post(ok, {**body, "extra_headers": {"x": "y"}}), 400, "invalid_field"),
        ("budget", post(tiny, {**body, "max_tokens": 40}), 429, "token_budget_exceeded"),
    ]
    post(one_rpm, body)
    cases.append(("rpm", post(one_rpm, body), 429, "rate_limit_exceeded"))
    fake.push(500, 500)
    cases.append(("upstream 500", post(ok, body), 502, "upstream_500"))
    fake.push(400)
    cases.append(("upstream 400", post(ok, body), 400, "upstream_400"))
    fake.push("slow", "slow")
    cases.append(("upstream timeout", post(ok, body), 504, "upstream_timeout"))
    for what, response, status, code in cases:
        assert response.status_code == status, (what, response.text)
        assert error_of(response)["code"] == code, (what, response.text)
        if status == 429:
            assert 1 <= int(response.headers["retry-after"]) <= 86400, what
    by_code = {c: r for _, r, _, c in cases}
    assert "HTTP 500" in error_of(by_code["upstream_500"])["message"]
    assert "HTTP 400" in error_of(by_code["upstream_400"])["message"]

    # the SDK raises its own classes for them
    expected: list[tuple[type[Exception], str | None, dict[str, Any]]] = [
        (openai.AuthenticationError, "rpk_nope", body),
        (openai.PermissionDeniedError, off, body),
        (openai.NotFoundError, ok, {**body, "model": "nope"}),
        (openai.BadRequestError, ok, {**body, "n": 0}),
        (openai.RateLimitError, one_rpm, body),
    ]
    for cls, token, kwargs in expected:
        if token == one_rpm:  # this minute's one request used now (a slow run crosses minutes)
            post(one_rpm, body)
        with pytest.raises(cls):
            served.sdk(token or "").chat.completions.create(**kwargs)


def test_a_stream_that_fails_upstream_ends_with_an_error_event(
    served: Served, fake: FakeOpenAI
) -> None:
    fake.push("stream_error")  # one chunk, then an error event that echoes the upstream key
    with pytest.raises(openai.APIError) as ei:
        list(
            served.sdk(served.key("se")).chat.completions.create(
                model="m1", messages=HI, stream=True
            )
        )
    assert "upstream gave up" in str(ei.value) and LLM_API_KEY not in str(ei.value)


def test_upstream_key_never_in_an_answer(served: Served, fake: FakeOpenAI) -> None:
    token = served.key("leak")
    chat = f"{served.url}/chat/completions"
    answers = []
    for behaviour, stream in ((401, False), (401, True), ("stream_error", True)):
        fake.push(behaviour)
        answers.append(
            httpx.post(
                chat,
                json={"model": "m1", "messages": HI, "stream": stream},
                headers={"authorization": f"Bearer {token}"},
                timeout=20,
            )
        )
    assert fake.chat_requests()[0].bearer == LLM_API_KEY  # the key was really echoed to us
    for a in answers:
        shown = a.text + json.dumps(dict(a.headers))
        assert LLM_API_KEY not in shown and token not in shown


# -- a client that leaves, keys that change -----------------------------------------------------


def test_a_client_that_disconnects_cancels_the_upstream_stream(
    served: Served, fake: FakeOpenAI
) -> None:
    fake.chunk_delay = 0.1  # 100 tokens: 10 s, unless cancelled
    token = served.key("leaver", ai={"token_budget": 100_000})
    key_id = parse_token(token)[0]
    with (
        httpx.Client(timeout=20) as client,
        client.stream(
            "POST",
            f"{served.url}/chat/completions",
            json={"model": "m1", "messages": HI, "max_tokens": 100, "stream": True},
            headers={"authorization": f"Bearer {token}"},
        ) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    # the server noticed, closed its upstream call, and kept the reservation as the charge
    assert fake.aborted_event.wait(5), "the upstream stream was not cancelled"
    assert served.server.wait_for_log(f"status=499 key={key_id}")
    assert served.ledger(token) == 106  # prompt estimate 6 + max_tokens 100, nothing settled


def test_revoked_and_rotated_keys_stop_within_2_s(served: Served, fake: FakeOpenAI) -> None:
    def refused_within(token: str, limit: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < limit + 1:
            try:
                served.sdk(token).models.list()
            except openai.AuthenticationError:
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError("the key still works")

    token = served.key("revoked-soon")
    assert [m.id for m in served.sdk(token).models.list()] == ["fast", "m1"]  # now cached
    served.admin.revoke_key(parse_token(token)[0])
    assert refused_within(token, 2.0) < 2.0

    old = served.key("rotated-soon")
    served.sdk(old).models.list()
    new = served.admin.rotate_key(parse_token(old)[0], grace=0).token
    ISSUED.append(new)
    assert served.sdk(new).chat.completions.create(model="m1", messages=HI, max_tokens=1)
    assert refused_within(old, 2.0) < 2.0


# -- what operators see -------------------------------------------------------------------------


def test_metrics_and_healthz_need_no_key(served: Served, fake: FakeOpenAI) -> None:
    token = served.key("metered")
    key_id = parse_token(token)[0]
    served.sdk(token).chat.completions.create(model="fast", messages=HI, max_tokens=3)
    assert httpx.get(f"{served.server.base}/healthz").json() == {"status": "ok"}
    text = httpx.get(f"{served.server.base}/metrics").text
    labels = f'key_id="{key_id}",model="fast"'
    assert (
        f'repolib_requests_total{{{labels},endpoint="/v1/chat/completions",status="200"}} 1' in text
    )
    assert f'repolib_tokens_total{{{labels},kind="completion"}} 3' in text
    assert f"repolib_request_duration_seconds_count{{{labels}}} 1" in text
    buckets = re.findall(
        rf'repolib_request_duration_seconds_bucket{{{labels},le="[^"]+"}} (\d+)', text
    )
    assert len(buckets) == 15 and buckets[-1] == "1"
    assert all(line.startswith(("#", "repolib_")) for line in text.splitlines())


def test_access_log_has_one_line_per_request_and_no_secret(served: Served) -> None:
    """Runs last in this module: the log of everything above."""
    log = served.server.log()
    access = [line for line in log.splitlines() if "repolib.serve.access" in line]
    assert len(access) >= 30
    for line in access:
        assert re.search(
            r" status=\d{3} key=\S+ model=\S* stream=(true|false) "
            r"prompt_tokens=\d+ completion_tokens=\d+ ms=[\d.]+",
            line,
        ), line
    for secret in [LLM_API_KEY, *(parse_token(t)[1] for t in ISSUED)]:
        assert secret not in log
    assert "authorization" not in log.lower() and "Traceback" not in log


# -- servers of their own -----------------------------------------------------------------------


def _own_catalog(home: Path, upstream: FakeOpenAI) -> tuple[repolib.Catalog, str]:
    catalog = repolib.Catalog(home)
    catalog.init()
    admin = catalog.create_repository("aitest")
    admin.add_llm("alpha", base_url=upstream.url, api_key=LLM_API_KEY, models=["m1"])
    return catalog, admin.create_key("k", "read", ai=True).token


def test_sigterm_lets_inflight_requests_finish_and_refuses_new_ones(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    catalog, token = _own_catalog(tmp_path / "home", fake)
    fake.chunk_delay = 0.05
    with repolib_serve(tmp_path / "home") as server:
        c = openai.OpenAI(base_url=server.url, api_key=token, max_retries=0, timeout=20)
        stream = c.chat.completions.create(model="m1", messages=HI, max_tokens=30, stream=True)
        words = [next(iter(stream))]
        server.terminate()
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # no new connections ...
            httpx.get(f"{server.base}/healthz", timeout=2)
        words += list(stream)  # ... while the one in flight runs to its end
        text = "".join(ch.choices[0].delta.content or "" for ch in words if ch.choices)
        assert text == " ".join(f"w{i}" for i in range(30))
        assert server.proc.wait(10) == 0
    catalog.close()


def test_body_limit_client_timeout_and_unknown_routes(tmp_path: Path, fake: FakeOpenAI) -> None:
    catalog, token = _own_catalog(tmp_path / "home", fake)
    auth = {"authorization": f"Bearer {token}"}
    with repolib_serve(
        tmp_path / "home", "--max-body-mb", "0.05", "--client-timeout", "1"
    ) as server:
        big = {"model": "m1", "messages": [{"role": "user", "content": "x" * 60_000}]}
        r = httpx.post(f"{server.url}/chat/completions", json=big, headers=auth, timeout=10)
        assert r.status_code == 413 and error_of(r)["code"] == "body_too_large"
        assert fake.chat_requests() == []

        host, port = server.base.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\nContent-Length: 100\r\nAuthorization: Bearer "
                + token.encode()
                + b'\r\n\r\n{"model":'
            )  # and then nothing
            started = time.monotonic()
            answer = ""
            while "client_timeout" not in answer and (data := s.recv(65536)):
                answer += data.decode()
            assert time.monotonic() - started < 5
        assert answer.startswith("HTTP/1.1 408") and "client_timeout" in answer

        r = httpx.get(f"{server.base}/v2/nothing", timeout=10)
        assert r.status_code == 404 and error_of(r)["code"] == "unknown_url"
        r = httpx.get(f"{server.url}/chat/completions", headers=auth, timeout=10)
        assert r.status_code == 405
    catalog.close()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_and_the_warning_for_a_public_address_without_it(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    catalog, token = _own_catalog(tmp_path / "home", fake)
    cert, key = _self_signed(tmp_path)
    with repolib_serve(tmp_path / "home", "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        assert server.url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=10) as http:
            r = http.post(
                f"{server.url}/chat/completions",
                json={"model": "m1", "messages": HI, "max_tokens": 2},
                headers={"authorization": f"Bearer {token}"},
            )
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "w0 w1"
    assert "without TLS" not in server.log()
    with repolib_serve(tmp_path / "home", "--host", "0.0.0.0") as server:
        assert server.wait_for_log("without TLS")
    catalog.close()


# -- the real model -----------------------------------------------------------------------------


def test_real_model_through_the_server(tmp_path: Path, real_llm: str) -> None:
    catalog = repolib.Catalog(tmp_path / "home")
    catalog.init()
    admin = catalog.create_repository("real")
    admin.add_llm("local", base_url=real_llm, models=["smollm2"])
    token = admin.create_key("k", "read", ai={"max_tokens": 16}).token
    ask = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Say hello."}],
        "temperature": 0,
        "max_tokens": 6,
    }
    direct = openai.OpenAI(base_url=real_llm, api_key="unused", max_retries=0)
    want = direct.chat.completions.create(**ask).choices[0].message.content
    with repolib_serve(tmp_path / "home") as server:
        c = openai.OpenAI(base_url=server.url, api_key=token, max_retries=0, timeout=60)
        got = c.chat.completions.create(**ask)
        assert got.choices[0].message.content == want and want
        streamed = "".join(
            ch.choices[0].delta.content or ""
            for ch in c.chat.completions.create(**ask, stream=True)
            if ch.choices
        )
        assert streamed == want
        with pytest.raises(openai.PermissionDeniedError):
            c.chat.completions.create(**{**ask, "max_tokens": 17})
    catalog.close()


def test_cli_refuses_a_busy_port_and_half_a_tls_pair(cli: Any, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli("serve", "--port", str(port), ok=False)
    assert r.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr
    cert = tmp_path / "cert.pem"
    cert.write_text("not used")
    r = cli("serve", "--tls-cert", str(cert), ok=False)
    assert r.exit_code == 1 and "--tls-cert and --tls-key together" in r.stderr
