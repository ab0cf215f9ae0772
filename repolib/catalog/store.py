"""The catalog interface: what the library needs from wherever repositories and keys live.

The embedded default is SQLite (:mod:`repolib.catalog.sqlite`); the shared store for many
machines is PostgreSQL (:mod:`repolib.catalog.postgres`). Both implement the same two classes and
hold the same tables (``TABLES``), so callers never know which one they talk to and a catalog
copies from one to the other. Nothing passed
through this interface is a secret in clear: credentials arrive encrypted, data keys wrapped or
sealed, API keys as verifiers and public keys.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

# The tables every store holds, with their columns in copy order and the order of their rows.
# `repolib catalog copy` moves them column by column, ids included (wraps and audit rows name
# them), so a copied catalog opens every existing key.
TABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "meta": (("name", "value"), "name"),
    "repositories": (("id", "name", "description", "created_at", "updated_at", "deleted_at"), "id"),
    "resources": (
        (
            "id",
            "repo_id",
            "name",
            "kind",
            "public",
            "credential_fields",
            "read_credential_fields",
            "ciphertext",
            "read_ciphertext",
            "admin_wrap",
            "admin_read_wrap",
            "created_at",
            "updated_at",
            "deleted_at",
        ),
        "id",
    ),
    "keys": (
        (
            "key_id",
            "repo_id",
            "name",
            "access",
            "scope",
            "expires_at",
            "ai",
            "created_at",
            "created_by",
            "last_used_at",
            "revoked_at",
        ),
        "key_id",
    ),
    "key_secrets": (
        ("key_id", "generation", "verifier", "public_key", "valid_until"),
        "key_id, generation",
    ),
    "key_wraps": (
        ("key_id", "generation", "resource_id", "which", "sealed"),
        "key_id, generation, resource_id, which",
    ),
    "usage": (
        ("day", "repo_id", "key_id", "resource", "metric", "value"),
        "day, repo_id, key_id, resource, metric",
    ),
    "audit": (
        ("seq", "ts", "repo", "actor", "action", "target", "detail", "prev_hash", "hash"),
        "seq",
    ),
    "audit_seals": (("seq", "ts", "row_count", "head_hash", "mac"), "seq"),
    "ai_ledger": (("key_id", "period", "tokens"), "key_id, period"),
    "ai_rate": (("key_id", "minute", "requests"), "key_id, minute"),
    "ai_usage": (
        ("day", "repo_id", "key_id", "resource", "model", "metric", "value"),
        "day, repo_id, key_id, resource, model, metric",
    ),
}


@dataclasses.dataclass(frozen=True)
class RepoRow:
    id: int
    name: str
    description: str
    created_at: float
    updated_at: float


@dataclasses.dataclass(frozen=True)
class ResourceRow:
    id: int
    repo_id: int
    name: str
    kind: str
    public: dict[str, Any]
    credential_fields: tuple[str, ...]
    read_credential_fields: tuple[str, ...] | None
    ciphertext: bytes
    read_ciphertext: bytes | None
    admin_wrap: bytes
    admin_read_wrap: bytes | None
    created_at: float
    updated_at: float


@dataclasses.dataclass(frozen=True)
class KeyRow:
    key_id: str
    repo_id: int
    name: str
    access: str
    scope: tuple[str, ...] | None  # resource names; None = every resource
    expires_at: float | None
    ai: dict[str, Any] | None
    created_at: float
    created_by: str
    last_used_at: float | None
    revoked_at: float | None


@dataclasses.dataclass(frozen=True)
class SecretRow:
    """One generation of a key's secret: its verifier and public key (rotation adds one)."""

    key_id: str
    generation: int
    verifier: bytes
    public_key: bytes
    valid_until: float | None


@dataclasses.dataclass(frozen=True)
class WrapRow:
    key_id: str
    generation: int
    resource_id: int
    which: str  # "full" or "read"
    sealed: bytes


@dataclasses.dataclass(frozen=True)
class AuditRow:
    seq: int
    ts: float
    repo: str | None
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    prev_hash: bytes
    hash: bytes


@dataclasses.dataclass(frozen=True)
class SealRow:
    seq: int
    ts: float
    row_count: int
    head_hash: bytes
    mac: bytes


