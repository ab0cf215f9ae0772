"""The store of repositories, resources, keys, usage and audit events."""

from .sqlite import SQLiteStore
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
from .url import ENV_CATALOG_URL, catalog_url, open_store

__all__ = [
    "ENV_CATALOG_URL",
    "TABLES",
    "AuditRow",
    "KeyRow",
    "RepoRow",
    "ResourceRow",
    "SQLiteStore",
    "SealRow",
    "SecretRow",
    "Store",
    "Tx",
    "WrapRow",
    "catalog_url",
    "open_store",
]
