"""The shared catalog: one PostgreSQL database that many machines use at once.

Same tables and the same :class:`~repolib.catalog.store.Tx` as the SQLite store. What SQLite gets
from its one writer at a time, this store gets otherwise:

- reads run in ``REPEATABLE READ READ ONLY`` transactions (one snapshot each); writes in ``READ
  COMMITTED`` with conditional updates: a budget or rate reservation is one ``INSERT ... ON
  CONFLICT DO UPDATE ... WHERE`` that adds only while the total stays within the limit;
  usage counters are added (``value = value + excluded.value``), never overwritten;
- the audit chain has one writer at a time: a write transaction takes a transaction-level
  advisory lock before it reads the chain's head, so rows are appended in order;
- a transaction that changes keys or resources sends ``NOTIFY``; every process ``LISTEN``\\ s
  on one background connection and bumps :meth:`PostgresStore.changes`, so a revocation or
  rotation is seen by other machines at their next call, not after a timer.

Connections come from a ``psycopg_pool`` pool, one per process (a forked child makes its own and
never touches the parent's). The URL's password (or ``PGPASSWORD`` / a ``.pgpass`` file, which
libpq reads itself) is never shown: ``location`` and every message use the URL without it.
Errors are one line that says what happened and what to do; a lost connection rolls the
transaction back on the server, and the next call reconnects.
"""

from __future__ import annotations

import contextlib
import os
import threading
import urllib.parse
import weakref
from collections.abc import Iterator
from typing import Any

from ..exceptions import BackendUnavailable, CatalogError, CatalogReadOnly, ConfigError
from ..procstate import thread_state
from . import pgschema
from .store import Store, Tx

try:
    import psycopg
    import psycopg.errors
    import psycopg_pool
    from psycopg.rows import dict_row
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise BackendUnavailable(
        'a PostgreSQL catalog needs psycopg: pip install "repolib[postgres]"'
    ) from exc

from .pgtx import PostgresTx

CONNECT_TIMEOUT_S = 5  # libpq's connect_timeout, unless the URL sets one
LOCK_TIMEOUT_MS = 60_000  # as long as SQLite's busy timeout
POOL_MAX = 10
POOL_WAIT_S = 1.0  # then a connection of its own (busy pool) or the reason (server gone)
CHANNEL = "repolib_catalog"
LISTEN_PING_S = 5.0
MIGRATE_LOCK = 0x6D696772  # advisory lock class of schema upgrades ("migr"), as pgtx.AUDIT_LOCK


UNPARSABLE = "postgresql://<unparsable URL>"


