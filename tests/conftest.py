"""Shared fixtures: a clean environment, a fresh catalog, a demo repository, the CLI."""

from __future__ import annotations

import os
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
        if name.startswith(("REPOLIB_", "AWS_", "GOOGLE_", "AZURE_", "OPENAI_")):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
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

from . import servers  # noqa: E402 - sets GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT before gcsfs loads


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
