"""What every resource kind provides."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from ..exceptions import ConfigError
from ..info import ResourceInfo

Credentials = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Definition:
    """A resource as its kind understands it.

    ``public`` is stored in clear and bound into the credentials' associated data;
    ``credentials`` and ``read_credentials`` are stored only encrypted.
    """

    kind: str
    public: dict[str, Any]
    credentials: Credentials
    read_credentials: Credentials | None = None

    def __repr__(self) -> str:
        return (
            f"Definition(kind={self.kind!r}, public={self.public!r}, "
            f"credentials={sorted(self.credentials)}, "
            f"read_credentials={sorted(self.read_credentials or {}) or None})"
        )


@dataclasses.dataclass(frozen=True)
class ResolvedResource:
    """A resource with its decrypted credentials, for the code that talks to the backend.

    ``repr`` hides the credentials; do not log ``credentials`` itself.
    """

    info: ResourceInfo
    credentials: dict[str, Any] = dataclasses.field(repr=False)
    credential_set: str  # "full", or "read" for a READ key given the read-only set
    repository_key: str = ""  # the repository's identity: catalog and id (never reused)


class ResourceKind:
    """A family of resources (storage, llm, ...). Subclasses set ``name`` and implement."""

    name: ClassVar[str] = ""

    def define(self, spec: Mapping[str, Any]) -> Definition:
        """Validate what the caller passed and split it into public and secret parts."""
        raise NotImplementedError

    def merge(self, current: Definition, changes: Mapping[str, Any]) -> Definition:
        """Apply ``update_resource`` changes: given fields replace, ``None`` removes."""
        raise NotImplementedError

    def admin_secret_only(self, definition: Definition) -> str | None:
        """Why only the admin secret may attach this (an ADMIN key may not), or None."""
        return None

    def summary(self, public: Mapping[str, Any]) -> str:
        """One line for listings (a URL), never a credential."""
        return json.dumps(public, sort_keys=True)


def check_json(value: Any, what: str) -> Any:
    """Options are stored as JSON: refuse what would not round-trip."""
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be JSON data (str, number, bool, list, dict)") from None