def redact(url: str) -> str:
    """The URL without a password (in the authority or the query), fit for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}@{hostport}" if user else hostport
        query = urllib.parse.urlencode(
            [
                (k, v)
                for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
                if k.lower() != "password"
            ],
            safe="/:=",
        )
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return UNPARSABLE


def has_password(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        return parts.password is not None or any(k.lower() == "password" for k in query)
    except ValueError:
        return False


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = "; ".join(lines)
    for prefix in ("connection failed: ", "FATAL:  ", "ERROR:  "):
        line = line.replace(prefix, "")
    return line


_shared: dict[tuple[str, bool], PostgresStore] = {}
_shared_lock = threading.Lock()
_orphans: list[Any] = []  # a parent's pools in a forked child: never closed from here
_stores: weakref.WeakSet[PostgresStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Locks held by another thread at fork would stay held in the child: make new ones."""
    global _shared_lock
    _shared_lock = threading.Lock()
    for store in list(_stores):
        store._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class PostgresStore(Store):
    """A catalog in a PostgreSQL database, shared by every machine that has its URL."""

    kind = "postgresql"

    @classmethod
    def shared(cls, url: str, *, read_only: bool = False) -> PostgresStore:
        """One store (one pool, one listener) per URL and mode in a process."""
        k = (url, read_only)
        with _shared_lock:
            store = _shared.get(k)
            if store is None:
                store = _shared[k] = cls(url, read_only=read_only)
            return store

    @classmethod
    def close_shared(cls, url: str | None = None) -> None:
        """Close the shared stores of ``url`` (or all): a program that is done with a catalog
        gives its connections back."""
        with _shared_lock:
            gone = [k for k in _shared if url is None or k[0] == url]
            stores = [_shared.pop(k) for k in gone]
        for store in stores:
            store.close()

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in ("postgresql", "postgres"):
            raise ConfigError("a PostgreSQL catalog URL starts with postgresql://")
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error:
            shown = "" if redact(url) == UNPARSABLE else f" {redact(url)}"
            raise ConfigError(
                f"the catalog URL{shown} is not a valid PostgreSQL URL "
                "(postgresql://user@host:port/database)"
            ) from None
        self._url = url
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": dict_row,
            "application_name": params.get("application_name", "repolib"),
        }
        if "connect_timeout" not in params:
            self._kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        self.location = redact(url)
        self.read_only = read_only
        self._local = thread_state()  # the open transaction per thread, none after a fork
        self._lock = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._pid = 0
        self._ready = False  # schema checked (and migrated) in this process
        self._exists: bool | None = None
        self._changes = 0
        self._listener: threading.Thread | None = None
        self._listener_pid = 0
        self._closed = threading.Event()
        _stores.add(self)

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r}, read_only={self.read_only})"

    def __getstate__(self) -> Any:
        raise TypeError("a catalog store is not picklable; pass its URL (catalog_url=) instead")

    # -- connections --------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection of its own, or the one-line reason why not."""
        try:
            conn = psycopg.connect(self._url, **self._kwargs)
        except psycopg.Error as exc:
            raise self._connect_error(exc) from None
        try:
            self._configure(conn)
        except psycopg.Error as exc:
            conn.close()
            raise self._error(exc) from None
        return conn

    @staticmethod
    def _configure(conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")

    def _connect_error(self, exc: BaseException) -> CatalogError:
        text = _one_line(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
        low = text.lower()
        where = f"the PostgreSQL catalog at {self.location}"
        if "password authentication failed" in low or "no password supplied" in low:
            return CatalogError(
                f"{where} refused the login: wrong or missing password (give it "
                "in PGPASSWORD or a .pgpass file, never on the command line)"
            )
        if "does not exist" in low and "database" in low:
            return CatalogError(
                f"{where}: the database does not exist; create it (createdb) or fix the catalog URL"
            )
        if "does not exist" in low and "role" in low:
            return CatalogError(
                f"{where}: the user does not exist on that server; fix the "
                "catalog URL or create the role"
            )
        if any(
            s in low
            for s in (
                "connection refused",
                "could not connect",
                "timeout expired",
                "no such file or directory",
                "could not translate host",
                "name or service not known",
                "network is unreachable",
                "the database system is",
                "server closed the connection",
                "no route to host",
            )
        ):
            return CatalogError(
                f"cannot reach {where} ({text}): is the server running? "
                "repolib reconnects by itself once it is back"
            )
        return CatalogError(f"cannot connect to {where}: {text}")

    def _error(
        self, exc: psycopg.Error, committing: bool = False, writing: bool = True
    ) -> CatalogError:
        """A psycopg error met inside a transaction, as one line."""
        where = f"the PostgreSQL catalog at {self.location}"
        if isinstance(exc, psycopg.OperationalError) and (
            isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.CrashShutdown)
            or exc.sqlstate is None
            or exc.sqlstate.startswith("08")
        ):
            if committing:
                return CatalogError(
                    f"lost the connection to {where} while committing: the change "
                    "may or may not have been saved; check before repeating it"
                )
            if not writing:
                return CatalogError(
                    f"lost the connection to {where}; try again (repolib "
                    "reconnects once the server is back)"
                )
            return CatalogError(
                f"lost the connection to {where}: nothing of this change was "
                "saved; try again (repolib reconnects once the server is back)"
            )
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
            return CatalogError(
                f"{where} has no repolib catalog, or an incomplete one: run "
                "`repolib --catalog URL init` there (as the admin)"
            )
        if isinstance(
            exc, psycopg.errors.InsufficientPrivilege | psycopg.errors.ReadOnlySqlTransaction
        ):
            return CatalogReadOnly(
                f"{where} is read-only for this user; changes need a user "
                "that may write its tables (ask whoever manages the catalog)"
            )
        if isinstance(
            exc,
            psycopg.errors.UniqueViolation
            | psycopg.errors.DeadlockDetected
            | psycopg.errors.SerializationFailure,
        ):
            return CatalogError(
                f"another process changed {where} at the same time; nothing was saved, try again"
            )
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return CatalogError(
                f"{where} stayed locked by another process for "
                f"{LOCK_TIMEOUT_MS // 1000} s; try again"
            )
        return CatalogError(f"{where} failed: {_one_line(str(exc))}")

    def _pool_now(self) -> psycopg_pool.ConnectionPool[Any]:
        """This process's pool, made (and the schema checked) on first use."""
        pid = os.getpid()
        pool = self._pool
        if pool is not None and self._pid == pid:
            return pool
        with self._lock:
            if self._pool is not None and self._pid == pid:
                return self._pool
            if self._pool is not None:  # made before a fork: the parent's, leave it alone
                _orphans.append(self._pool)
                self._pool = None
            conn = self._connect()  # the real reason when the server cannot be used
            try:
                self._check_schema(conn)
            finally:
                conn.close()
            pool = psycopg_pool.ConnectionPool(
                self._url,
                kwargs=self._kwargs,
                min_size=1,
                max_size=POOL_MAX,
                open=False,
                configure=self._configure,
                name="repolib-catalog",
                timeout=POOL_WAIT_S,
                reconnect_timeout=2.0,
                max_idle=300.0,
            )
            pool.open(wait=False)
            self._pool, self._pid = pool, pid
            return pool

    def _check_schema(self, conn: psycopg.Connection[Any]) -> None:
        """Refuse a newer schema, migrate an older one (once per process)."""
        if self._ready:
            return
        version = self._version(conn)
        if version is None:
            self._exists = False
            return
        self._exists = True
        if version > pgschema.SCHEMA_VERSION:
            raise CatalogError(
                f"the catalog at {self.location} has schema {version}, newer than "
                f"this repolib understands ({pgschema.SCHEMA_VERSION}): upgrade "
                "repolib"
            )
        if version < pgschema.SCHEMA_VERSION:
            if self.read_only:
                raise CatalogReadOnly(
                    f"the catalog at {self.location} needs a schema upgrade, "
                    "but it is opened read-only here: open it once with write "
                    "access"
                )
            self._migrate(conn)
        if not self.read_only and not self._may_write(conn):
            self.read_only = True
        self._ready = True

    @staticmethod
    def _version(conn: psycopg.Connection[Any]) -> int | None:
        row = conn.execute("SELECT to_regclass(%s) AS t", (pgschema.VERSION_TABLE,)).fetchone()
        if row is None or row["t"] is None:
            return None
        row = conn.execute(f"SELECT max(version) AS v FROM {pgschema.VERSION_TABLE}").fetchone()
        return 0 if row is None or row["v"] is None else int(row["v"])

    @staticmethod
    def _may_write(conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute(
            "SELECT has_table_privilege('usage', 'INSERT') AND "
            "has_table_privilege('keys', 'UPDATE') AS ok"
        ).fetchone()
        return bool(row and row["ok"])

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Create or upgrade the schema in one transaction, one process at a time."""
        try:
            with conn.transaction():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (MIGRATE_LOCK,)
                )
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {pgschema.VERSION_TABLE} "
                    "(version INTEGER NOT NULL)"
                )
                version = self._version(conn) or 0
                if version > pgschema.SCHEMA_VERSION:
                    raise CatalogError(
                        f"the catalog at {self.location} has schema {version}, "
                        "newer than this repolib understands: upgrade repolib"
                    )
                for step in range(version, pgschema.SCHEMA_VERSION):
                    for statement in pgschema.statements(step):
                        conn.execute(statement)
                conn.execute(f"DELETE FROM {pgschema.VERSION_TABLE}")
                conn.execute(
                    f"INSERT INTO {pgschema.VERSION_TABLE}(version) VALUES (%s)",
                    (pgschema.SCHEMA_VERSION,),
                )
        except psycopg.errors.InsufficientPrivilege:
            raise CatalogReadOnly(
                f"the user in the catalog URL may not create tables in "
                f"{self.location}: the admin creates or upgrades the catalog "
                "(`repolib --catalog URL init`)"
            ) from None
        except psycopg.Error as exc:
            raise self._error(exc) from None
        self._exists = True

    def _acquire(self, begin: str) -> tuple[psycopg.Connection[Any], bool]:
        """A connection with ``begin`` run on it; True when it is a one-off (not pooled)."""
        pool = self._pool_now()
        if not self._exists:
            raise CatalogError(
                f"no repolib catalog in {self.location}: run `repolib --catalog "
                "URL init` there (as the admin, once)"
            )
        for _ in range(POOL_MAX + 1):
            try:
                conn = pool.getconn()
            except psycopg_pool.PoolTimeout:
                break  # busy or reconnecting: see below
            try:
                conn.execute(begin)
                return conn, False
            except psycopg.OperationalError:
                pool.putconn(conn)  # broken (a restarted server): the pool drops it
                continue
        conn = self._connect()  # raises the reason when the server is gone
        try:
            conn.execute(begin)
        except psycopg.Error as exc:
            conn.close()
            raise self._error(exc) from None
        return conn, True

    def _release(self, conn: psycopg.Connection[Any], own: bool) -> None:
        if own or self._pool is None or self._pid != os.getpid():
            with contextlib.suppress(psycopg.Error):
                conn.close()
            return
        with contextlib.suppress(Exception):
            self._pool.putconn(conn)

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Tx]:
        begin = (
            "BEGIN ISOLATION LEVEL READ COMMITTED"
            if write
            else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        )
        conn, own = self._acquire(begin)
        tx = PostgresTx(conn, write)
        self._local.tx = tx
        try:
            try:
                yield tx
            except BaseException as exc:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, psycopg.Error):
                    raise self._error(exc, writing=write) from None
                raise
            try:
                if tx.notify:
                    conn.execute("SELECT pg_notify(%s, current_schema())", (CHANNEL,))
                conn.execute("COMMIT" if write else "ROLLBACK")
            except psycopg.Error as exc:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                raise self._error(exc, committing=write, writing=write) from None
        finally:
            self._local.tx = None
            self._release(conn, own)

    def _current(self) -> PostgresTx | None:
        tx: PostgresTx | None = getattr(self._local, "tx", None)
        return tx

    # -- the Store interface ------------------------------------------------------------------

    def exists(self) -> bool:
        if self._exists:
            return True
        if self._pool is not None and self._pid == os.getpid():
            conn = self._connect()  # the schema may have been created since
            try:
                self._ready = False
                self._check_schema(conn)
            finally:
                conn.close()
        else:
            self._pool_now()
        return bool(self._exists)

    def create(self) -> None:
        if self.read_only:
            raise CatalogReadOnly(f"cannot create a catalog in {self.location}: opened read-only")
        self._pool_now()
        if self._exists:
            return
        conn = self._connect()
        try:
            self._migrate(conn)
            self._ready = False
            self._check_schema(conn)
        finally:
            conn.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        current = self._current()
        if current is not None:  # nested inside a transaction on this thread: the same one
            yield current
            return
        with self._transaction(write=False) as tx:
            yield tx

    @contextlib.contextmanager
    def write(self) -> Iterator[Tx]:
        if self.read_only:
            self._pool_now()
            raise CatalogReadOnly(
                f"the catalog at {self.location} is read-only here; changes "
                "need a user that may write it (ask whoever manages it)"
            )
        current = self._current()
        if current is not None:
            if not current.write:
                raise CatalogError("a catalog write inside a read transaction (a repolib bug)")
            yield current
            return
        with self._transaction(write=True) as tx:
            yield tx

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            pool, self._pool = self._pool, None
            self._ready = False
        if pool is not None and self._pid == os.getpid():
            pool.close(timeout=1.0)
        self._local = thread_state()

    # -- changes seen by other processes ------------------------------------------------------

    def changes(self) -> int:
        """Bumped when any process commits a change to keys or resources (LISTEN/NOTIFY), and
        whenever the listening connection is (re)made: changes may have been missed."""
        if self._listener is None or self._listener_pid != os.getpid():
            self._start_listener()
        return self._changes

    def _start_listener(self) -> None:
        with self._lock:
            if self._listener is not None and self._listener_pid == os.getpid():
                return
            self._closed = threading.Event()
            self._changes += 1
            t = threading.Thread(target=self._listen, name="repolib-catalog-listen", daemon=True)
            self._listener, self._listener_pid = t, os.getpid()
            t.start()

    def _listen(self) -> None:
        pid = os.getpid()
        closed = self._closed
        delay = 0.2
        while not closed.is_set() and os.getpid() == pid:
            conn = None
            try:
                conn = psycopg.connect(self._url, **self._kwargs)
                row = conn.execute("SELECT current_schema() AS s").fetchone()
                assert row is not None  # current_schema() always answers
                schema = row["s"]
                conn.execute(f"LISTEN {CHANNEL}")
                self._changes += 1  # anything may have changed while nobody listened
                delay = 0.2
                while not closed.is_set():
                    for note in conn.notifies(timeout=LISTEN_PING_S):
                        if note.payload == schema:
                            self._changes += 1
                        if closed.is_set():
                            break
                    conn.execute("SELECT 1")  # a dead server shows here
            except Exception:  # noqa: S110 - the timer re-checks keys meanwhile; try again
                pass
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            self._changes += 1
            closed.wait(delay)
            delay = min(delay * 2, 5.0)
