"""Copy a whole catalog to another store: how a team moves from a laptop to a shared catalog.

Every table goes across as it is (ids, ciphertexts, wraps, verifiers, usage, the audit chain
and its seals), read in one snapshot and written in one transaction into an empty catalog, so
every existing key opens the copy and ``audit --verify`` passes there. Nothing is decrypted: the
copy needs no admin secret, only read access to the source and write access to the target. The
copy's audit log ends with one ``catalog.copied`` row.
"""

from __future__ import annotations

import dataclasses
import os

from . import audit, usage
from .catalog import TABLES, Store, Tx, open_store
from .catalog.url import shown
from .exceptions import CatalogError, ConfigError


@dataclasses.dataclass(frozen=True)
class CopyReport:
    source: str
    target: str
    rows: dict[str, int]

    def summary(self) -> str:
        counts = ", ".join(
            f"{n} {t}"
            for t, n in self.rows.items()
            if n and t in ("repositories", "resources", "keys", "audit")
        )
        return f"copied {self.source} to {self.target}: {counts or 'an empty catalog'}"


def copy_catalog(
    source_url: str,
    target_url: str,
    home: str | os.PathLike[str] | None = None,
    now: float | None = None,
) -> CopyReport:
    """Copy the catalog at ``source_url`` into the empty catalog at ``target_url`` (created if
    missing). Both are catalog URLs (``sqlite:///path/catalog.db``, ``postgresql://...``)."""
    from .context import resolve_home

    if not isinstance(source_url, str) or not isinstance(target_url, str):
        raise ConfigError("give two catalog URLs: repolib catalog copy SRC_URL DST_URL")
    base = resolve_home(home)
    source = open_store(source_url, base, read_only=True)
    target = open_store(target_url, base)
    if source.location == target.location:
        raise ConfigError("the source and the target are the same catalog")
    if not source.exists():
        raise CatalogError(f"no catalog at {shown(source_url)} to copy")
    usage.flush_all()  # this process's counters belong in the copy too
    if not target.exists():
        target.create()
    with source.read() as tx:
        tables = {name: tx.table_rows(name) for name in TABLES}
    with target.write() as tx:
        _require_empty(tx, target)
        for name, rows in tables.items():
            tx.table_load(name, rows)
        counts = {name: len(rows) for name, rows in tables.items()}
        audit.append(
            tx,
            actor="catalog",
            action="catalog.copied",
            target=target.location,
            detail={"from": source.location, "rows": counts},
            now=now,
        )
    return CopyReport(source.location, target.location, counts)


def _require_empty(tx: Tx, target: Store) -> None:
    full = [name for name in TABLES if tx.table_rows(name)]
    if full:
        raise CatalogError(
            f"the catalog at {target.location} is not empty (it has rows in "
            f"{', '.join(full)}); copy into a new database or file"
        )
