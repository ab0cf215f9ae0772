"""Dask: repo:// on workers that hold only the catalog URL and a key; repo.ai.map on executors.

The workers are real processes of a ``distributed.LocalCluster(processes=True)`` started with a
home folder of their own (no catalog.db, no admin.key): like other machines, they reach the
repository only through the shared PostgreSQL catalog URL and the key that travel with the
pickled filesystem or task. Data lives in a real S3 server (moto), so a worker decrypts the
credentials itself.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed", reason="the Dask tests need dask[distributed] (test extra)")
pytest.importorskip("openai", reason="repo.ai.map needs the llm extra (openai SDK)")

import distributed
import fsspec

import repolib
from repolib import usage

from . import servers
from .fake_openai import FakeOpenAI, fake_openai
from .helpers import LLM_API_KEY, SUITE_SECRETS, new_bucket, s3_options

WORKER_TIMEOUT_S = 60  # a task that cannot open the repository fails long before this


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[distributed.Client]:
    """Two worker processes whose environment names no catalog and no key."""
    worker_home = tmp_path_factory.mktemp("worker-home")
    with pytest.MonkeyPatch.context() as mp:  # what the workers inherit: nothing of ours
        for name in list(os.environ):
            if name.startswith(("REPOLIB_", "PG")):
                mp.delenv(name)
        mp.setenv("REPOLIB_HOME", str(worker_home))
        lc = distributed.LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None, env={}
        )
    try:
        with distributed.Client(lc) as client:
            yield client
    finally:
        lc.close()


@pytest.fixture
def bucket_repo(
    catalog: repolib.Catalog, s3_server: servers.S3Server
) -> tuple[repolib.Repository, str]:
    """Repository 'analytics' with an S3 bucket 'data' (admin secret), and its name."""
    repo = catalog.create_repository("analytics")
    repo.add_storage("data", f"s3://{new_bucket(s3_server)}", **s3_options(s3_server))
    return repo, "analytics"


def _cat(fs: Any, path: str) -> bytes:
    data: bytes = fs.cat_file(path)
    return data


def _ls(fs: Any, path: str) -> list[str]:
    return sorted(fs.ls(path, detail=False))


# -- repo:// on workers -------------------------------------------------------------------------


@pytest.mark.stores("postgres")
def test_repo_fs_on_workers_that_have_only_the_catalog_url_and_key(
    cluster: distributed.Client, bucket_repo: tuple[repolib.Repository, str]
) -> None:
    admin, _ = bucket_repo
    token = admin.create_key("dask", "write").token
    url = os.environ["REPOLIB_CATALOG_URL"]
    repo = repolib.open("analytics", key=token)
    assert repo.catalog_url == url
    for i in range(4):
        repo.fs.pipe_file(f"analytics/data/in/{i}.csv", f"a,b\n{i},{i * i}\n".encode())
    paths = [f"analytics/data/in/{i}.csv" for i in range(4)]
    got = cluster.gather(cluster.map(_cat, [repo.fs] * 4, paths, pure=False), errors="raise")
    assert got == [f"a,b\n{i},{i * i}\n".encode() for i in range(4)]
    # fsspec options only, as pandas and dask take them: the URL travels in storage_options
    import dask.dataframe as dd

    df = dd.read_csv(
        "repo://analytics/data/in/*.csv", storage_options={"key": token, "catalog_url": url}
    )
    assert sorted(df["b"].compute().tolist()) == [0, 1, 4, 9]
    # the workers counted their reads in the shared catalog
    deadline = time.monotonic() + 10
    while True:
        rows = [
            r
            for r in repolib.Catalog().usage_rows("analytics")
            if r["key_id"] == repo.key_id and r["metric"] == "bytes_read"
        ]
        if sum(r["value"] for r in rows) >= sum(len(g) for g in got) * 2:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


@pytest.mark.stores("postgres")
@pytest.mark.parametrize("case", ["revoked", "rotated", "no-key"])
def test_a_worker_that_cannot_open_the_repository_fails_its_task(
    cluster: distributed.Client,
    bucket_repo: tuple[repolib.Repository, str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    admin, _ = bucket_repo
    issued = admin.create_key(f"k-{case}", "read")
    url = os.environ["REPOLIB_CATALOG_URL"]
    if case == "no-key":  # the key came from this process's environment: it does not travel
        monkeypatch.setenv("REPOLIB_KEY", issued.token)
        fs = fsspec.filesystem("repo", catalog_url=url, skip_instance_cache=True)
        expected: type[Exception] = repolib.InvalidKey
        words = "no API key"
    else:
        fs = fsspec.filesystem("repo", key=issued.token, catalog_url=url, skip_instance_cache=True)
        if case == "revoked":
            admin.revoke_key(issued.key_id)
        else:
            admin.rotate_key(issued.key_id, grace=0)
        expected, words = repolib.InvalidKey, "invalid API key"
    t0 = time.monotonic()
    future = cluster.submit(_ls, fs, "analytics/data", pure=False)
    with pytest.raises(expected) as ei:
        future.result(timeout=WORKER_TIMEOUT_S)
    assert time.monotonic() - t0 < WORKER_TIMEOUT_S / 2
    text = str(ei.value)
    assert words in text and "\n" not in text
    assert issued.token not in text


def test_a_worker_without_the_catalog_fails_its_task(
    cluster: distributed.Client, catalog: repolib.Catalog, home: Path
) -> None:
    """A SQLite catalog named by this machine's REPOLIB_HOME: the workers have another home,
    with nothing in it."""
    admin = catalog.create_repository("analytics")
    admin.add_storage("scratch", "memory://dask-no-catalog")
    token = admin.create_key("k", "read").token
    fs = fsspec.filesystem("repo", key=token, skip_instance_cache=True)  # home from the env
    future = cluster.submit(_ls, fs, "analytics/scratch", pure=False)
    with pytest.raises(repolib.CatalogError) as ei:
        future.result(timeout=WORKER_TIMEOUT_S)
    assert "no catalog" in str(ei.value) and "repolib init" in str(ei.value)
    assert "\n" not in str(ei.value)


# -- repo.ai.map on any executor ----------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai(models=["m1"]) as f:
        yield f


N_FILES = 12


@pytest.mark.stores("postgres")
@pytest.mark.parametrize("where", ["threads", "processes", "dask"])
def test_ai_map_on_any_executor_with_one_budget(
    cluster: distributed.Client,
    bucket_repo: tuple[repolib.Repository, str],
    fake: FakeOpenAI,
    where: str,
) -> None:
    admin, _ = bucket_repo
    admin.add_llm("alpha", base_url=fake.url, api_key=LLM_API_KEY, models=["m1"])
    for i in range(N_FILES):
        admin.fs.pipe_file(f"analytics/data/docs/{i:02d}.txt", b"one two three four five")
    unlimited = admin.create_key("mapper", "write", ai=True).token
    repo = repolib.open("analytics", key=unlimited)
    executor: concurrent.futures.Executor | None
    pool: concurrent.futures.Executor | None = None
    if where == "threads":
        executor = None
    elif where == "processes":
        pool = executor = concurrent.futures.ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context("spawn")
        )
    else:
        executor = cluster.get_executor()
    try:
        result = repo.ai.map(
            "Summarise.",
            "data/docs/*.txt",
            "data/answers/",
            executor=executor,
            progress=False,
            max_tokens=5,
        )
        assert result.failed == {} and len(result.written) == N_FILES, result.failed
        assert "data/answers/00.txt.txt" in result.written, result.written
        assert repo.fs.cat_file("analytics/data/answers/00.txt.txt") == b"w0 w1 w2 w3 w4\n"
        # a budget for half the files, shared by every worker: each call reserves exactly
        # what it then uses (the fake reports our estimate), so exactly half fit
        from repolib.ai.policy import estimate_prompt

        estimate = estimate_prompt(fake.chat_requests()[0].body["messages"])
        fake.prompt_tokens = estimate
        cost = estimate + 5
        budget = cost * (N_FILES // 2) + cost // 2
        capped = admin.create_key("capped", "write", ai={"token_budget": budget}).token
        capped_repo = repolib.open("analytics", key=capped)
        result = capped_repo.ai.map(
            "Summarise.",
            "data/docs/*.txt",
            "data/capped/",
            executor=executor,
            progress=False,
            max_tokens=5,
        )
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    assert len(result.written) == len(result.failed) == N_FILES // 2, result
    assert all("token budget" in why for why in result.failed.values()), result.failed
    usage.flush_all()
    with repolib.Catalog()._ctx.store.read() as tx:
        from repolib.ai.policy import period_key

        spent = tx.ledger_get(capped_repo.key_id or "", period_key("day", time.time())[0])
        rows = tx.ai_usage_rows()
    assert spent == cost * (N_FILES // 2) <= budget
    requests = sum(v for _, _, k, _, _, m, v in rows if k == capped_repo.key_id and m == "requests")
    tokens = sum(
        v
        for _, _, k, _, _, m, v in rows
        if k == capped_repo.key_id and m in ("prompt_tokens", "completion_tokens")
    )
    assert requests == len(result.written)  # every worker's usage reached the catalog
    assert tokens == spent  # settled to what the upstream reported, across processes


def test_map_refuses_what_is_not_an_executor(catalog: repolib.Catalog, fake: FakeOpenAI) -> None:
    repo = catalog.create_repository("analytics")
    repo.add_llm("alpha", base_url=fake.url, api_key=LLM_API_KEY, models=["m1"])
    with pytest.raises(repolib.ConfigError, match=r"concurrent\.futures\.Executor"):
        repo.ai.map("x", "a/*.txt", "out/", executor=object())


# -- what crosses a process boundary --------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        repolib.InvalidKey(),
        repolib.AccessDenied("read analytics/raw denied: out of scope"),
        repolib.CatalogError("cannot reach the catalog"),
        repolib.CatalogReadOnly("read-only"),
        repolib.ConfigError("bad name"),
        repolib.SecretError("decryption failed"),
        repolib.UpstreamError("upstream said no (HTTP 503)", 503),
        repolib.BudgetExceeded("spent"),
        repolib.PolicyViolation("rate limit"),
        repolib.BackendUnavailable("pip install x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_repolib_errors_reach_a_dask_client_as_they_were(exc: Exception) -> None:
    import pickle

    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc)
    assert getattr(back, "errno", None) == getattr(exc, "errno", None)
    assert getattr(back, "status", None) == getattr(exc, "status", None)


def test_unpickling_a_filesystem_opens_nothing(
    catalog: repolib.Catalog, repo: repolib.Repository, home: Path
) -> None:
    """A scheduler that unpickles a task graph needs no catalog; the first use does. What is
    pickled is how to open the repository, never a decrypted credential."""
    import pickle
    import shutil

    fs = repolib.open("analytics", key=repo.create_key("k", "read").token).fs
    fs._state.backend("raw")  # credentials decrypted in this process
    data = pickle.dumps(fs)
    for secret in SUITE_SECRETS:
        assert secret.encode() not in data
    catalog.close()
    shutil.rmtree(home)
    fs.clear_instance_cache()
    t0 = time.monotonic()
    restored = pickle.loads(data)
    assert time.monotonic() - t0 < 1
    assert "opened on first use" in repr(restored)
    with pytest.raises(repolib.CatalogError, match="no catalog"):
        restored.ls("analytics/scratch")
    assert pickle.loads(pickle.dumps(restored)) is not None  # still picklable, still lazy
