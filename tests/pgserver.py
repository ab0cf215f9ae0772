"""A real PostgreSQL server for tests: Debian's PostgreSQL 15, on a free port, in a temp folder.

Plain module: no pytest, no repolib. ``initdb`` refuses to run as root, so as root the cluster
belongs to the ``postgres`` user (``runuser -u postgres -- initdb -D DIR -A trust --no-sync``);
as anyone else it belongs to the current user. The socket lives in the temp folder (made
writable for the server's user), TCP listens on 127.0.0.1 only, and the server is always stopped
(``pg_ctl stop -m immediate``) and its folder removed.

    with postgres() as pg:                 # PGServer
        url = pg.url("catalog")            # postgresql://postgres@127.0.0.1:PORT/catalog
        pg.create_database("catalog")
        pg.create_role("app", "pw")        # logs in with a password over TCP
        pg.stop(); pg.start()              # same port, same data

Over TCP, ``postgres`` logs in without a password (trust) and every other role with one
(scram-sha-256), so tests can check what happens to a password.

Raises ``ServerUnavailable`` (from tests/servers.py) when PostgreSQL is not installed:
``apt-get install postgresql`` (scripts/install-servers.sh does it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .servers import HOST, ServerUnavailable, free_port

INSTALL_HINT = "install it with: apt-get install postgresql (bash scripts/install-servers.sh)"
SUPERUSER = "postgres"


def bindir() -> str:
    """The newest installed PostgreSQL's bin folder (Debian keeps them versioned)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return str(Path(found[-1]).parent)
    initdb = shutil.which("initdb")
    if initdb:
        return str(Path(initdb).resolve().parent)
    raise ServerUnavailable(f"PostgreSQL (initdb, pg_ctl) is not installed; {INSTALL_HINT}")


@dataclass
class PGServer:
    root: Path
    port: int
    bin: str
    owner: str | None  # run the server as this user (root runs it as postgres), None: as us
    log: Path = field(init=False)
    _admin: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.log = self.root / "server.log"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(
        self,
        database: str = "postgres",
        user: str = SUPERUSER,
        password: str | None = None,
        **query: str,
    ) -> str:
        auth = user if password is None else f"{user}:{password}"
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://{auth}@{HOST}:{self.port}/{database}" + (f"?{q}" if q else "")

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self.owner is not None:
            cmd = ["runuser", "-u", self.owner, "--", *cmd]
        return subprocess.run(
            cmd,
            check=check,
            capture_output=True,
            text=True,
            cwd="/",
            stdin=subprocess.DEVNULL,
            timeout=120,
        )

    def start(self, timeout: float = 30.0) -> None:
        opts = (
            f"-c listen_addresses={HOST} -p {self.port} -k {self.socket_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300 -c shared_buffers=32MB"
        )
        result = self._run(
            f"{self.bin}/pg_ctl",
            "start",
            "-w",
            "-t",
            str(int(timeout)),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            opts,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed ({result.returncode}): {result.stderr}\n"
                f"--- log ---\n{self._tail()}"
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        "PostgreSQL did not accept connections:\n" + self._tail()
                    ) from None
                time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        self.close_admin()
        self._run(f"{self.bin}/pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data), check=False)

    @property
    def running(self) -> bool:
        return (
            self._run(f"{self.bin}/pg_ctl", "status", "-D", str(self.data), check=False).returncode
            == 0
        )

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "<no log>"

    # -- SQL as the superuser -------------------------------------------------------------------

    def admin(self) -> Any:
        """An autocommit superuser connection (kept, reopened when lost)."""
        import psycopg

        if self._admin is None or self._admin.closed or self._admin.broken:
            self._admin = psycopg.connect(self.url(), autocommit=True, connect_timeout=5)
        return self._admin

    def close_admin(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None

    def execute(self, sql: str, args: Any = None, database: str | None = None) -> list[Any]:
        import psycopg

        if database is None:
            cur = self.admin().execute(sql, args)
            return cur.fetchall() if cur.description else []
        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> str:
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def create_role(self, name: str, password: str | None = None) -> None:
        if password is None:
            self.execute(f'CREATE ROLE "{name}" LOGIN')
        else:
            self.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")

    def terminate(self, database: str) -> int:
        """Kill every backend connected to ``database`` (a lost connection, as clients see it)."""
        rows = self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
        return len(rows)


def _owner() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ServerUnavailable(
            f"running as root, and there is no '{SUPERUSER}' user to run "
            f"PostgreSQL as (initdb refuses root); {INSTALL_HINT}"
        ) from None
    return SUPERUSER


@contextlib.contextmanager
def postgres() -> Iterator[PGServer]:
    """Start a fresh cluster; always stop it and remove its folder."""
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        raise ServerUnavailable('psycopg is not installed: pip install "repolib[postgres]"')
    bin_ = bindir()
    owner = _owner()
    root = Path(tempfile.mkdtemp(prefix="repolib-pg-"))
    server = PGServer(root, free_port(), bin_, owner)
    try:
        server.socket_dir.mkdir()
        if owner is not None:
            info = pwd.getpwnam(owner)
            for p in (root, server.socket_dir):
                os.chown(p, info.pw_uid, info.pw_gid)
            os.chmod(root, 0o700)
        result = server._run(
            f"{bin_}/initdb",
            "-D",
            str(server.data),
            "-A",
            "trust",
            "--no-sync",
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stdout}\n{result.stderr}")
        hba = server.data / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            f"host all {SUPERUSER} {HOST}/32 trust\n"
            f"host all all {HOST}/32 scram-sha-256\n"
        )
        for attempt in range(3):
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2 or "could not bind" not in server._tail():
                    raise
                server.port = free_port()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)
