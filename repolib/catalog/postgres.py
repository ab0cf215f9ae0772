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
import json
import os
import threading
import urllib.parse
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from ..exceptions import BackendUnavailable, CatalogError, CatalogReadOnly, ConfigError
from . import pgschema
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

try:
    import psycopg
    import psycopg.errors
    import psycopg_pool
    from psycopg.rows import dict_row
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise BackendUnavailable('a PostgreSQL catalog needs psycopg: pip install '
                             '"repolib[postgres]"') from exc

CONNECT_TIMEOUT_S = 5  # libpq's connect_timeout, unless the URL sets one
LOCK_TIMEOUT_MS = 60_000  # as long as SQLite's busy timeout
POOL_MAX = 10
POOL_WAIT_S = 1.0  # then a connection of its own (busy pool) or the reason (server gone)
CHANNEL = "repolib_catalog"
LISTEN_PING_S = 5.0
# Advisory lock ids: (class, object); the object is a hash of the schema, so catalogs in two
# schemas of one database do not wait for each other.
AUDIT_LOCK = 0x7265706F  # "repo"
MIGRATE_LOCK = 0x6D696772  # "migr"


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
            [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
             if k.lower() != "password"], safe="/:=")
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


class PostgresTx(Tx):
    """One transaction on one connection (statements use ``%s`` parameters)."""

    def __init__(self, conn: psycopg.Connection[Any], store: PostgresStore, write: bool) -> None:
        self.c = conn
        self.store = store
        self.write = write
        self.notify = False  # keys or resources changed: tell the other processes at commit
        self._audit_locked = False

    def _x(self, sql: str, args: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.c.execute(sql, args)

    def _one(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        row: dict[str, Any] | None = self.c.execute(sql, args).fetchone()
        return row

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return list(self.c.execute(sql, args).fetchall())

    def _changed(self) -> None:
        self.notify = True

    def _lock_audit(self) -> None:
        """One audit writer at a time (held until commit or rollback)."""
        if self.write and not self._audit_locked:
            self._x("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))",
                    (AUDIT_LOCK,))
            self._audit_locked = True

    # meta
    def meta_get(self, name: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE name = %s", (name,))
        return None if row is None else bytes(row["value"])

    def meta_set(self, name: str, value: bytes) -> None:
        self._x("INSERT INTO meta(name, value) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
                "SET value = excluded.value", (name, value))

    # repositories
    @staticmethod
    def _repo(row: dict[str, Any] | None) -> RepoRow | None:
        if row is None:
            return None
        return RepoRow(row["id"], row["name"], row["description"], row["created_at"],
                       row["updated_at"])

    def repo_insert(self, name: str, description: str, now: float) -> RepoRow:
        row = self._one("INSERT INTO repositories(name, description, created_at, updated_at) "
                        "VALUES (%s, %s, %s, %s) RETURNING id", (name, description, now, now))
        assert row is not None
        return RepoRow(int(row["id"]), name, description, now, now)

    def repo_get(self, name: str) -> RepoRow | None:
        return self._repo(self._one(
            "SELECT * FROM repositories WHERE name = %s AND deleted_at IS NULL", (name,)))

    def repo_by_id(self, repo_id: int) -> RepoRow | None:
        return self._repo(self._one(
            "SELECT * FROM repositories WHERE id = %s AND deleted_at IS NULL", (repo_id,)))

    def repo_list(self) -> list[RepoRow]:
        rows = self._all("SELECT * FROM repositories WHERE deleted_at IS NULL ORDER BY name")
        return [r for r in map(self._repo, rows) if r is not None]

    def repo_update(self, repo_id: int, description: str, now: float) -> None:
        self._x("UPDATE repositories SET description = %s, updated_at = %s WHERE id = %s",
                (description, now, repo_id))

    def repo_delete(self, repo_id: int, now: float) -> None:
        self._x("UPDATE repositories SET deleted_at = %s WHERE id = %s", (now, repo_id))
        self._changed()

    # resources
    @staticmethod
    def _resource(row: dict[str, Any] | None) -> ResourceRow | None:
        if row is None:
            return None
        read_fields = row["read_credential_fields"]
        return ResourceRow(
            row["id"], row["repo_id"], row["name"], row["kind"], json.loads(row["public"]),
            tuple(json.loads(row["credential_fields"])),
            None if read_fields is None else tuple(json.loads(read_fields)),
            bytes(row["ciphertext"]),
            None if row["read_ciphertext"] is None else bytes(row["read_ciphertext"]),
            bytes(row["admin_wrap"]),
            None if row["admin_read_wrap"] is None else bytes(row["admin_read_wrap"]),
            row["created_at"], row["updated_at"])

    @staticmethod
    def _fields(row: ResourceRow) -> tuple[str, str | None]:
        read = row.read_credential_fields
        return _dump(list(row.credential_fields)), _dump(None if read is None else list(read))

    def resource_insert(self, row: ResourceRow) -> int:
        out = self._one(
            "INSERT INTO resources(repo_id, name, kind, public, credential_fields, "
            "read_credential_fields, ciphertext, read_ciphertext, admin_wrap, admin_read_wrap, "
            "created_at, updated_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
            (row.repo_id, row.name, row.kind, _dump(row.public), *self._fields(row),
             row.ciphertext, row.read_ciphertext, row.admin_wrap, row.admin_read_wrap,
             row.created_at, row.updated_at))
        assert out is not None
        self._changed()
        return int(out["id"])

    def resource_get(self, repo_id: int, name: str) -> ResourceRow | None:
        return self._resource(self._one(
            "SELECT * FROM resources WHERE repo_id = %s AND name = %s AND deleted_at IS NULL",
            (repo_id, name)))

    def resource_list(self, repo_id: int | None = None) -> list[ResourceRow]:
        if repo_id is None:
            rows = self._all("SELECT * FROM resources WHERE deleted_at IS NULL ORDER BY id")
        else:
            rows = self._all("SELECT * FROM resources WHERE repo_id = %s AND deleted_at IS NULL "
                             "ORDER BY name", (repo_id,))
        return [r for r in map(self._resource, rows) if r is not None]

    def resource_replace(self, row: ResourceRow) -> None:
        self._x(
            "UPDATE resources SET kind=%s, public=%s, credential_fields=%s, "
            "read_credential_fields=%s, ciphertext=%s, read_ciphertext=%s, admin_wrap=%s, "
            "admin_read_wrap=%s, updated_at=%s WHERE id = %s",
            (row.kind, _dump(row.public), *self._fields(row), row.ciphertext,
             row.read_ciphertext, row.admin_wrap, row.admin_read_wrap, row.updated_at, row.id))
        self._changed()

    def resource_delete(self, resource_id: int, now: float) -> None:
        self._x("UPDATE resources SET deleted_at = %s, ciphertext = '', read_ciphertext = NULL, "
                "admin_wrap = '', admin_read_wrap = NULL WHERE id = %s", (now, resource_id))
        self._x("DELETE FROM key_wraps WHERE resource_id = %s", (resource_id,))
        self._changed()

    # keys
    @staticmethod
    def _key(row: dict[str, Any] | None) -> KeyRow | None:
        if row is None:
            return None
        scope = _load(row["scope"])
        return KeyRow(row["key_id"], row["repo_id"], row["name"], row["access"],
                      None if scope is None else tuple(scope), row["expires_at"],
                      _load(row["ai"]), row["created_at"], row["created_by"],
                      row["last_used_at"], row["revoked_at"])

    def key_insert(self, row: KeyRow) -> None:
        self._x(
            "INSERT INTO keys(key_id, repo_id, name, access, scope, expires_at, ai, created_at, "
            "created_by, last_used_at, revoked_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (row.key_id, row.repo_id, row.name, row.access,
             _dump(None if row.scope is None else list(row.scope)), row.expires_at,
             _dump(row.ai), row.created_at, row.created_by, row.last_used_at, row.revoked_at))

    def key_get(self, key_id: str) -> KeyRow | None:
        return self._key(self._one("SELECT * FROM keys WHERE key_id = %s", (key_id,)))

    def key_list(self, repo_id: int | None = None) -> list[KeyRow]:
        if repo_id is None:
            rows = self._all("SELECT * FROM keys ORDER BY repo_id, created_at, key_id")
        else:
            rows = self._all("SELECT * FROM keys WHERE repo_id = %s ORDER BY created_at, key_id",
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
        sets = ", ".join(f"{name} = %s" for name in fields)
        self._x(f"UPDATE keys SET {sets} WHERE key_id = %s", (*values, key_id))
        self._changed()

    def key_touch(self, key_id: str, now: float, every: float) -> bool:
        cur = self._x("UPDATE keys SET last_used_at = %s WHERE key_id = %s AND "
                      "(last_used_at IS NULL OR last_used_at <= %s)", (now, key_id, now - every))
        return cur.rowcount > 0

    # key secrets and wraps
    def secret_insert(self, row: SecretRow) -> None:
        self._x("INSERT INTO key_secrets(key_id, generation, verifier, public_key, valid_until) "
                "VALUES (%s,%s,%s,%s,%s)",
                (row.key_id, row.generation, row.verifier, row.public_key, row.valid_until))

    @staticmethod
    def _secret(row: dict[str, Any]) -> SecretRow:
        return SecretRow(row["key_id"], row["generation"], bytes(row["verifier"]),
                         bytes(row["public_key"]), row["valid_until"])

    def secrets(self, key_id: str) -> list[SecretRow]:
        rows = self._all("SELECT * FROM key_secrets WHERE key_id = %s ORDER BY generation DESC",
                         (key_id,))
        return [self._secret(r) for r in rows]

    def secret_set_valid_until(self, key_id: str, generation: int, until: float) -> None:
        self._x("UPDATE key_secrets SET valid_until = %s WHERE key_id = %s AND generation = %s",
                (until, key_id, generation))
        self._changed()

    def secrets_delete(self, key_id: str, generations: Sequence[int] | None = None) -> None:
        if generations is None:
            self._x("DELETE FROM key_secrets WHERE key_id = %s", (key_id,))
            self._x("DELETE FROM key_wraps WHERE key_id = %s", (key_id,))
        else:
            gens = sorted(generations)
            self._x("DELETE FROM key_secrets WHERE key_id = %s AND generation = ANY(%s)",
                    (key_id, gens))
            self._x("DELETE FROM key_wraps WHERE key_id = %s AND generation = ANY(%s)",
                    (key_id, gens))
        self._changed()

    def secrets_expired(self, now: float) -> list[SecretRow]:
        # A fixed order, so two purges running at once lock rows in the same order.
        rows = self._all("SELECT * FROM key_secrets WHERE valid_until IS NOT NULL AND "
                         "valid_until <= %s ORDER BY key_id, generation", (now,))
        return [self._secret(r) for r in rows]

    def wrap_put(self, row: WrapRow) -> None:
        self._x("INSERT INTO key_wraps(key_id, generation, resource_id, which, sealed) "
                "VALUES (%s,%s,%s,%s,%s) ON CONFLICT (key_id, generation, resource_id, which) "
                "DO UPDATE SET sealed = excluded.sealed",
                (row.key_id, row.generation, row.resource_id, row.which, row.sealed))

    @staticmethod
    def _wrap(row: dict[str, Any]) -> WrapRow:
        return WrapRow(row["key_id"], row["generation"], row["resource_id"], row["which"],
                       bytes(row["sealed"]))

    def wrap_get(self, key_id: str, generation: int, resource_id: int, which: str
                 ) -> WrapRow | None:
        row = self._one("SELECT * FROM key_wraps WHERE key_id = %s AND generation = %s AND "
                        "resource_id = %s AND which = %s",
                        (key_id, generation, resource_id, which))
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
        self._x(f"DELETE FROM key_wraps{where}", args)
        self._changed()

    @staticmethod
    def _wrap_where(key_id: str | None, resource_id: int | None, which: str | None
                    ) -> tuple[str, list[Any]]:
        clauses, args = [], []
        for col, val in (("key_id", key_id), ("resource_id", resource_id), ("which", which)):
            if val is not None:
                clauses.append(f"{col} = %s")
                args.append(val)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    # usage: added to what is there, in a fixed order (two flushes never wait on each other
    # in a circle)
    def usage_add(self, day: str, repo_id: int, key_id: str, resource: str,
                  counters: dict[str, float]) -> None:
        rows = [(day, repo_id, key_id, resource, m, v) for m, v in sorted(counters.items()) if v]
        if rows:
            with self.c.cursor() as cur:
                cur.executemany(
                    "INSERT INTO usage(day, repo_id, key_id, resource, metric, value) "
                    "VALUES (%s,%s,%s,%s,%s,%s) "
                    "ON CONFLICT (day, repo_id, key_id, resource, metric) "
                    "DO UPDATE SET value = usage.value + excluded.value", rows)

    def usage_rows(self, repo_id: int | None = None, since_day: str | None = None
                   ) -> list[tuple[str, int, str, str, str, float]]:
        sql = "SELECT day, repo_id, key_id, resource, metric, value FROM usage"
        clauses: list[str] = []
        args: list[Any] = []
        if repo_id is not None:
            clauses.append("repo_id = %s")
            args.append(repo_id)
        if since_day is not None:
            clauses.append("day >= %s")
            args.append(since_day)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return [(r["day"], r["repo_id"], r["key_id"], r["resource"], r["metric"], r["value"])
                for r in self._all(sql + " ORDER BY day", args)]

    def ai_usage_add(self, day: str, repo_id: int, key_id: str, resource: str, model: str,
                     counters: dict[str, float]) -> None:
        rows = [(day, repo_id, key_id, resource, model, m, v)
                for m, v in sorted(counters.items()) if v]
        if rows:
            with self.c.cursor() as cur:
                cur.executemany(
                    "INSERT INTO ai_usage(day, repo_id, key_id, resource, model, metric, value) "
                    "VALUES (%s,%s,%s,%s,%s,%s,%s) "
                    "ON CONFLICT (day, repo_id, key_id, resource, model, metric) "
                    "DO UPDATE SET value = ai_usage.value + excluded.value", rows)

    def ai_usage_rows(self, repo_id: int | None = None
                      ) -> list[tuple[str, int, str, str, str, str, float]]:
        sql = "SELECT day, repo_id, key_id, resource, model, metric, value FROM ai_usage"
        args: list[Any] = []
        if repo_id is not None:
            sql += " WHERE repo_id = %s"
            args.append(repo_id)
        return [(r["day"], r["repo_id"], r["key_id"], r["resource"], r["model"], r["metric"],
                 r["value"]) for r in self._all(sql + " ORDER BY day", args)]

    def ledger_get(self, key_id: str, period: str) -> float:
        row = self._one("SELECT tokens FROM ai_ledger WHERE key_id = %s AND period = %s",
                        (key_id, period))
        return 0.0 if row is None else float(row["tokens"])

    def ledger_add(self, key_id: str, period: str, tokens: float) -> None:
        self._x("INSERT INTO ai_ledger(key_id, period, tokens) VALUES (%s,%s,%s) "
                "ON CONFLICT (key_id, period) DO UPDATE SET tokens = ai_ledger.tokens + "
                "excluded.tokens", (key_id, period, tokens))

    def ledger_reserve(self, key_id: str, period: str, tokens: float, limit: float) -> bool:
        if tokens > limit:
            return False
        # The conflicting row is locked and the WHERE re-read on its newest version: a check
        # and an add no other transaction can come between.
        row = self._one("INSERT INTO ai_ledger(key_id, period, tokens) VALUES (%s,%s,%s) "
                        "ON CONFLICT (key_id, period) DO UPDATE SET tokens = ai_ledger.tokens + "
                        "excluded.tokens WHERE ai_ledger.tokens + excluded.tokens <= %s "
                        "RETURNING tokens", (key_id, period, tokens, limit))
        return row is not None

    def rate_get(self, key_id: str, minute: int) -> int:
        row = self._one("SELECT requests FROM ai_rate WHERE key_id = %s AND minute = %s",
                        (key_id, minute))
        return 0 if row is None else int(row["requests"])

    def rate_add(self, key_id: str, minute: int) -> None:
        self._x("INSERT INTO ai_rate(key_id, minute, requests) VALUES (%s,%s,1) "
                "ON CONFLICT (key_id, minute) DO UPDATE SET requests = ai_rate.requests + 1",
                (key_id, minute))
        self._rate_prune(key_id, minute)

    def rate_take(self, key_id: str, minute: int, limit: int) -> bool:
        if limit < 1:
            return False
        row = self._one("INSERT INTO ai_rate(key_id, minute, requests) VALUES (%s,%s,1) "
                        "ON CONFLICT (key_id, minute) DO UPDATE SET requests = "
                        "ai_rate.requests + 1 WHERE ai_rate.requests < %s RETURNING requests",
                        (key_id, minute, limit))
        if row is not None:
            self._rate_prune(key_id, minute)
        return row is not None

    def _rate_prune(self, key_id: str, minute: int) -> None:
        self._x("DELETE FROM ai_rate WHERE key_id = %s AND minute < %s", (key_id, minute - 1))

    # audit
    def audit_head(self) -> tuple[int, bytes]:
        self._lock_audit()
        row = self._one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return (0, b"") if row is None else (int(row["seq"]), bytes(row["hash"]))

    def audit_insert(self, row: AuditRow) -> None:
        self._lock_audit()
        self._x("INSERT INTO audit(seq, ts, repo, actor, action, target, detail, prev_hash, "
                "hash) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (row.seq, row.ts, row.repo, row.actor, row.action, row.target,
                 _dump(row.detail), row.prev_hash, row.hash))

    def audit_rows(self, repo: str | None = None, limit: int | None = None) -> list[AuditRow]:
        where, args = "", []
        if repo is not None:
            where = " WHERE repo = %s"
            args.append(repo)
        if limit is None:
            sql = f"SELECT * FROM audit{where} ORDER BY seq"
        else:
            sql = f"SELECT * FROM (SELECT * FROM audit{where} ORDER BY seq DESC LIMIT %s) t " \
                  "ORDER BY seq"
            args.append(limit)
        return [AuditRow(r["seq"], r["ts"], r["repo"], r["actor"], r["action"], r["target"],
                         json.loads(r["detail"]), bytes(r["prev_hash"]), bytes(r["hash"]))
                for r in self._all(sql, args)]

    def seal_insert(self, row: SealRow) -> None:
        self._lock_audit()
        self._x("INSERT INTO audit_seals(seq, ts, row_count, head_hash, mac) "
                "VALUES (%s,%s,%s,%s,%s)", (row.seq, row.ts, row.row_count, row.head_hash,
                                            row.mac))

    def seals(self) -> list[SealRow]:
        self._lock_audit()
        return [SealRow(r["seq"], r["ts"], r["row_count"], bytes(r["head_hash"]),
                        bytes(r["mac"]))
                for r in self._all("SELECT * FROM audit_seals ORDER BY seq")]

    def seal_last(self) -> SealRow | None:
        self._lock_audit()
        r = self._one("SELECT * FROM audit_seals ORDER BY seq DESC LIMIT 1")
        return None if r is None else SealRow(r["seq"], r["ts"], r["row_count"],
                                              bytes(r["head_hash"]), bytes(r["mac"]))

    def seal_replace_mac(self, seq: int, mac: bytes) -> None:
        self._lock_audit()
        self._x("UPDATE audit_seals SET mac = %s WHERE seq = %s", (mac, seq))

    # whole tables
    def table_rows(self, table: str) -> list[tuple[Any, ...]]:
        columns, order = TABLES[table]
        rows = self._all(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r.values())
                for r in rows]

    def table_load(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        columns, _ = TABLES[table]
        marks = ", ".join(["%s"] * len(columns))
        if rows:
            with self.c.cursor() as cur:
                cur.executemany(f"INSERT INTO {table}({', '.join(columns)}) VALUES ({marks})",
                                [tuple(r) for r in rows])
        if table in pgschema.SERIAL_TABLES:
            self._x(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table}")
        self._changed()


def _dump(value: Any) -> Any:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _load(value: str | None) -> Any:
    return None if value is None else json.loads(value)


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
        store._local = threading.local()


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
            raise ConfigError(f"the catalog URL{shown} is not a valid PostgreSQL URL "
                              "(postgresql://user@host:port/database)") from None
        self._url = url
        self._kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row,
                                        "application_name": params.get("application_name",
                                                                       "repolib")}
        if "connect_timeout" not in params:
            self._kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        self.location = redact(url)
        self.read_only = read_only
        self._local = threading.local()
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
            return CatalogError(f"{where} refused the login: wrong or missing password (give it "
                                "in PGPASSWORD or a .pgpass file, never on the command line)")
        if "does not exist" in low and "database" in low:
            return CatalogError(f"{where}: the database does not exist; create it (createdb) "
                                "or fix the catalog URL")
        if "does not exist" in low and "role" in low:
            return CatalogError(f"{where}: the user does not exist on that server; fix the "
                                "catalog URL or create the role")
        if any(s in low for s in ("connection refused", "could not connect", "timeout expired",
                                  "no such file or directory", "could not translate host",
                                  "name or service not known", "network is unreachable",
                                  "the database system is", "server closed the connection",
                                  "no route to host")):
            return CatalogError(f"cannot reach {where} ({text}): is the server running? "
                                "repolib reconnects by itself once it is back")
        return CatalogError(f"cannot connect to {where}: {text}")

    def _error(self, exc: psycopg.Error, committing: bool = False, writing: bool = True
               ) -> CatalogError:
        """A psycopg error met inside a transaction, as one line."""
        where = f"the PostgreSQL catalog at {self.location}"
        if isinstance(exc, psycopg.OperationalError) and (
                isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.CrashShutdown)
                or exc.sqlstate is None or exc.sqlstate.startswith("08")):
            if committing:
                return CatalogError(f"lost the connection to {where} while committing: the change "
                                    "may or may not have been saved; check before repeating it")
            if not writing:
                return CatalogError(f"lost the connection to {where}; try again (repolib "
                                    "reconnects once the server is back)")
            return CatalogError(f"lost the connection to {where}: nothing of this change was "
                                "saved; try again (repolib reconnects once the server is back)")
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
            return CatalogError(f"{where} has no repolib catalog, or an incomplete one: run "
                                "`repolib --catalog URL init` there (as the admin)")
        if isinstance(exc, psycopg.errors.InsufficientPrivilege |
                      psycopg.errors.ReadOnlySqlTransaction):
            return CatalogReadOnly(f"{where} is read-only for this user; changes need a user "
                                   "that may write its tables (ask whoever manages the catalog)")
        if isinstance(exc, psycopg.errors.UniqueViolation | psycopg.errors.DeadlockDetected |
                      psycopg.errors.SerializationFailure):
            return CatalogError(f"another process changed {where} at the same time; nothing was "
                                "saved, try again")
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return CatalogError(f"{where} stayed locked by another process for "
                                f"{LOCK_TIMEOUT_MS // 1000} s; try again")
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
                self._local = threading.local()
            conn = self._connect()  # the real reason when the server cannot be used
            try:
                self._check_schema(conn)
            finally:
                conn.close()
            pool = psycopg_pool.ConnectionPool(
                self._url, kwargs=self._kwargs, min_size=1, max_size=POOL_MAX, open=False,
                configure=self._configure, name="repolib-catalog", timeout=POOL_WAIT_S,
                reconnect_timeout=2.0, max_idle=300.0)
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
            raise CatalogError(f"the catalog at {self.location} has schema {version}, newer than "
                               f"this repolib understands ({pgschema.SCHEMA_VERSION}): upgrade "
                               "repolib")
        if version < pgschema.SCHEMA_VERSION:
            if self.read_only:
                raise CatalogReadOnly(f"the catalog at {self.location} needs a schema upgrade, "
                                      "but it is opened read-only here: open it once with write "
                                      "access")
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
        row = conn.execute("SELECT has_table_privilege('usage', 'INSERT') AND "
                           "has_table_privilege('keys', 'UPDATE') AS ok").fetchone()
        return bool(row and row["ok"])

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Create or upgrade the schema in one transaction, one process at a time."""
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))",
                             (MIGRATE_LOCK,))
                conn.execute(f"CREATE TABLE IF NOT EXISTS {pgschema.VERSION_TABLE} "
                             "(version INTEGER NOT NULL)")
                version = self._version(conn) or 0
                if version > pgschema.SCHEMA_VERSION:
                    raise CatalogError(f"the catalog at {self.location} has schema {version}, "
                                       "newer than this repolib understands: upgrade repolib")
                for step in range(version, pgschema.SCHEMA_VERSION):
                    for statement in pgschema.statements(step):
                        conn.execute(statement)  # type: ignore[arg-type]
                conn.execute(f"DELETE FROM {pgschema.VERSION_TABLE}")
                conn.execute(f"INSERT INTO {pgschema.VERSION_TABLE}(version) VALUES (%s)",
                             (pgschema.SCHEMA_VERSION,))
        except psycopg.errors.InsufficientPrivilege:
            raise CatalogReadOnly(f"the user in the catalog URL may not create tables in "
                                  f"{self.location}: the admin creates or upgrades the catalog "
                                  "(`repolib --catalog URL init`)") from None
        except psycopg.Error as exc:
            raise self._error(exc) from None
        self._exists = True

    def _acquire(self, begin: str) -> tuple[psycopg.Connection[Any], bool]:
        """A connection with ``begin`` run on it; True when it is a one-off (not pooled)."""
        pool = self._pool_now()
        if not self._exists:
            raise CatalogError(f"no repolib catalog in {self.location}: run `repolib --catalog "
                               "URL init` there (as the admin, once)")
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
        begin = ("BEGIN ISOLATION LEVEL READ COMMITTED" if write else
                 "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn, own = self._acquire(begin)
        tx = PostgresTx(conn, self, write)
        self._local.tx, self._local.pid = tx, os.getpid()
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
        if tx is not None and self._local.pid == os.getpid():
            return tx
        return None

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
            raise CatalogReadOnly(f"the catalog at {self.location} is read-only here; changes "
                                  "need a user that may write it (ask whoever manages it)")
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
        self._local = threading.local()

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
                schema = conn.execute("SELECT current_schema() AS s").fetchone()["s"]
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

