"""The PostgreSQL catalog's transactions: repolib.catalog.sqltx on a psycopg connection.

What is PostgreSQL's own: ``?`` parameters become ``%s``; the audit chain and its seals are read
and appended under a transaction-level advisory lock, so rows go in one at a time and in order;
a transaction that changes keys or resources sets ``notify`` and the store tells every other
process at commit; a copied table's id sequence is moved past the copied ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from . import pgschema
from .sqltx import SqlTx

# Advisory lock ids: (class, object); the object is a hash of the schema, so catalogs in two
# schemas of one database do not wait for each other.
AUDIT_LOCK = 0x7265706F  # "repo"


class PostgresTx(SqlTx):
    """One transaction on one connection (statements use ``%s`` parameters)."""

    def __init__(self, conn: psycopg.Connection[Any], write: bool) -> None:
        self.c = conn
        self.write = write
        self.notify = False  # keys or resources changed: tell the other processes at commit
        self._audit_locked = False

    def _x(self, sql: str, args: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.c.execute(sql.replace("?", "%s"), args)

    def _one(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        row: dict[str, Any] | None = self._x(sql, args).fetchone()
        return row

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return list(self._x(sql, args).fetchall())

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self.c.cursor() as cur:
                cur.executemany(sql.replace("?", "%s"), rows)

    def _changed(self) -> None:
        self.notify = True

    def _lock_audit(self) -> None:
        """One audit writer at a time (held until commit or rollback)."""
        if self.write and not self._audit_locked:
            self._x("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (AUDIT_LOCK,))
            self._audit_locked = True

    def table_load(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        super().table_load(table, rows)
        if table in pgschema.SERIAL_TABLES:  # the next id comes after the copied ones
            self._x(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table}"
            )
