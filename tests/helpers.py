"""Helpers shared by test modules: the suite's planted credentials, a clock moved by hand, the
CLI run in-process, raw access to the catalog, buckets on the test servers. Fixtures live in
conftest.py; test modules import from here, never from conftest or from each other.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import repolib
from repolib.cli import main as cli_main

from . import pgserver, servers


class Clock:
    """A clock the test moves by hand: ``clock.t += 61`` instead of sleeping a minute."""

    def __init__(self, t: float | None = None) -> None:
        self.t = time.time() if t is None else t

    def __call__(self) -> float:
        return self.t


# Credentials used throughout the suite; test_leaks.py searches for every one of them.
S3_KEY = "AKIATESTKEYID0000001"
S3_SECRET = "s3-secret-Zq8vN3xL0pRt7uW2yB5c"
S3_READ_KEY = "AKIAREADONLY00000002"
S3_READ_SECRET = "s3-read-secret-Hj4kM9nQ2sV6xZ1a"
LLM_API_KEY = "sk-upstream-Lm3Np7Qr1St5Uv9Wx2Yz"
SUITE_SECRETS = [S3_KEY, S3_SECRET, S3_READ_KEY, S3_READ_SECRET, LLM_API_KEY]


class CatalogStore:
    """The store a test's catalog lives in, and raw SQL on it (for tampering tests)."""

    def __init__(
        self,
        kind: str,
        home: Path,
        url: str | None = None,
        pg: pgserver.PGServer | None = None,
        database: str | None = None,
    ) -> None:
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


class Cli:
    """Runs the real click command in-process and keeps every output for leak checks."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.outputs: list[str] = []

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        ok: bool = True,
    ) -> Result:
        runner = CliRunner()
        result = runner.invoke(
            cli_main, list(args), input=input, env={"REPOLIB_HOME": str(self.home), **(env or {})}
        )
        self.outputs.extend([result.stdout, result.stderr])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"traceback from repolib {' '.join(args)}") from result.exception
        if ok:
            assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result


_bucket_clients: dict[str, object] = {}


def new_bucket(server: servers.S3Server, prefix: str = "b") -> str:
    """A fresh bucket through the S3 API (one client per server: clients are slow to make)."""
    fs = _bucket_clients.get(server.endpoint_url)
    if fs is None:
        fs = _bucket_clients[server.endpoint_url] = server.filesystem()
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)  # type: ignore[attr-defined]
    return name


def s3_options(server: servers.S3Server) -> dict[str, object]:
    """add_storage options for an S3 test server."""
    opts: dict[str, object] = {
        "endpoint_url": server.endpoint_url,
        "key": server.key,
        "secret": server.secret,
        "region": server.region,
    }
    extra = server._config_kwargs()
    extra.pop("region_name", None)
    for name in ("request_checksum_calculation", "response_checksum_validation"):
        if name in extra:  # allowlisted settings: the resource keeps the obstore data path
            opts[name] = extra.pop(name)
    if extra:
        opts["config_kwargs"] = extra
    return opts


def gcs_options(server: servers.GCSServer) -> dict[str, object]:
    """add_storage options for the GCS emulator."""
    return {"endpoint_url": server.endpoint_url, "project": server.project, "token": "anon"}


def azure_options(server: servers.AzuriteServer) -> dict[str, object]:
    """add_storage options for Azurite (its account endpoint, without the account path)."""
    return {
        "endpoint_url": server.blob_endpoint.rsplit("/", 1)[0],
        "account_name": server.account_name,
        "account_key": server.account_key,
    }


def unique() -> str:
    return f"b{uuid.uuid4().hex[:12]}"


def attach(
    kind: str, repo: repolib.Repository, name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Attach a fresh bucket/container/folder of ``kind`` as resource ``name``."""
    if kind == "s3":
        s3 = request.getfixturevalue("s3_server")
        bucket = servers.make_bucket(s3, unique())
        repo.add_storage(
            name,
            f"s3://{bucket}/prefix",
            endpoint_url=s3.endpoint_url,
            key=s3.key,
            secret=s3.secret,
            region=s3.region,
        )
    elif kind == "gcs":
        gcs = request.getfixturevalue("gcs_server")
        bucket = servers.make_bucket(gcs, unique())
        repo.add_storage(name, f"gs://{bucket}/prefix", **gcs_options(gcs))
    elif kind == "azure":
        az = request.getfixturevalue("azure_server")
        container = servers.make_bucket(az, unique())
        repo.add_storage(name, f"az://{container}/prefix", **azure_options(az))
    elif kind == "local":
        folder = tmp_path / f"folder-{name}"
        folder.mkdir()
        repo.add_storage(name, f"file://{folder}")
    else:
        repo.add_storage(name, f"memory://{unique()}")


def random_bytes(n: int) -> bytes:
    """``os.urandom(n)`` that does not end in a carriage return: the GCS emulator
    (gcp-storage-emulator) drops a trailing ``\r`` from a multipart upload's body, which made
    one run in ~12 of a test writing 20 random files to GCS fail."""
    data = os.urandom(n)
    return data[:-1] + b"\n" if data.endswith(b"\r") else data
