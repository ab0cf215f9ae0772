"""The embedded catalog: one SQLite file, WAL, writes in ``BEGIN IMMEDIATE``.

Files are private from their creation: the folder is 0700 and the database, WAL and SHM files
are created under a 0077 umask (SQLite gives WAL and SHM the database file's mode), so there is no
window in which another user could open them. ``secure_delete`` overwrites deleted verifiers and
wraps. A catalog that this process may not write still serves reads; writes raise
:class:`~repolib.exceptions.CatalogReadOnly`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..exceptions import CatalogError, CatalogReadOnly
from ..procstate import thread_state
from .store import (
    TABLES,
    AuditRow,
    KeyRow,
    RepoRow,
    ResourceRow,
    SealRow,
    SecretRow,
    Store,
    Tx,
    WrapRow,
)

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


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _load(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _tuple(value: str | None) -> tuple[str, ...] | None:
    v = _load(value)
    return None if v is None else tuple(v)


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def _is_readonly(exc: sqlite3.Error) -> bool:
    return "readonly" in str(exc).lower() or "read-only" in str(exc).lower()


class SQLiteTx(Tx):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn
        self.scrub = False  # deleted or replaced secrets: checkpoint the WAL after the commit

    def _one(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.c.execute(sql, args).fetchone()
        return row

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(self.c.execute(sql, args).fetchall())

    # meta
    def meta_get(self, name: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE name = ?", (name,))
        return None if row is None else bytes(row[0])

    def meta_set(self, name: str, value: bytes) -> None:
        self.c.execute("INSERT INTO meta(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE "
                       "SET value = excluded.value", (name, value))

    # repositories
    @staticmethod
    def _repo(row: sqlite3.Row | None) -> RepoRow | None:
        if row is None:
            return None
        return RepoRow(row["id"], row["name"], row["description"], row["created_at"],
                       row["updated_at"])

    def repo_insert(self, name: str, description: str, now: float) -> RepoRow:
        cur = self.c.execute(
            "INSERT INTO repositories(name, description, created_at, updated_at) "
            "VALUES (?, ?, ?, ?)", (name, description, now, now))
        return RepoRow(int(cur.lastrowid or 0), name, description, now, now)

    def repo_get(self, name: str) -> RepoRow | None:
        return self._repo(self._one(
            "SELECT * FROM repositories WHERE name = ? AND deleted_at IS NULL", (name,)))

    def repo_by_id(self, repo_id: int) -> RepoRow | None:
        return self._repo(self._one(
            "SELECT * FROM repositories WHERE id = ? AND deleted_at IS NULL", (repo_id,)))

    def repo_list(self) -> list[RepoRow]:
        rows = self._all("SELECT * FROM repositories WHERE deleted_at IS NULL ORDER BY name")
        return [r for r in map(self._repo, rows) if r is not None]

    def repo_update(self, repo_id: int, description: str, now: float) -> None:
        self.c.execute("UPDATE repositories SET description = ?, updated_at = ? WHERE id = ?",
                       (description, now, repo_id))

    def repo_delete(self, repo_id: int, now: float) -> None:
        self.c.execute("UPDATE repositories SET deleted_at = ? WHERE id = ?", (now, repo_id))

    # resources
    @staticmethod
    def _resource(row: sqlite3.Row | None) -> ResourceRow | None:
        if row is None:
            return None
        return ResourceRow(
            row["id"], row["repo_id"], row["name"], row["kind"], json.loads(row["public"]),
            tuple(json.loads(row["credential_fields"])), _tuple(row["read_credential_fields"]),
            bytes(row["ciphertext"]),
            None if row["read_ciphertext"] is None else bytes(row["read_ciphertext"]),
            bytes(row["admin_wrap"]),
            None if row["admin_read_wrap"] is None else bytes(row["admin_read_wrap"]),
            row["created_at"], row["updated_at"])

    @staticmethod
    def _fields(row: ResourceRow) -> tuple[str | None, str | None]:
        read = row.read_credential_fields
        return _dump(list(row.credential_fields)), _dump(None if read is None else list(read))

    def resource_insert(self, row: ResourceRow) -> int:
        cur = self.c.execute(
            "INSERT INTO resources(repo_id, name, kind, public, credential_fields, "
            "read_credential_fields, ciphertext, read_ciphertext, admin_wrap, admin_read_wrap, "
            "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (row.repo_id, row.name, row.kind, _dump(row.public),
             *self._fields(row),
             row.ciphertext, row.read_ciphertext, row.admin_wrap, row.admin_read_wrap,
             row.created_at, row.updated_at))
        return int(cur.lastrowid or 0)

    def resource_get(self, repo_id: int, name: str) -> ResourceRow | None:
        return self._resource(self._one(
            "SELECT * FROM resources WHERE repo_id = ? AND name = ? AND deleted_at IS NULL",
            (repo_id, name)))

    def resource_list(self, repo_id: int | None = None) -> list[ResourceRow]:
        if repo_id is None:
            rows = self._all("SELECT * FROM resources WHERE deleted_at IS NULL ORDER BY id")
        else:
            rows = self._all("SELECT * FROM resources WHERE repo_id = ? AND deleted_at IS NULL "
                             "ORDER BY name", (repo_id,))
        return [r for r in map(self._resource, rows) if r is not None]

    def resource_replace(self, row: ResourceRow) -> None:
        self.scrub = True
        self.c.execute(
            "UPDATE resources SET kind=?, public=?, credential_fields=?, read_credential_fields=?, "
            "ciphertext=?, read_ciphertext=?, admin_wrap=?, admin_read_wrap=?, updated_at=? "
            "WHERE id = ?",
            (row.kind, _dump(row.public), *self._fields(row),
             row.ciphertext, row.read_ciphertext, row.admin_wrap, row.admin_read_wrap,
             row.updated_at, row.id))

    def resource_delete(self, resource_id: int, now: float) -> None:
        self.scrub = True
        # The row stays for the audit trail; its secrets go (secure_delete overwrites them).
        self.c.execute(
            "UPDATE resources SET deleted_at = ?, ciphertext = x'', read_ciphertext = NULL, "
            "admin_wrap = x'', admin_read_wrap = NULL WHERE id = ?", (now, resource_id))
        self.c.execute("DELETE FROM key_wraps WHERE resource_id = ?", (resource_id,))

    # keys
    @staticmethod
    def _key(row: sqlite3.Row | None) -> KeyRow | None:
        if row is None:
            return None
        return KeyRow(row["key_id"], row["repo_id"], row["name"], row["access"],
                      _tuple(row["scope"]), row["expires_at"], _load(row["ai"]), row["created_at"],
                      row["created_by"], row["last_used_at"], row["revoked_at"])

    def key_insert(self, row: KeyRow) -> None:
        self.c.execute(
            "INSERT INTO keys(key_id, repo_id, name, access, scope, expires_at, ai, created_at, "
            "created_by, last_used_at, revoked_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (row.key_id, row.repo_id, row.name, row.access,
             _dump(None if row.scope is None else list(row.scope)), row.expires_at,
             _dump(row.ai), row.created_at, row.created_by, row.last_used_at, row.revoked_at))

    def key_get(self, key_id: str) -> KeyRow | None:
        return self._key(self._one("SELECT * FROM keys WHERE key_id = ?", (key_id,)))

    def key_list(self, repo_id: int | None = None) -> list[KeyRow]:
        if repo_id is None:
            rows = self._all("SELECT * FROM keys ORDER BY repo_id, created_at, key_id")
        else:
            rows = self._all("SELECT * FROM keys WHERE repo_id = ? ORDER BY created_at, key_id",
                             (repo_id,))
        return [k for k in map(self._key, rows) if k is not None]

    _KEY_FIELDS = frozenset({"name", "access", "scope", "expires_at", "ai", "revoked_at",
                             "last_used_at"})

    def key_update(self, key_id: str, **fields: Any) -> None:
        if not fields:
            return
        unknown = set(fields) - self._KEY_FIELDS
        if unknown:
            raise ValueError(f"unknown key fields {sorted(unknown)}")
        values = []
        for name, value in fields.items():
            if name == "scope":
                value = _dump(None if value is None else list(value))
            elif name == "ai":
                value = _dump(value)
            values.append(value)
        sets = ", ".join(f"{name} = ?" for name in fields)
        self.c.execute(f"UPDATE keys SET {sets} WHERE key_id = ?", (*values, key_id))

    def key_touch(self, key_id: str, now: float, every: float) -> bool:
        cur = self.c.execute(
            "UPDATE keys SET last_used_at = ? WHERE key_id = ? AND "
            "(last_used_at IS NULL OR last_used_at <= ?)", (now, key_id, now - every))
        return cur.rowcount > 0

    # key secrets and wraps
    def secret_insert(self, row: SecretRow) -> None:
        self.c.execute(
            "INSERT INTO key_secrets(key_id, generation, verifier, public_key, valid_until) "
            "VALUES (?,?,?,?,?)",
            (row.key_id, row.generation, row.verifier, row.public_key, row.valid_until))

    @staticmethod
    def _secret(row: sqlite3.Row) -> SecretRow:
        return SecretRow(row["key_id"], row["generation"], bytes(row["verifier"]),
                         bytes(row["public_key"]), row["valid_until"])

    def secrets(self, key_id: str) -> list[SecretRow]:
        rows = self._all("SELECT * FROM key_secrets WHERE key_id = ? ORDER BY generation DESC",
                         (key_id,))
        return [self._secret(r) for r in rows]

    def secret_set_valid_until(self, key_id: str, generation: int, until: float) -> None:
        self.c.execute("UPDATE key_secrets SET valid_until = ? WHERE key_id = ? AND generation = ?",
                       (until, key_id, generation))

    def secrets_delete(self, key_id: str, generations: Sequence[int] | None = None) -> None:
        self.scrub = True
        if generations is None:
            self.c.execute("DELETE FROM key_secrets WHERE key_id = ?", (key_id,))
            self.c.execute("DELETE FROM key_wraps WHERE key_id = ?", (key_id,))
            return
        for gen in generations:
            self.c.execute("DELETE FROM key_secrets WHERE key_id = ? AND generation = ?",
                           (key_id, gen))
            self.c.execute("DELETE FROM key_wraps WHERE key_id = ? AND generation = ?",
                           (key_id, gen))

    def secrets_expired(self, now: float) -> list[SecretRow]:
        rows = self._all("SELECT * FROM key_secrets WHERE valid_until IS NOT NULL AND "
                         "valid_until <= ?", (now,))
        return [self._secret(r) for r in rows]

    def wrap_put(self, row: WrapRow) -> None:
        self.c.execute(
            "INSERT INTO key_wraps(key_id, generation, resource_id, which, sealed) "
            "VALUES (?,?,?,?,?) ON CONFLICT(key_id, generation, resource_id, which) "
            "DO UPDATE SET sealed = excluded.sealed",
            (row.key_id, row.generation, row.resource_id, row.which, row.sealed))

    @staticmethod
    def _wrap(row: sqlite3.Row) -> WrapRow:
        return WrapRow(row["key_id"], row["generation"], row["resource_id"], row["which"],
                       bytes(row["sealed"]))

    def wrap_get(self, key_id: str, generation: int, resource_id: int, which: str
                 ) -> WrapRow | None:
        row = self._one("SELECT * FROM key_wraps WHERE key_id = ? AND generation = ? AND "
                        "resource_id = ? AND which = ?", (key_id, generation, resource_id, which))
        return None if row is None else self._wrap(row)

    def wraps(self, *, key_id: str | None = None, resource_id: int | None = None
              ) -> list[WrapRow]:
        where, args = self._wrap_where(key_id, resource_id, None)
        return [self._wrap(r) for r in self._all(f"SELECT * FROM key_wraps{where}", args)]

    def wraps_delete(self, *, key_id: str | None = None, resource_id: int | None = None,
                     which: str | None = None) -> None:
        where, args = self._wrap_where(key_id, resource_id, which)
        if not where:
            raise ValueError("refusing to delete every wrap")
        self.scrub = True
        self.c.execute(f"DELETE FROM key_wraps{where}", args)

    @staticmethod
    def _wrap_where(key_id: str | None, resource_id: int | None, which: str | None
                    ) -> tuple[str, list[Any]]:
        clauses, args = [], []
        for col, val in (("key_id", key_id), ("resource_id", resource_id), ("which", which)):
            if val is not None:
                clauses.append(f"{col} = ?")
                args.append(val)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    # usage
    def usage_add(self, day: str, repo_id: int, key_id: str, resource: str,
                  counters: dict[str, float]) -> None:
        self.c.executemany(
            "INSERT INTO usage(day, repo_id, key_id, resource, metric, value) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(day, repo_id, key_id, resource, metric) "
            "DO UPDATE SET value = value + excluded.value",
            [(day, repo_id, key_id, resource, m, v) for m, v in counters.items() if v])

    def usage_rows(self, repo_id: int | None = None, since_day: str | None = None
                   ) -> list[tuple[str, int, str, str, str, float]]:
        sql = "SELECT day, repo_id, key_id, resource, metric, value FROM usage"
        args: list[Any] = []
        clauses = []
        if repo_id is not None:
            clauses.append("repo_id = ?")
            args.append(repo_id)
        if since_day is not None:
            clauses.append("day >= ?")
            args.append(since_day)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return [(r[0], r[1], r[2], r[3], r[4], r[5])
                for r in self._all(sql + " ORDER BY day", args)]

    def ai_usage_add(self, day: str, repo_id: int, key_id: str, resource: str, model: str,
                     counters: dict[str, float]) -> None:
        self.c.executemany(
            "INSERT INTO ai_usage(day, repo_id, key_id, resource, model, metric, value) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(day, repo_id, key_id, resource, model, metric) "
            "DO UPDATE SET value = value + excluded.value",
            [(day, repo_id, key_id, resource, model, m, v) for m, v in counters.items() if v])

    def ai_usage_rows(self, repo_id: int | None = None
                      ) -> list[tuple[str, int, str, str, str, str, float]]:
        sql = "SELECT day, repo_id, key_id, resource, model, metric, value FROM ai_usage"
        args: list[Any] = []
        if repo_id is not None:
            sql += " WHERE repo_id = ?"
            args.append(repo_id)
        return [(r[0], r[1], r[2], r[3], r[4], r[5], r[6])
                for r in self._all(sql + " ORDER BY day", args)]

    def ledger_get(self, key_id: str, period: str) -> float:
        row = self._one("SELECT tokens FROM ai_ledger WHERE key_id = ? AND period = ?",
                        (key_id, period))
        return 0.0 if row is None else float(row[0])

    def ledger_add(self, key_id: str, period: str, tokens: float) -> None:
        self.c.execute("INSERT INTO ai_ledger(key_id, period, tokens) VALUES (?,?,?) "
                       "ON CONFLICT(key_id, period) DO UPDATE SET tokens = tokens + "
                       "excluded.tokens", (key_id, period, tokens))

    def ledger_reserve(self, key_id: str, period: str, tokens: float, limit: float) -> bool:
        # Writes hold the whole file (BEGIN IMMEDIATE): read-check-add is one step here.
        if self.ledger_get(key_id, period) + tokens > limit:
            return False
        self.ledger_add(key_id, period, tokens)
        return True

    def rate_take(self, key_id: str, minute: int, limit: int) -> bool:
        if self.rate_get(key_id, minute) >= limit:
            return False
        self.rate_add(key_id, minute)
        return True

    def rate_get(self, key_id: str, minute: int) -> int:
        row = self._one("SELECT requests FROM ai_rate WHERE key_id = ? AND minute = ?",
                        (key_id, minute))
        return 0 if row is None else int(row[0])

    def rate_add(self, key_id: str, minute: int) -> None:
        self.c.execute("INSERT INTO ai_rate(key_id, minute, requests) VALUES (?,?,1) "
                       "ON CONFLICT(key_id, minute) DO UPDATE SET requests = requests + 1",
                       (key_id, minute))
        self.c.execute("DELETE FROM ai_rate WHERE key_id = ? AND minute < ?",
                       (key_id, minute - 1))

    # audit
    def audit_head(self) -> tuple[int, bytes]:
        row = self._one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return (0, b"") if row is None else (int(row[0]), bytes(row[1]))

    def audit_insert(self, row: AuditRow) -> None:
        self.c.execute(
            "INSERT INTO audit(seq, ts, repo, actor, action, target, detail, prev_hash, hash) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (row.seq, row.ts, row.repo, row.actor, row.action, row.target, _dump(row.detail),
             row.prev_hash, row.hash))

    def audit_rows(self, repo: str | None = None, limit: int | None = None) -> list[AuditRow]:
        sql, args = "SELECT * FROM audit", list[Any]()
        if repo is not None:
            sql += " WHERE repo = ?"
            args.append(repo)
        sql += " ORDER BY seq"
        if limit is not None:
            sql = f"SELECT * FROM ({sql[:-len(' ORDER BY seq')]} ORDER BY seq DESC LIMIT ?) " \
                  "ORDER BY seq"
            args.append(limit)
        return [AuditRow(r["seq"], r["ts"], r["repo"], r["actor"], r["action"], r["target"],
                         json.loads(r["detail"]), bytes(r["prev_hash"]), bytes(r["hash"]))
                for r in self._all(sql, args)]

    def seal_insert(self, row: SealRow) -> None:
        self.c.execute("INSERT INTO audit_seals(seq, ts, row_count, head_hash, mac) "
                       "VALUES (?,?,?,?,?)",
                       (row.seq, row.ts, row.row_count, row.head_hash, row.mac))

    def seals(self) -> list[SealRow]:
        return [SealRow(r["seq"], r["ts"], r["row_count"], bytes(r["head_hash"]), bytes(r["mac"]))
                for r in self._all("SELECT * FROM audit_seals ORDER BY seq")]

    def seal_last(self) -> SealRow | None:
        r = self._one("SELECT * FROM audit_seals ORDER BY seq DESC LIMIT 1")
        return None if r is None else SealRow(r["seq"], r["ts"], r["row_count"],
                                              bytes(r["head_hash"]), bytes(r["mac"]))

    def seal_replace_mac(self, seq: int, mac: bytes) -> None:
        self.c.execute("UPDATE audit_seals SET mac = ? WHERE seq = ?", (mac, seq))

    # whole tables
    def table_rows(self, table: str) -> list[tuple[Any, ...]]:
        columns, order = TABLES[table]
        return [tuple(r) for r in self._all(f"SELECT {', '.join(columns)} FROM {table} "
                                            f"ORDER BY {order}")]

    def table_load(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        columns, _ = TABLES[table]
        marks = ", ".join("?" * len(columns))
        self.c.executemany(f"INSERT INTO {table}({', '.join(columns)}) VALUES ({marks})", rows)


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
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
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
                conn = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True,
                                       isolation_level=None, check_same_thread=False)
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
            raise CatalogError(f"the catalog at {self.path} has schema {version}, newer than "
                               f"this repolib understands ({SCHEMA_VERSION}): upgrade repolib")
        if version < SCHEMA_VERSION:
            if self.read_only:
                raise CatalogReadOnly(f"the catalog at {self.path} needs a schema upgrade, "
                                      "but it is read-only here: open it once with write access")
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
                    raise CatalogError("the catalog stayed locked by another process for "
                                       f"{BUSY_TIMEOUT_S:.0f} s; try again") from exc
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
            raise CatalogReadOnly(f"the catalog at {self.path} is read-only here; changes need "
                                  "write access to it (ask whoever manages the catalog)")
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
