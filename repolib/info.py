"""What listings return: plain frozen records, none of which holds a secret, in lists that
render as tables in notebooks."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import time
from typing import Any

from .keys import Access, AIPolicy, mask


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class RepositoryInfo:
    name: str
    description: str
    created_at: float
    resources: int
    keys: int

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "created_at": iso(self.created_at)}


@dataclasses.dataclass(frozen=True)
class ResourceInfo:
    """A resource without its credentials: ``credentials`` names which fields are set."""

    repository: str
    name: str
    kind: str
    summary: str
    definition: dict[str, Any]
    credentials: tuple[str, ...]
    read_credentials: tuple[str, ...] | None
    created_at: float
    updated_at: float

    @property
    def url(self) -> str | None:
        return self.definition.get("url") or self.definition.get("base_url")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["credentials"] = list(self.credentials)
        d["read_credentials"] = (
            None if self.read_credentials is None else list(self.read_credentials)
        )
        d["created_at"], d["updated_at"] = iso(self.created_at), iso(self.updated_at)
        return d


KEY_COLUMNS = (
    "repository",
    "key",
    "name",
    "access",
    "resources",
    "expires",
    "ai",
    "last used",
    "status",
)


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    key_id: str
    repository: str
    name: str
    access: Access
    resources: tuple[str, ...] | None  # None: every resource of the repository
    expires_at: float | None
    ai: AIPolicy | None
    created_at: float
    created_by: str
    last_used_at: float | None
    revoked_at: float | None

    @property
    def masked(self) -> str:
        return mask(self.key_id)

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def row(self, key: str) -> list[Any]:
        """This key's cells in a key table (``KEY_COLUMNS``; None where there is nothing):
        the CLI's and Jupyter's are one table. ``key``: what the key column shows."""
        return [
            self.repository,
            key,
            self.name,
            self.access.value,
            "all" if self.resources is None else ",".join(self.resources) or "none",
            iso(self.expires_at),
            "off" if self.ai is None else self.ai.describe(),
            iso(self.last_used_at),
            self.status(),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "repository": self.repository,
            "name": self.name,
            "access": self.access.value,
            "masked": self.masked,
            "resources": None if self.resources is None else list(self.resources),
            "expires_at": iso(self.expires_at),
            "ai": None if self.ai is None else self.ai.to_dict(),
            "created_at": iso(self.created_at),
            "created_by": self.created_by,
            "last_used_at": iso(self.last_used_at),
            "revoked_at": iso(self.revoked_at),
            "status": self.status(),
        }


def _html_table(headers: list[str], rows: list[list[Any]], empty: str) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc('-' if c is None else str(c))}</td>" for c in r) + "</tr>"
        for r in rows
    )
    if not rows:
        body = f'<tr><td colspan="{len(headers)}"><i>{esc(empty)}</i></td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class ResourceList(list[ResourceInfo]):
    """What ``resources()`` returns: a plain list that Jupyter shows as a table."""

    def _repr_html_(self) -> str:
        return _html_table(
            ["repository", "name", "kind", "target", "credentials set", "updated"],
            [
                [
                    r.repository,
                    r.name,
                    r.kind,
                    r.summary,
                    ", ".join(r.credentials) or "none",
                    iso(r.updated_at),
                ]
                for r in self
            ],
            "no resources",
        )


class KeyList(list[KeyInfo]):
    """What ``keys()`` returns: a plain list that Jupyter shows as a table (masked keys)."""

    def _repr_html_(self) -> str:
        return _html_table(
            list(KEY_COLUMNS),
            [k.row(k.masked) for k in self],
            "no keys",
        )


class IssuedKey:
    """A key as created or rotated: the only object that ever holds the token.

    ``repr`` and ``str`` show the masked form; read ``.token`` to get the secret, once.
    """

    __slots__ = ("_token", "info")

    def __init__(self, token: str, info: KeyInfo) -> None:
        self._token = token
        self.info = info

    @property
    def token(self) -> str:
        return self._token

    @property
    def key_id(self) -> str:
        return self.info.key_id

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def access(self) -> Access:
        return self.info.access

    def __repr__(self) -> str:
        return (
            f"IssuedKey(key_id={self.key_id!r}, name={self.name!r}, "
            f"access={self.access.value!r}, token={self.info.masked!r})"
        )

    __str__ = __repr__


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    seq: int
    ts: float
    repository: str | None
    actor: str
    action: str
    target: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ts": iso(self.ts)}
