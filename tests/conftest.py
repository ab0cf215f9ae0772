"""Shared fixtures: a clean environment, a fresh catalog, a demo repository, the CLI."""

from __future__ import annotations

import itertools
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import repolib
from repolib.cli import main as cli_main

# Credentials used throughout the suite; test_leaks.py searches for every one of them.
S3_KEY = "AKIATESTKEYID0000001"
S3_SECRET = "s3-secret-Zq8vN3xL0pRt7uW2yB5c"
S3_READ_KEY = "AKIAREADONLY00000002"
S3_READ_SECRET = "s3-read-secret-Hj4kM9nQ2sV6xZ1a"
LLM_API_KEY = "sk-upstream-Lm3Np7Qr1St5Uv9Wx2Yz"
SUITE_SECRETS = [S3_KEY, S3_SECRET, S3_READ_KEY, S3_READ_SECRET, LLM_API_KEY]


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
        metafunc.parametrize("catalog_store", marker.args or ("sqlite", "postgres"),
                             indirect=True)


class CatalogStore:
    """The store a test's catalog lives in, and raw SQL on it (for tampering tests)."""

    def __init__(self, kind: str, home: Path, url: str | None = None,
                 pg: pgserver.PGServer | None = None, database: str | None = None) -> None:
        self.kind, self.home, self.url, self.pg, self.database = kind, home, url, pg, database

    def __repr__(self) -> str:
        return f"CatalogStore({self.kind})"

    def execute(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run one statement outside repolib (``?`` parameters) and commit it."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.home / "catalog.db", isolation_level=None)
            try:
                return list(conn.execute(sql, args).fetchall())
            finally:
                conn.close()
        import psycopg

        assert self.url is not None
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), args)  # type: ignore[arg-type]
            return [tuple(r) for r in cur.fetchall()] if cur.description else []


class _PGRaw:
    """sqlite3-like access to the PostgreSQL catalog (``?`` parameters, autocommit)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)

    def execute(self, sql: str, args: tuple[object, ...] = ()) -> object:
        return self.conn.execute(sql.replace("?", "%s"), args)  # type: ignore[arg-type]

    def close(self) -> None:
        self.conn.close()


def raw_db(home: Path) -> object:
    """A raw connection to the test's catalog, outside repolib: sqlite3 on home/catalog.db,
    or psycopg on $REPOLIB_CATALOG_URL (statements take ``?`` parameters either way)."""
    url = os.environ.get("REPOLIB_CATALOG_URL")
    if url and url.startswith("postgresql://"):
        return _PGRaw(url)
    return sqlite3.connect(home / "catalog.db", isolation_level=None)


_schemas = itertools.count(1)


@pytest.fixture
def catalog_store(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[CatalogStore]:
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
    r.add_storage("raw", "s3://bucket/raw", endpoint_url="http://127.0.0.1:9",
                  key=S3_KEY, secret=S3_SECRET,
                  read_credentials={"key": S3_READ_KEY, "secret": S3_READ_SECRET})
    r.add_storage("scratch", "memory://scratch")
    r.add_llm("local", base_url="http://127.0.0.1:9/v1", api_key=LLM_API_KEY,
              models=["smollm2"], aliases={"fast": "smollm2"})
    return r


class Cli:
    """Runs the real click command in-process and keeps every output for leak checks."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.outputs: list[str] = []

    def __call__(self, *args: str, input: str | None = None, env: dict[str, str] | None = None,
                 ok: bool = True) -> Result:
        runner = CliRunner()
        result = runner.invoke(cli_main, list(args), input=input,
                               env={"REPOLIB_HOME": str(self.home), **(env or {})})
        self.outputs.extend([result.stdout, result.stderr])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"traceback from repolib {' '.join(args)}") \
                from result.exception
        if ok:
            assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result


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


_bucket_clients: dict[str, object] = {}


def new_bucket(server: servers.S3Server, prefix: str = "b") -> str:
    """A fresh bucket through the S3 API (one client per server: clients are slow to make)."""
    import uuid

    fs = _bucket_clients.get(server.endpoint_url)
    if fs is None:
        fs = _bucket_clients[server.endpoint_url] = server.filesystem()
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)  # type: ignore[attr-defined]
    return name


def s3_options(server: servers.S3Server) -> dict[str, object]:
    """add_storage options for an S3 test server."""
    opts: dict[str, object] = {"endpoint_url": server.endpoint_url, "key": server.key,
                               "secret": server.secret, "region": server.region}
    extra = server._config_kwargs()
    extra.pop("region_name", None)
    if extra:
        opts["config_kwargs"] = extra
    return opts
