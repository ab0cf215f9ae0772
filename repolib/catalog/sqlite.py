"""The embedded catalog: one SQLite file, WAL, writes in ``BEGIN IMMEDIATE``.

Files are private from their creation: the folder is 0700 and the database, WAL and SHM files
are created under a 0077 umask (SQLite gives WAL and SHM the database file's mode), so there is no
window in which another user could open them. ``secure_delete`` overwrites deleted verifiers and
wraps. A catalog that this process may not write still serves reads; writes raise
:class:`~repolib.exceptions.CatalogReadOnly`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..exceptions import CatalogError, CatalogReadOnly
from ..procstate import thread_state
from .sqltx import SqlTx
from .store import Store, Tx

BUSY_TIMEOUT_S = 60.0

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE repositories (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        deleted_at REAL
    );
    CREATE UNIQUE INDEX repositories_live_name ON repositories(name) WHERE deleted_at IS NULL;
    CREATE TABLE resources (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        repo_id INTEGER NOT NULL REFERENCES repositories(id),
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        public TEXT NOT NULL,
        credential_fields TEXT NOT NULL,
        read_credential_fields TEXT,
        ciphertext BLOB NOT NULL,
        read_ciphertext BLOB,
        admin_wrap BLOB NOT NULL,
        admin_read_wrap BLOB,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        deleted_at REAL
    );
    CREATE UNIQUE INDEX resources_live_name ON resources(repo_id, name) WHERE deleted_at IS NULL;
    CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        repo_id INTEGER NOT NULL REFERENCES repositories(id),
        name TEXT NOT NULL,
        access TEXT NOT NULL,
        scope TEXT,
        expires_at REAL,
        ai TEXT,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        last_used_at REAL,
        revoked_at REAL
    );
    CREATE INDEX keys_repo ON keys(repo_id);
    CREATE TABLE key_secrets (
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        generation INTEGER NOT NULL,
        verifier BLOB NOT NULL,
        public_key BLOB NOT NULL,
        valid_until REAL,
        PRIMARY KEY (key_id, generation)
    );
    CREATE TABLE key_wraps (
        key_id TEXT NOT NULL,
        generation INTEGER NOT NULL,
        resource_id INTEGER NOT NULL,
        which TEXT NOT NULL,
        sealed BLOB NOT NULL,
        PRIMARY KEY (key_id, generation, resource_id, which)
    );
    CREATE INDEX key_wraps_resource ON key_wraps(resource_id);
    CREATE TABLE usage (
        day TEXT NOT NULL,
        repo_id INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        resource TEXT NOT NULL,
        metric TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (day, repo_id, key_id, resource, metric)
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        repo TEXT,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL
    );
    CREATE INDEX audit_repo ON audit(repo);
    CREATE TABLE audit_seals (
        seq INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        row_count INTEGER NOT NULL,
        head_hash BLOB NOT NULL,
        mac BLOB NOT NULL
    );
    """,
    # 2: the AI side: budgets (reserve-then-settle), request rates, usage per model
    """
    CREATE TABLE ai_ledger (
        key_id TEXT NOT NULL,
        period TEXT NOT NULL,
        tokens REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, period)
    );
    CREATE TABLE ai_rate (
        key_id TEXT NOT NULL,
        minute INTEGER NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, minute)
    );
    CREATE TABLE ai_usage (
        day TEXT NOT NULL,
        repo_id INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        resource TEXT NOT NULL,
        model TEXT NOT NULL,
        metric TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (day, repo_id, key_id, resource, model, metric)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def _is_readonly(exc: sqlite3.Error) -> bool:
    return "readonly" in str(exc).lower() or "read-only" in str(exc).lower()


class SQLiteTx(SqlTx):
    """repolib.catalog.sqltx on one sqlite3 connection; remembers whether it deleted secrets,
    so the store can scrub the WAL after the commit."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn
        self.scrub = False

    def _x(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.c.execute(sql, args)

    def _one(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.c.execute(sql, args).fetchone()
        return row

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(self.c.execute(sql, args).fetchall())

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.c.executemany(sql, rows)

    def _secrets_gone(self) -> None:
        self.scrub = True


_shared: dict[tuple[str, bool], SQLiteStore] = {}
_shared_lock = threading.Lock()


class SQLiteStore(Store):
    """A catalog in one SQLite file. One connection per thread, reopened after ``fork``."""

    @classmethod
    def shared(cls, path: str, *, read_only: bool = False) -> SQLiteStore:
        """One store per file and mode in a process, so connections are reused."""
        k = (os.path.abspath(path), read_only)
        with _shared_lock:
            store = _shared.get(k)
            if store is None:
                store = _shared[k] = cls(path, read_only=read_only)
            return store

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.location = self.path
        self.read_only = read_only
        self._local = thread_state()  # one connection per thread, none inherited by a fork
        self._migrated = False

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, read_only={self.read_only})"

    def exists(self) -> bool:
        return os.path.isfile(self.path)

    def create(self) -> None:
        if self.read_only:
            raise CatalogReadOnly(f"cannot create a catalog at {self.path}: opened read-only")
        folder = os.path.dirname(self.path)
        old = os.umask(0o077)
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                os.close(fd)
            except FileExistsError:
                pass
        finally:
            os.umask(old)
        with self.write():
            pass

    # connections
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if not self.exists():
            raise CatalogError(f"no catalog at {self.path}: run `repolib init` first")
        if not self.read_only and not os.access(self.path, os.W_OK):
            self.read_only = True
        old = os.umask(0o077)
        try:
            conn = self._connect()
        finally:
            os.umask(old)
        self._local.conn = conn
        if not self._migrated:
            self._migrate(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        uri = f"file:{self.path}" + ("?mode=ro" if self.read_only else "")
        try:
            conn = sqlite3.connect(
                uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            if not self.read_only:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            if self.read_only and "immutable" not in uri:
                # A WAL catalog we may not write, without its -shm file: read it as immutable.
                conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro&immutable=1",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.row_factory = sqlite3.Row
                return conn
            if _is_readonly(exc):
                self.read_only = True
                return self._connect()
            raise CatalogError(f"cannot open the catalog at {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"{self.path} is not a repolib catalog ({exc})") from exc
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise CatalogError(
                f"the catalog at {self.path} has schema {version}, newer than "
                f"this repolib understands ({SCHEMA_VERSION}): upgrade repolib"
            )
        if version < SCHEMA_VERSION:
            if self.read_only:
                raise CatalogReadOnly(
                    f"the catalog at {self.path} needs a schema upgrade, "
                    "but it is read-only here: open it once with write access"
                )
            self._begin(conn)
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[step].split(";"):
                        if statement.strip():
                            conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self._migrated = True

    @staticmethod
    def _begin(conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or time.monotonic() > deadline:
                    raise CatalogError(
                        "the catalog stayed locked by another process for "
                        f"{BUSY_TIMEOUT_S:.0f} s; try again"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        conn = self._conn()
        if conn.in_transaction:  # nested inside a write on this thread: same transaction
            yield SQLiteTx(conn)
            return
        conn.execute("BEGIN")
        try:
            yield SQLiteTx(conn)
        finally:
            conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def write(self) -> Iterator[Tx]:
        conn = self._conn()
        if self.read_only:
            raise CatalogReadOnly(
                f"the catalog at {self.path} is read-only here; changes need "
                "write access to it (ask whoever manages the catalog)"
            )
        if conn.in_transaction:
            yield SQLiteTx(conn)
            return
        self._begin(conn)
        tx = SQLiteTx(conn)
        try:
            yield tx
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            conn.execute("ROLLBACK")
            if _is_readonly(exc):
                raise CatalogReadOnly(f"the catalog at {self.path} is read-only here") from exc
            raise CatalogError(f"could not save to the catalog: {exc}") from exc
        if tx.scrub:
            self._scrub_wal(conn)

    def _scrub_wal(self, conn: sqlite3.Connection) -> None:
        """Deleted secrets are zeroed in the database (``secure_delete``), but their old pages
        stay in the WAL until it is checkpointed and cut: do both now. A reader holding an old
        snapshot delays this (the busy timeout); a later scrub finishes the job."""
        deadline = time.monotonic() + 5.0
        while True:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy or time.monotonic() > deadline:
                return
            time.sleep(0.02)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local = thread_state()
