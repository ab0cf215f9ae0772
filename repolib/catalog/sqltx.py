"""The catalog's transactions in SQL, written once for SQLite and PostgreSQL (``?`` parameters).

Both stores speak this SQL (upserts with ``ON CONFLICT ... DO UPDATE ... WHERE``, ``RETURNING``;
SQLite 3.35 or newer). What differs is behind four hooks: how a statement runs (``_x``, ``_one``,
``_all``, ``_many``), ``_changed`` (PostgreSQL tells other processes that keys or resources
changed), ``_secrets_gone`` (SQLite scrubs its WAL after the commit) and ``_lock_audit`` (one
audit writer at a time on PostgreSQL; SQLite's writer holds the whole file anyway).

A budget or rate reservation is one conditional upsert: the conflicting row is locked and the
condition re-read on its newest version, so a check and an add no other transaction can come
between. Usage counters are added in a fixed order (two flushes never wait on each other in a
circle), and so are expired secrets purged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .store import (
    TABLES,
    AuditRow,
    KeyRow,
    RepoRow,
    ResourceRow,
    SealRow,
    SecretRow,
    Tx,
    WrapRow,
)

Row = Any  # sqlite3.Row or a psycopg dict row: both are read by column name


class SqlTx(Tx):
    """The ``Tx`` interface in SQL; subclasses say how a statement runs on their connection."""

    def _x(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Run a statement; returns the cursor (``rowcount``)."""
        raise NotImplementedError

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        raise NotImplementedError

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _changed(self) -> None:
        """Keys or resources changed in this transaction."""

    def _secrets_gone(self) -> None:
        """This transaction deleted or replaced secret material (wraps, ciphertexts)."""

    def _lock_audit(self) -> None:
        """Before the audit chain or its seals are read or appended."""

    # meta
    def meta_get(self, name: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE name = ?", (name,))
        return None if row is None else bytes(row["value"])

    def meta_set(self, name: str, value: bytes) -> None:
        self._x(
            "INSERT INTO meta(name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
            "SET value = excluded.value",
            (name, value),
        )

    # repositories
    @staticmethod
    def _repo(row: Row | None) -> RepoRow | None:
        if row is None:
            return None
        return RepoRow(
            row["id"], row["name"], row["description"], row["created_at"], row["updated_at"]
        )

    def repo_insert(self, name: str, description: str, now: float) -> RepoRow:
        row = self._one(
            "INSERT INTO repositories(name, description, created_at, updated_at) "
            "VALUES (?, ?, ?, ?) RETURNING id",
            (name, description, now, now),
        )
        assert row is not None
        return RepoRow(int(row["id"]), name, description, now, now)

    def repo_get(self, name: str) -> RepoRow | None:
        return self._repo(
            self._one("SELECT * FROM repositories WHERE name = ? AND deleted_at IS NULL", (name,))
        )

    def repo_by_id(self, repo_id: int) -> RepoRow | None:
        return self._repo(
            self._one("SELECT * FROM repositories WHERE id = ? AND deleted_at IS NULL", (repo_id,))
        )

    def repo_list(self) -> list[RepoRow]:
        rows = self._all("SELECT * FROM repositories WHERE deleted_at IS NULL ORDER BY name")
        return [r for r in map(self._repo, rows) if r is not None]

    def repo_update(self, repo_id: int, description: str, now: float) -> None:
        self._x(
            "UPDATE repositories SET description = ?, updated_at = ? WHERE id = ?",
            (description, now, repo_id),
        )

    def repo_delete(self, repo_id: int, now: float) -> None:
        self._x("UPDATE repositories SET deleted_at = ? WHERE id = ?", (now, repo_id))
        self._changed()

    # resources
    @staticmethod
    def _resource(row: Row | None) -> ResourceRow | None:
        if row is None:
            return None
        read_fields = row["read_credential_fields"]
        return ResourceRow(
            row["id"],
            row["repo_id"],
            row["name"],
            row["kind"],
            json.loads(row["public"]),
            tuple(json.loads(row["credential_fields"])),
            None if read_fields is None else tuple(json.loads(read_fields)),
            bytes(row["ciphertext"]),
            None if row["read_ciphertext"] is None else bytes(row["read_ciphertext"]),
            bytes(row["admin_wrap"]),
            None if row["admin_read_wrap"] is None else bytes(row["admin_read_wrap"]),
            row["created_at"],
            row["updated_at"],
        )

    @staticmethod
    def _fields(row: ResourceRow) -> tuple[str, str | None]:
        read = row.read_credential_fields
        return _dump(list(row.credential_fields)), _dump(None if read is None else list(read))

    def resource_insert(self, row: ResourceRow) -> int:
        out = self._one(
            "INSERT INTO resources(repo_id, name, kind, public, credential_fields, "
            "read_credential_fields, ciphertext, read_ciphertext, admin_wrap, admin_read_wrap, "
            "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
            (
                row.repo_id,
                row.name,
                row.kind,
                _dump(row.public),
                *self._fields(row),
                row.ciphertext,
                row.read_ciphertext,
                row.admin_wrap,
                row.admin_read_wrap,
                row.created_at,
                row.updated_at,
            ),
        )
        assert out is not None
        self._changed()
        return int(out["id"])

    def resource_get(self, repo_id: int, name: str) -> ResourceRow | None:
        return self._resource(
            self._one(
                "SELECT * FROM resources WHERE repo_id = ? AND name = ? AND deleted_at IS NULL",
                (repo_id, name),
            )
        )

    def resource_list(self, repo_id: int | None = None) -> list[ResourceRow]:
        if repo_id is None:
            rows = self._all("SELECT * FROM resources WHERE deleted_at IS NULL ORDER BY id")
        else:
            rows = self._all(
                "SELECT * FROM resources WHERE repo_id = ? AND deleted_at IS NULL ORDER BY name",
                (repo_id,),
            )
        return [r for r in map(self._resource, rows) if r is not None]

    def resource_replace(self, row: ResourceRow) -> None:
        self._x(
            "UPDATE resources SET kind=?, public=?, credential_fields=?, "
            "read_credential_fields=?, ciphertext=?, read_ciphertext=?, admin_wrap=?, "
            "admin_read_wrap=?, updated_at=? WHERE id = ?",
            (
                row.kind,
                _dump(row.public),
                *self._fields(row),
                row.ciphertext,
                row.read_ciphertext,
                row.admin_wrap,
                row.admin_read_wrap,
                row.updated_at,
                row.id,
            ),
        )
        self._secrets_gone()  # the old ciphertexts and wraps
        self._changed()

    def resource_delete(self, resource_id: int, now: float) -> None:
        # The row stays for the audit trail; its secrets go.
        self._x(
            "UPDATE resources SET deleted_at = ?, ciphertext = ?, read_ciphertext = NULL, "
            "admin_wrap = ?, admin_read_wrap = NULL WHERE id = ?",
            (now, b"", b"", resource_id),
        )
        self._x("DELETE FROM key_wraps WHERE resource_id = ?", (resource_id,))
        self._secrets_gone()
        self._changed()

    # keys
    @staticmethod
    def _key(row: Row | None) -> KeyRow | None:
        if row is None:
            return None
        scope = _load(row["scope"])
        return KeyRow(
            row["key_id"],
            row["repo_id"],
            row["name"],
            row["access"],
            None if scope is None else tuple(scope),
            row["expires_at"],
            _load(row["ai"]),
            row["created_at"],
            row["created_by"],
            row["last_used_at"],
            row["revoked_at"],
        )

    def key_insert(self, row: KeyRow) -> None:
        self._x(
            "INSERT INTO keys(key_id, repo_id, name, access, scope, expires_at, ai, created_at, "
            "created_by, last_used_at, revoked_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                row.key_id,
                row.repo_id,
                row.name,
                row.access,
                _dump(None if row.scope is None else list(row.scope)),
                row.expires_at,
                _dump(row.ai),
                row.created_at,
                row.created_by,
                row.last_used_at,
                row.revoked_at,
            ),
        )

    def key_get(self, key_id: str) -> KeyRow | None:
        return self._key(self._one("SELECT * FROM keys WHERE key_id = ?", (key_id,)))

    def key_list(self, repo_id: int | None = None) -> list[KeyRow]:
        if repo_id is None:
            rows = self._all("SELECT * FROM keys ORDER BY repo_id, created_at, key_id")
        else:
            rows = self._all(
                "SELECT * FROM keys WHERE repo_id = ? ORDER BY created_at, key_id", (repo_id,)
            )
        return [k for k in map(self._key, rows) if k is not None]

    _KEY_FIELDS = frozenset(
        {"name", "access", "scope", "expires_at", "ai", "revoked_at", "last_used_at"}
    )

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
        self._x(f"UPDATE keys SET {sets} WHERE key_id = ?", (*values, key_id))
        self._changed()

    def key_touch(self, key_id: str, now: float, every: float) -> bool:
        cur = self._x(
            "UPDATE keys SET last_used_at = ? WHERE key_id = ? AND "
            "(last_used_at IS NULL OR last_used_at <= ?)",
            (now, key_id, now - every),
        )
        return bool(cur.rowcount > 0)

    # key secrets and wraps
    def secret_insert(self, row: SecretRow) -> None:
        self._x(
            "INSERT INTO key_secrets(key_id, generation, verifier, public_key, valid_until) "
            "VALUES (?,?,?,?,?)",
            (row.key_id, row.generation, row.verifier, row.public_key, row.valid_until),
        )

    @staticmethod
    def _secret(row: Row) -> SecretRow:
        return SecretRow(
            row["key_id"],
            row["generation"],
            bytes(row["verifier"]),
            bytes(row["public_key"]),
            row["valid_until"],
        )

    def secrets(self, key_id: str) -> list[SecretRow]:
        rows = self._all(
            "SELECT * FROM key_secrets WHERE key_id = ? ORDER BY generation DESC", (key_id,)
        )
        return [self._secret(r) for r in rows]

    def secret_set_valid_until(self, key_id: str, generation: int, until: float) -> None:
        self._x(
            "UPDATE key_secrets SET valid_until = ? WHERE key_id = ? AND generation = ?",
            (until, key_id, generation),
        )
        self._changed()

    def secrets_delete(self, key_id: str, generations: Sequence[int] | None = None) -> None:
        if generations is None:
            self._x("DELETE FROM key_secrets WHERE key_id = ?", (key_id,))
            self._x("DELETE FROM key_wraps WHERE key_id = ?", (key_id,))
        else:
            for gen in sorted(generations):
                self._x(
                    "DELETE FROM key_secrets WHERE key_id = ? AND generation = ?", (key_id, gen)
                )
                self._x("DELETE FROM key_wraps WHERE key_id = ? AND generation = ?", (key_id, gen))
        self._secrets_gone()
        self._changed()

    def secrets_expired(self, now: float) -> list[SecretRow]:
        # A fixed order, so two purges running at once lock rows in the same order.
        rows = self._all(
            "SELECT * FROM key_secrets WHERE valid_until IS NOT NULL AND "
            "valid_until <= ? ORDER BY key_id, generation",
            (now,),
        )
        return [self._secret(r) for r in rows]

    def wrap_put(self, row: WrapRow) -> None:
        self._x(
            "INSERT INTO key_wraps(key_id, generation, resource_id, which, sealed) "
            "VALUES (?,?,?,?,?) ON CONFLICT (key_id, generation, resource_id, which) "
            "DO UPDATE SET sealed = excluded.sealed",
            (row.key_id, row.generation, row.resource_id, row.which, row.sealed),
        )

    @staticmethod
    def _wrap(row: Row) -> WrapRow:
        return WrapRow(
            row["key_id"], row["generation"], row["resource_id"], row["which"], bytes(row["sealed"])
        )

    def wrap_get(
        self, key_id: str, generation: int, resource_id: int, which: str
    ) -> WrapRow | None:
        row = self._one(
            "SELECT * FROM key_wraps WHERE key_id = ? AND generation = ? AND "
            "resource_id = ? AND which = ?",
            (key_id, generation, resource_id, which),
        )
        return None if row is None else self._wrap(row)

    def wraps(self, *, key_id: str | None = None, resource_id: int | None = None) -> list[WrapRow]:
        where, args = self._wrap_where(key_id, resource_id, None)
        return [self._wrap(r) for r in self._all(f"SELECT * FROM key_wraps{where}", args)]

    def wraps_delete(
        self, *, key_id: str | None = None, resource_id: int | None = None, which: str | None = None
    ) -> None:
        where, args = self._wrap_where(key_id, resource_id, which)
        if not where:
            raise ValueError("refusing to delete every wrap")
        self._x(f"DELETE FROM key_wraps{where}", args)
        self._secrets_gone()
        self._changed()

    @staticmethod
    def _wrap_where(
        key_id: str | None, resource_id: int | None, which: str | None
    ) -> tuple[str, list[Any]]:
        clauses, args = [], []
        for col, val in (("key_id", key_id), ("resource_id", resource_id), ("which", which)):
            if val is not None:
                clauses.append(f"{col} = ?")
                args.append(val)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    # usage: added to what is there, in a fixed order (two flushes never wait on each other
    # in a circle)
    def usage_add(
        self, day: str, repo_id: int, key_id: str, resource: str, counters: dict[str, float]
    ) -> None:
        rows = [(day, repo_id, key_id, resource, m, v) for m, v in sorted(counters.items()) if v]
        self._many(
            "INSERT INTO usage(day, repo_id, key_id, resource, metric, value) "
            "VALUES (?,?,?,?,?,?) "
            "ON CONFLICT (day, repo_id, key_id, resource, metric) "
            "DO UPDATE SET value = usage.value + excluded.value",
            rows,
        )

    def usage_rows(
        self, repo_id: int | None = None, since_day: str | None = None
    ) -> list[tuple[str, int, str, str, str, float]]:
        sql = "SELECT day, repo_id, key_id, resource, metric, value FROM usage"
        clauses: list[str] = []
        args: list[Any] = []
        if repo_id is not None:
            clauses.append("repo_id = ?")
            args.append(repo_id)
        if since_day is not None:
            clauses.append("day >= ?")
            args.append(since_day)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return [
            (r["day"], r["repo_id"], r["key_id"], r["resource"], r["metric"], r["value"])
            for r in self._all(sql + " ORDER BY day", args)
        ]

    def ai_usage_add(
        self,
        day: str,
        repo_id: int,
        key_id: str,
        resource: str,
        model: str,
        counters: dict[str, float],
    ) -> None:
        rows = [
            (day, repo_id, key_id, resource, model, m, v) for m, v in sorted(counters.items()) if v
        ]
        self._many(
            "INSERT INTO ai_usage(day, repo_id, key_id, resource, model, metric, value) "
            "VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT (day, repo_id, key_id, resource, model, metric) "
            "DO UPDATE SET value = ai_usage.value + excluded.value",
            rows,
        )

    def ai_usage_rows(
        self, repo_id: int | None = None
    ) -> list[tuple[str, int, str, str, str, str, float]]:
        sql = "SELECT day, repo_id, key_id, resource, model, metric, value FROM ai_usage"
        args: list[Any] = []
        if repo_id is not None:
            sql += " WHERE repo_id = ?"
            args.append(repo_id)
        return [
            (
                r["day"],
                r["repo_id"],
                r["key_id"],
                r["resource"],
                r["model"],
                r["metric"],
                r["value"],
            )
            for r in self._all(sql + " ORDER BY day", args)
        ]

    def ledger_get(self, key_id: str, period: str) -> float:
        row = self._one(
            "SELECT tokens FROM ai_ledger WHERE key_id = ? AND period = ?", (key_id, period)
        )
        return 0.0 if row is None else float(row["tokens"])

    def ledger_add(self, key_id: str, period: str, tokens: float) -> None:
        self._x(
            "INSERT INTO ai_ledger(key_id, period, tokens) VALUES (?,?,?) "
            "ON CONFLICT (key_id, period) DO UPDATE SET tokens = ai_ledger.tokens + "
            "excluded.tokens",
            (key_id, period, tokens),
        )

    def ledger_reserve(self, key_id: str, period: str, tokens: float, limit: float) -> bool:
        if tokens > limit:
            return False
        # The conflicting row is locked and the WHERE re-read on its newest version: a check
        # and an add no other transaction can come between.
        row = self._one(
            "INSERT INTO ai_ledger(key_id, period, tokens) VALUES (?,?,?) "
            "ON CONFLICT (key_id, period) DO UPDATE SET tokens = ai_ledger.tokens + "
            "excluded.tokens WHERE ai_ledger.tokens + excluded.tokens <= ? "
            "RETURNING tokens",
            (key_id, period, tokens, limit),
        )
        return row is not None

    def rate_get(self, key_id: str, minute: int) -> int:
        row = self._one(
            "SELECT requests FROM ai_rate WHERE key_id = ? AND minute = ?", (key_id, minute)
        )
        return 0 if row is None else int(row["requests"])

    def rate_add(self, key_id: str, minute: int) -> None:
        self._x(
            "INSERT INTO ai_rate(key_id, minute, requests) VALUES (?,?,1) "
            "ON CONFLICT (key_id, minute) DO UPDATE SET requests = ai_rate.requests + 1",
            (key_id, minute),
        )
        self._rate_prune(key_id, minute)

    def rate_take(self, key_id: str, minute: int, limit: int) -> bool:
        if limit < 1:
            return False
        row = self._one(
            "INSERT INTO ai_rate(key_id, minute, requests) VALUES (?,?,1) "
            "ON CONFLICT (key_id, minute) DO UPDATE SET requests = "
            "ai_rate.requests + 1 WHERE ai_rate.requests < ? RETURNING requests",
            (key_id, minute, limit),
        )
        if row is not None:
            self._rate_prune(key_id, minute)
        return row is not None

    def _rate_prune(self, key_id: str, minute: int) -> None:
        self._x("DELETE FROM ai_rate WHERE key_id = ? AND minute < ?", (key_id, minute - 1))

    # audit
    def audit_head(self) -> tuple[int, bytes]:
        self._lock_audit()
        row = self._one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return (0, b"") if row is None else (int(row["seq"]), bytes(row["hash"]))

    def audit_insert(self, row: AuditRow) -> None:
        self._lock_audit()
        self._x(
            "INSERT INTO audit(seq, ts, repo, actor, action, target, detail, prev_hash, "
            "hash) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                row.seq,
                row.ts,
                row.repo,
                row.actor,
                row.action,
                row.target,
                _dump(row.detail),
                row.prev_hash,
                row.hash,
            ),
        )

    def audit_rows(self, repo: str | None = None, limit: int | None = None) -> list[AuditRow]:
        where, args = "", list[Any]()
        if repo is not None:
            where = " WHERE repo = ?"
            args.append(repo)
        if limit is None:
            sql = f"SELECT * FROM audit{where} ORDER BY seq"
        else:
            sql = (
                f"SELECT * FROM (SELECT * FROM audit{where} ORDER BY seq DESC LIMIT ?) t "
                "ORDER BY seq"
            )
            args.append(limit)
        return [
            AuditRow(
                r["seq"],
                r["ts"],
                r["repo"],
                r["actor"],
                r["action"],
                r["target"],
                json.loads(r["detail"]),
                bytes(r["prev_hash"]),
                bytes(r["hash"]),
            )
            for r in self._all(sql, args)
        ]

    def seal_insert(self, row: SealRow) -> None:
        self._lock_audit()
        self._x(
            "INSERT INTO audit_seals(seq, ts, row_count, head_hash, mac) VALUES (?,?,?,?,?)",
            (row.seq, row.ts, row.row_count, row.head_hash, row.mac),
        )

    def seals(self) -> list[SealRow]:
        self._lock_audit()
        return [
            SealRow(r["seq"], r["ts"], r["row_count"], bytes(r["head_hash"]), bytes(r["mac"]))
            for r in self._all("SELECT * FROM audit_seals ORDER BY seq")
        ]

    def seal_last(self) -> SealRow | None:
        self._lock_audit()
        r = self._one("SELECT * FROM audit_seals ORDER BY seq DESC LIMIT 1")
        return (
            None
            if r is None
            else SealRow(r["seq"], r["ts"], r["row_count"], bytes(r["head_hash"]), bytes(r["mac"]))
        )

    def seal_replace_mac(self, seq: int, mac: bytes) -> None:
        self._lock_audit()
        self._x("UPDATE audit_seals SET mac = ? WHERE seq = ?", (mac, seq))

    # whole tables (``repolib catalog copy``)
    def table_rows(self, table: str) -> list[tuple[Any, ...]]:
        columns, order = TABLES[table]
        rows = self._all(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")
        return [
            tuple(bytes(v) if isinstance(v, memoryview) else v for v in (r[c] for c in columns))
            for r in rows
        ]

    def table_load(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        columns, _ = TABLES[table]
        marks = ", ".join("?" * len(columns))
        self._many(
            f"INSERT INTO {table}({', '.join(columns)}) VALUES ({marks})", [tuple(r) for r in rows]
        )
        self._changed()


def _dump(value: Any) -> Any:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _load(value: str | None) -> Any:
    return None if value is None else json.loads(value)