class Tx(abc.ABC):
    """One transaction. Reads see one snapshot; writes commit together or not at all."""

    # meta
    @abc.abstractmethod
    def meta_get(self, name: str) -> bytes | None: ...
    @abc.abstractmethod
    def meta_set(self, name: str, value: bytes) -> None: ...

    # repositories
    @abc.abstractmethod
    def repo_insert(self, name: str, description: str, now: float) -> RepoRow: ...
    @abc.abstractmethod
    def repo_get(self, name: str) -> RepoRow | None: ...
    @abc.abstractmethod
    def repo_by_id(self, repo_id: int) -> RepoRow | None: ...
    @abc.abstractmethod
    def repo_list(self) -> list[RepoRow]: ...
    @abc.abstractmethod
    def repo_update(self, repo_id: int, description: str, now: float) -> None: ...
    @abc.abstractmethod
    def repo_delete(self, repo_id: int, now: float) -> None: ...

    # resources
    @abc.abstractmethod
    def resource_insert(self, row: ResourceRow) -> int: ...
    @abc.abstractmethod
    def resource_get(self, repo_id: int, name: str) -> ResourceRow | None: ...
    @abc.abstractmethod
    def resource_list(self, repo_id: int | None = None) -> list[ResourceRow]: ...
    @abc.abstractmethod
    def resource_replace(self, row: ResourceRow) -> None: ...
    @abc.abstractmethod
    def resource_delete(self, resource_id: int, now: float) -> None: ...

    # keys
    @abc.abstractmethod
    def key_insert(self, row: KeyRow) -> None: ...
    @abc.abstractmethod
    def key_get(self, key_id: str) -> KeyRow | None: ...
    @abc.abstractmethod
    def key_list(self, repo_id: int | None = None) -> list[KeyRow]: ...
    @abc.abstractmethod
    def key_update(self, key_id: str, **fields: Any) -> None: ...
    @abc.abstractmethod
    def key_touch(self, key_id: str, now: float, every: float) -> bool: ...

    # key secrets and wraps
    @abc.abstractmethod
    def secret_insert(self, row: SecretRow) -> None: ...
    @abc.abstractmethod
    def secrets(self, key_id: str) -> list[SecretRow]: ...
    @abc.abstractmethod
    def secret_set_valid_until(self, key_id: str, generation: int, until: float) -> None: ...
    @abc.abstractmethod
    def secrets_delete(self, key_id: str, generations: Sequence[int] | None = None) -> None:
        """Delete verifiers and their wraps (all generations when None)."""

    @abc.abstractmethod
    def secrets_expired(self, now: float) -> list[SecretRow]: ...
    @abc.abstractmethod
    def wrap_put(self, row: WrapRow) -> None: ...
    @abc.abstractmethod
    def wrap_get(
        self, key_id: str, generation: int, resource_id: int, which: str
    ) -> WrapRow | None: ...
    @abc.abstractmethod
    def wraps(
        self, *, key_id: str | None = None, resource_id: int | None = None
    ) -> list[WrapRow]: ...
    @abc.abstractmethod
    def wraps_delete(
        self, *, key_id: str | None = None, resource_id: int | None = None, which: str | None = None
    ) -> None: ...

    # usage counters
    @abc.abstractmethod
    def usage_add(
        self, day: str, repo_id: int, key_id: str, resource: str, counters: dict[str, float]
    ) -> None: ...
    @abc.abstractmethod
    def usage_rows(
        self, repo_id: int | None = None, since_day: str | None = None
    ) -> list[tuple[str, int, str, str, str, float]]:
        """(day, repo_id, key_id, resource, metric, value) rows."""

    # the AI side
    @abc.abstractmethod
    def ai_usage_add(
        self,
        day: str,
        repo_id: int,
        key_id: str,
        resource: str,
        model: str,
        counters: dict[str, float],
    ) -> None: ...
    @abc.abstractmethod
    def ai_usage_rows(
        self, repo_id: int | None = None
    ) -> list[tuple[str, int, str, str, str, str, float]]:
        """(day, repo_id, key_id, resource, model, metric, value) rows."""

    @abc.abstractmethod
    def ledger_get(self, key_id: str, period: str) -> float:
        """Tokens charged (reserved or settled) to a key in a budget period."""

    @abc.abstractmethod
    def ledger_add(self, key_id: str, period: str, tokens: float) -> None: ...
    @abc.abstractmethod
    def ledger_reserve(self, key_id: str, period: str, tokens: float, limit: float) -> bool:
        """Add ``tokens`` to the period's ledger if the total stays within ``limit``, checked
        and added in one step (no other process can slip between); False: nothing added."""

    @abc.abstractmethod
    def rate_get(self, key_id: str, minute: int) -> int: ...
    @abc.abstractmethod
    def rate_add(self, key_id: str, minute: int) -> None: ...
    @abc.abstractmethod
    def rate_take(self, key_id: str, minute: int, limit: int) -> bool:
        """Count one request in ``minute`` if fewer than ``limit`` were counted, in one step;
        False: the limit is reached and nothing was counted."""

    # audit
    @abc.abstractmethod
    def audit_head(self) -> tuple[int, bytes]: ...
    @abc.abstractmethod
    def audit_insert(self, row: AuditRow) -> None: ...
    @abc.abstractmethod
    def audit_rows(self, repo: str | None = None, limit: int | None = None) -> list[AuditRow]: ...
    @abc.abstractmethod
    def seal_insert(self, row: SealRow) -> None: ...
    @abc.abstractmethod
    def seals(self) -> list[SealRow]: ...
    @abc.abstractmethod
    def seal_last(self) -> SealRow | None:
        """The newest checkpoint (sealing reads only this one, not the whole history)."""

    @abc.abstractmethod
    def seal_replace_mac(self, seq: int, mac: bytes) -> None: ...

    # whole tables (catalog copy)
    @abc.abstractmethod
    def table_rows(self, table: str) -> list[tuple[Any, ...]]:
        """Every row of one of ``TABLES``, its columns in ``TABLES`` order."""

    @abc.abstractmethod
    def table_load(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        """Insert rows as ``table_rows`` returns them (ids kept) into an empty table."""


class Store(abc.ABC):
    """A catalog location. ``read()`` and ``write()`` give transactions."""

    location: str  # where it is, fit to show: a path, or a URL without its password
    read_only: bool
    kind: str = "sqlite"

    def changes(self) -> int:
        """A number that moves when another process may have changed keys or resources.

        Free to call (no I/O). Callers re-check a key at once when it moves, and every few
        seconds anyway; a store that cannot tell returns a constant.
        """
        return 0

    @abc.abstractmethod
    def exists(self) -> bool: ...

    @abc.abstractmethod
    def create(self) -> None:
        """Create the empty catalog (schema at the newest version)."""

    @abc.abstractmethod
    def read(self) -> contextlib.AbstractContextManager[Tx]: ...

    @abc.abstractmethod
    def write(self) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction; raises CatalogReadOnly on a catalog opened read-only."""

    @abc.abstractmethod
    def close(self) -> None: ...
