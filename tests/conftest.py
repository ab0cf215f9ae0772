"""Shared fixtures: a clean environment, a fresh catalog, a demo repository, the CLI."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import repolib
from tests.helpers import (
    LLM_API_KEY,
    S3_KEY,
    S3_READ_KEY,
    S3_READ_SECRET,
    S3_SECRET,
    CatalogStore,
    Cli,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own keys, catalog or cloud credentials."""
    for name in list(os.environ):
        if name.startswith(("REPOLIB_", "AWS_", "GOOGLE_", "AZURE_", "OPENAI_", "PG")):
            monkeypatch.delenv(name, raising=False)


# -- which store holds the catalog -------------------------------------------------------------
#
# Tests (or modules) marked ``@pytest.mark.stores("sqlite", "postgres")`` run once per store:
# for "postgres" the catalog is a fresh schema in the session's PostgreSQL database, named by
# REPOLIB_CATALOG_URL, so the library, the CLI and subprocesses all use it. Everything else runs
# on SQLite as before.


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("stores")
    if marker is not None and "catalog_store" in metafunc.fixturenames:
        metafunc.parametrize("catalog_store", marker.args or ("sqlite", "postgres"), indirect=True)


_schemas = itertools.count(1)


@pytest.fixture
def catalog_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CatalogStore]:
    kind = getattr(request, "param", "sqlite")
    home = tmp_path / "home"
    if kind == "sqlite":
        yield CatalogStore("sqlite", home)
        return
    pg: pgserver.PGServer = request.getfixturevalue("pg_server")
    database: str = request.getfixturevalue("pg_database")
    schema = f"t{next(_schemas)}"
    pg.execute(f'CREATE SCHEMA "{schema}"', database=database)
    url = pg.url(database, options=f"-csearch_path%3D{schema}")
    monkeypatch.setenv("REPOLIB_CATALOG_URL", url)
    try:
        yield CatalogStore("postgres", home, url, pg, database)
    finally:
        from repolib import usage
        from repolib.catalog.postgres import PostgresStore

        usage.flush_all()
        PostgresStore.close_shared(url)


@pytest.fixture(scope="session", autouse=True)
def no_stale_mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The mount tests' safety net: no FUSE mount below pytest's temporary folders and no
    daemon they started outlives the session, even after a failed test."""
    yield
    from tests.mounting import clean_up_mounts

    clean_up_mounts(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgserver.PGServer]:
    """PostgreSQL 15 for the session (skipped, naming what is missing, when not installed)."""
    try:
        cm = pgserver.postgres()
        server = cm.__enter__()
    except servers.ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def pg_database(pg_server: pgserver.PGServer) -> str:
    """One database per test run; each test's catalog is a schema in it."""
    name = f"repolib_tests_{os.getpid()}"
    pg_server.create_database(name)
    return name


@pytest.fixture
def home(catalog_store: CatalogStore, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = catalog_store.home
    monkeypatch.setenv("REPOLIB_HOME", str(h))
    return h


@pytest.fixture
def catalog(home: Path) -> Iterator[repolib.Catalog]:
    cat = repolib.Catalog(home)
    cat.init()
    yield cat
    cat.close()


@pytest.fixture
def repo(catalog: repolib.Catalog) -> repolib.Repository:
    """Repository 'analytics' with an S3 bucket (and a read-only set), memory storage, an LLM."""
    r = catalog.create_repository("analytics", description="demo data")
    r.add_storage(
        "raw",
        "s3://bucket/raw",
        endpoint_url="http://127.0.0.1:9",
        key=S3_KEY,
        secret=S3_SECRET,
        read_credentials={"key": S3_READ_KEY, "secret": S3_READ_SECRET},
    )
    r.add_storage("scratch", "memory://scratch")
    r.add_llm(
        "local",
        base_url="http://127.0.0.1:9/v1",
        api_key=LLM_API_KEY,
        models=["smollm2"],
        aliases={"fast": "smollm2"},
    )
    return r


@pytest.fixture
def cli(home: Path) -> Cli:
    return Cli(home)


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def real_llm() -> Iterator[str]:
    """tools/serve_llm.py with SmolLM2-135M, once per session; skipped when not installed."""
    from .llm_server import Unavailable, model_server

    try:
        with model_server() as url:
            yield url
    except Unavailable as exc:
        pytest.skip(f"no real model server: {exc}")


# -- real storage servers, one of each per test session --------------------------------------

from . import pgserver, servers  # noqa: E402 - servers sets GCSFS_... before gcsfs loads


def _session_server(factory: object) -> Iterator[object]:
    try:
        cm = factory()  # type: ignore[operator]
        server = cm.__enter__()
    except servers.ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[servers.S3Server]:
    yield from _session_server(servers.moto_s3)  # type: ignore[misc]


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[servers.GCSServer]:
    yield from _session_server(servers.gcs_emulator)  # type: ignore[misc]


@pytest.fixture(scope="session")
def azure_server() -> Iterator[servers.AzuriteServer]:
    yield from _session_server(servers.azurite)  # type: ignore[misc]


@pytest.fixture(scope="session")
def rclone_server() -> Iterator[servers.RcloneS3Server]:
    """A real S3 server that checks credentials and is fast enough for suites (rclone)."""
    yield from _session_server(servers.rclone_s3)  # type: ignore[misc]
